package caddymodule

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/dtablecluster/dtable-router/internal/contract"
)

// logWriter is a client's ResponseWriter that records what reaches it.
type logWriter struct {
	header  http.Header
	codes   []int
	sent    []http.Header // the headers at each WriteHeader
	body    bytes.Buffer
	flushes int
}

func (w *logWriter) Header() http.Header { return w.header }
func (w *logWriter) WriteHeader(code int) {
	w.codes = append(w.codes, code)
	w.sent = append(w.sent, w.header.Clone())
}
func (w *logWriter) Write(p []byte) (int, error) { return w.body.Write(p) }
func (w *logWriter) FlushError() error           { w.flushes++; return nil }

func TestRetryWriter(t *testing.T) {
	client := &logWriter{header: http.Header{"Server": {"Caddy"}}}
	rw := &retryWriter{w: client}

	// An attempt answered 421, written as reverse_proxy writes an answer.
	rw.reset()
	rw.Header().Set("Content-Type", "application/json")
	rw.Header()["Via"] = append(rw.Header()["Via"], "1.1 Caddy")
	delete(rw.Header(), "Server")
	rw.WriteHeader(contract.StatusNotMine)
	rw.Write([]byte(`{"reason": "not_held"}`))
	if err := rw.FlushError(); err != nil {
		t.Fatal(err)
	}
	rw.Header().Add(http.TrailerPrefix+"X-Checksum", "1") // a trailer, after the body
	if !rw.notMine || len(client.codes) != 0 || client.body.Len() != 0 || client.flushes != 0 {
		t.Fatalf("the 421 reached the client: codes %v, body %q, %d flushes", client.codes, client.body.String(), client.flushes)
	}
	if want := (http.Header{"Server": {"Caddy"}}); !equalHeaders(client.header, want) {
		t.Fatalf("client headers after a dropped 421: %v; want %v", client.header, want)
	}

	// The next attempt: an informational answer, then the answer.
	rw.reset()
	rw.Header().Set("Link", "</style.css>; rel=preload")
	rw.WriteHeader(http.StatusEarlyHints)
	rw.Header().Del("Link")
	rw.Header().Set("Content-Type", "text/plain")
	rw.Write([]byte("served"))
	rw.WriteHeader(http.StatusTeapot) // superfluous: passed on for the client's writer to judge
	if rw.notMine || !slices.Equal(client.codes, []int{103, 200, 418}) || client.body.String() != "served" {
		t.Fatalf("second attempt: codes %v, body %q, notMine %v", client.codes, client.body.String(), rw.notMine)
	}
	if want := (http.Header{"Server": {"Caddy"}, "Link": {"</style.css>; rel=preload"}}); !equalHeaders(client.sent[0], want) {
		t.Errorf("103 sent with %v; want %v", client.sent[0], want)
	}
	if want := (http.Header{"Server": {"Caddy"}, "Content-Type": {"text/plain"}}); !equalHeaders(client.sent[1], want) {
		t.Errorf("200 sent with %v; want %v", client.sent[1], want)
	}
	if err := rw.FlushError(); err != nil || client.flushes != 1 {
		t.Errorf("flush after the answer: %v, %d flushes", err, client.flushes)
	}
}

// More than four headers before an attempt are cloned rather than kept in
// the snapshot's array; a dropped 421 puts them back all the same.
func TestRetryWriterManyHeaders(t *testing.T) {
	before := http.Header{"A": {"1"}, "B": {"2"}, "C": {"3"}, "D": {"4"}, "E": {"5", "6"}}
	client := &logWriter{header: before.Clone()}
	rw := &retryWriter{w: client}
	rw.reset()
	rw.Header().Set("A", "changed")
	rw.Header().Add("E", "7")
	rw.Header().Set("F", "new")
	rw.WriteHeader(contract.StatusNotMine)
	if !equalHeaders(client.header, before) {
		t.Fatalf("after a dropped 421: %v; want %v", client.header, before)
	}
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, "\x00") != strings.Join(b[k], "\x00") {
			return false
		}
	}
	return true
}

func TestReplayBody(t *testing.T) {
	body := strings.Repeat("0123456789", 100)
	tests := []struct {
		name      string
		length    int64 // Content-Length; -1: unknown
		readFirst int   // bytes the first attempt reads
		replay    bool
	}{
		{"nothing read", int64(len(body)), 0, true},
		{"part read", int64(len(body)), 123, true},
		{"all read", int64(len(body)), len(body), true},
		{"all read, length unknown", -1, len(body), true},
		{"larger than kept, nothing read", replayLimit + 1, 0, true},
		{"larger than kept, part read", replayLimit + 1, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rb replayBody
			first := rb.start(io.NopCloser(iotest.HalfReader(strings.NewReader(body))), tt.length)
			got := make([]byte, tt.readFirst)
			if _, err := io.ReadFull(first, got); err != nil {
				t.Fatal(err)
			}
			second, ok := rb.again()
			if ok != tt.replay {
				t.Fatalf("again: %v; want %v", ok, tt.replay)
			}
			if _, err := first.Read(make([]byte, 10)); !errors.Is(err, errBodyReplaced) {
				t.Errorf("the replaced reader read on: %v", err)
			}
			if !ok {
				return
			}
			all, err := io.ReadAll(second)
			if err != nil || string(all) != body {
				t.Fatalf("second attempt read %d bytes (%v); want the whole body", len(all), err)
			}
			third, ok := rb.again()
			if keeps := tt.length <= replayLimit; ok != keeps {
				t.Fatalf("third attempt: %v; want %v", ok, keeps)
			}
			if !ok {
				return
			}
			if all, err := io.ReadAll(third); err != nil || string(all) != body {
				t.Fatalf("third attempt: %d bytes, %v", len(all), err)
			}
		})
	}
}

// Once an answer passed, the body is no longer kept, but a reader still
// gives what was kept before going on with the client's body.
func TestReplayBodyStopKeeping(t *testing.T) {
	body := strings.Repeat("x", 1000) + strings.Repeat("y", 1000)
	var rb replayBody
	first := rb.start(io.NopCloser(strings.NewReader(body)), -1)
	if _, err := io.ReadFull(first, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	second, _ := rb.again()
	rb.stopKeeping()
	all, err := io.ReadAll(iotest.HalfReader(second))
	if err != nil || string(all) != body {
		t.Fatalf("read %d bytes (%v); want the whole body", len(all), err)
	}
	if rb.buf != nil || rb.keep {
		t.Errorf("still keeping %d bytes after the answer passed", len(rb.buf))
	}
	if _, ok := rb.again(); ok {
		t.Error("a body no longer kept can be sent again")
	}
}

// The transport may still be reading the replaced attempt's reader when
// the next attempt starts: the bytes it gets in that read are kept, and
// the next attempt gets them in order.
func TestReplayBodyReadInFlight(t *testing.T) {
	pr, pw := io.Pipe()
	var rb replayBody
	first := rb.start(pr, 10)
	got := make(chan string, 1)
	go func() { // the previous attempt's transport, blocked on the client
		buf := make([]byte, 10)
		n, _ := first.Read(buf)
		got <- string(buf[:n])
	}()
	time.Sleep(10 * time.Millisecond) // let it block in Read (the test holds either way)
	again := make(chan io.ReadCloser, 1)
	go func() {
		r, ok := rb.again()
		if !ok {
			r = nil
		}
		again <- r
	}()
	go func() {
		pw.Write([]byte("01234"))
		pw.Write([]byte("56789"))
		pw.Close()
	}()
	second := <-again
	if second == nil {
		t.Fatal("no replay")
	}
	all, err := io.ReadAll(second)
	if err != nil || string(all) != "0123456789" {
		t.Fatalf("second attempt read %q (%v); want 0123456789", all, err)
	}
	if first := <-got; !strings.HasPrefix("0123456789", first) {
		t.Fatalf("the first attempt read %q", first)
	}
}
