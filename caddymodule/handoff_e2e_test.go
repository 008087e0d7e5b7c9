package caddymodule

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/contract"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// handoffEnv is a proxy in front of three strict fake servers (n1..n3),
// with the test playing the monitor (it writes the assignment: moves
// start, commit, abort) and the registrars (it notifies the servers of
// their desired state, which releases buckets and gives new ones).
type handoffEnv struct {
	*env
	a    *schema.Assignment          // the assignment written last
	held map[string]map[string]int64 // per node: what its last notification said to hold
}

// setupHandoff starts the cluster with assignment version 2: bucket b ->
// n(b%3+1), every epoch 2, and every server notified of it.
func setupHandoff(t *testing.T, extra extraConfig) *handoffEnv {
	extra.strict = true
	h := &handoffEnv{env: setupWith(t, extra), held: map[string]map[string]int64{}}
	a := &schema.Assignment{Version: 2}
	for b := range a.Owners {
		a.Owners[b] = fmt.Sprintf("n%d", b%3+1)
	}
	a.NextEpochs(nil)
	h.write(a)
	for _, n := range []string{"n1", "n2", "n3"} {
		h.notify(n)
	}
	return h
}

func owner(b bucket.Bucket) string { return fmt.Sprintf("n%d", int(b)%3+1) }

// write puts an assignment and waits until the proxy routes by it.
func (h *handoffEnv) write(a *schema.Assignment) {
	h.t.Helper()
	h.a = a
	h.put(layout.AssignmentKey(), a.Encode())
	h.waitVersion(a.Version)
}

// next is a copy of the current assignment with the next version.
func (h *handoffEnv) next() *schema.Assignment {
	a := h.a.Clone()
	a.Version++
	return a
}

// startMove writes MOVING(owner -> to) for bucket b.
func (h *handoffEnv) startMove(b bucket.Bucket, to string) {
	h.t.Helper()
	a := h.next()
	if a.Moving == nil {
		a.Moving = map[bucket.Bucket]schema.MoveState{}
	}
	a.Moving[b] = schema.MoveState{From: a.Owners[b], To: to, Epoch: a.Version, Since: time.Now(), Reason: "test"}
	h.write(a)
}

// commit writes STABLE(to) for a moving bucket, with a new epoch.
func (h *handoffEnv) commit(b bucket.Bucket) {
	h.t.Helper()
	a := h.next()
	a.Owners[b], a.Epochs[b] = a.Moving[b].To, a.Version
	h.endMove(a, b)
	h.write(a)
}

// abort writes STABLE(from) for a moving bucket.
func (h *handoffEnv) abort(b bucket.Bucket) {
	h.t.Helper()
	a := h.next()
	h.endMove(a, b)
	h.write(a)
}

func (h *handoffEnv) endMove(a *schema.Assignment, b bucket.Bucket) {
	delete(a.Moving, b)
	if len(a.Moving) == 0 {
		a.Moving = nil
	}
}

// reassign writes a direct owner change (no moving phase), with a new epoch.
func (h *handoffEnv) reassign(b bucket.Bucket, to string) {
	h.t.Helper()
	a := h.next()
	a.Owners[b], a.Epochs[b] = to, a.Version
	h.write(a)
}

// notify tells node n its desired state under the current assignment, as
// its registrar would (protocol 2), and returns once the server answered
// (after any release it orders).
func (h *handoffEnv) notify(n string) {
	h.t.Helper()
	msg := contract.Notification{NodeID: n, ServeForMS: int64(10 * time.Minute / time.Millisecond)}
	msg.DesiredState(h.a, h.held[n])
	body, _ := json.Marshal(msg)
	resp, err := http.Post(h.backends[n].srv.URL+fakeserver.NotifyPath, "application/json", bytes.NewReader(body))
	if err != nil {
		h.t.Fatalf("notify %s: %v", n, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		h.t.Fatalf("notify %s: %s", n, resp.Status)
	}
	h.held[n] = msg.Held()
}

// noOverlaps checks the servers' logs: no bucket held or served by two
// servers at once.
func (h *handoffEnv) noOverlaps() {
	h.t.Helper()
	var logs [][]fakeserver.Interval
	for _, b := range h.backends {
		logs = append(logs, b.fake.Log())
	}
	if o := fakeserver.Overlaps(logs...); len(o) > 0 {
		h.t.Errorf("servers overlapped:\n%s", strings.Join(o, "\n"))
	}
}

// result is an answer that arrived, and when.
type result struct {
	answer
	at  time.Time
	err error
}

// goDo sends a request in the background; the answer arrives on the channel.
func goDo(method, url string, body []byte) <-chan result {
	ch := make(chan result, 1)
	go func() {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, _ := http.NewRequest(method, url, rd)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- result{at: time.Now(), err: err}
			return
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		r := result{answer: answer{status: resp.StatusCode, header: resp.Header, raw: string(raw)}, at: time.Now()}
		json.Unmarshal(raw, &r.body)
		ch <- r
	}()
	return ch
}

// await is the answer on ch, within d.
func await(t *testing.T, ch <-chan result, d time.Duration, what string) result {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r
	case <-time.After(d):
		t.Fatalf("%s: no answer within %v", what, d)
	}
	return result{}
}

// notWithin fails if an answer arrives on ch within d (a bounded check
// that the request is held).
func notWithin(t *testing.T, ch <-chan result, d time.Duration, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: answered while it should be held: %d %s %v", what, r.status, r.raw, r.err)
	case <-time.After(d):
	}
}

// metric reads one sample from Caddy's /metrics (0 if it is not there).
func metric(t *testing.T, sample string) float64 {
	t.Helper()
	m := do(t, "GET", fmt.Sprintf("http://localhost:%d/metrics", adminPort), nil)
	for _, l := range strings.Split(m.raw, "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %q", sample, l)
			}
			return f
		}
	}
	return 0
}

// waitHeld waits until n requests are held.
func waitHeld(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%d requests held", n), func() bool {
		return metric(t, "caddy_dtable_held_requests") == float64(n)
	})
}

func bucketURL(b bucket.Bucket) string { return proxyURL("/api/v1/dtables/" + uuidIn(b) + "/rows/") }

// A request for a moving bucket waits for the commit and is then served by
// the new owner at its new epoch; the servers never overlap. The new
// owner's registrar may tell it before or after the proxy sees the commit:
// after, the proxy's first try is answered 421 and sent again.
func TestHeldRequestIsServedByTheNewOwnerAfterCommit(t *testing.T) {
	h := setupHandoff(t, extraConfig{})
	tests := []struct {
		name          string
		b             bucket.Bucket // owner n(b%3+1) -> to
		to            string
		newOwnerFirst bool
	}{
		{"new owner told first", 0x31, "n3", true},
		{"proxy sees the commit first", 0x32, "n1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := owner(tt.b)
			if a := do(t, "GET", bucketURL(tt.b), nil); a.status != 200 || a.body["node"] != from || a.body["epoch"] != "2" {
				t.Fatalf("before the move: %d %s", a.status, a.raw)
			}
			refused := metric(t, fmt.Sprintf(`caddy_dtable_not_owner_answers_total{node=%q}`, tt.to))
			h.startMove(tt.b, tt.to)
			pending := goDo("GET", bucketURL(tt.b), nil)
			waitHeld(t, 1)
			notWithin(t, pending, 300*time.Millisecond, "request for the moving bucket")
			// Another bucket of the same owner is not held.
			if a := do(t, "GET", bucketURL(tt.b+3), nil); a.status != 200 || a.body["node"] != from {
				t.Fatalf("bucket %s while %s moves: %d %s", tt.b+3, tt.b, a.status, a.raw)
			}
			h.notify(from) // releases the bucket
			a := h.next()
			a.Owners[tt.b], a.Epochs[tt.b] = tt.to, a.Version
			h.endMove(a, tt.b)
			if tt.newOwnerFirst {
				h.a = a
				h.notify(tt.to)
			}
			committed := time.Now()
			h.write(a)
			if !tt.newOwnerFirst {
				h.notify(tt.to)
			}
			r := await(t, pending, 5*time.Second, "held request after the commit")
			t.Logf("held request answered %v after the commit was written", r.at.Sub(committed))
			epoch := strconv.FormatInt(a.Version, 10)
			if r.status != 200 || r.body["node"] != tt.to || r.body["epoch"] != epoch || r.body["version"] != epoch {
				t.Fatalf("held request: %d %s; want %s at epoch and version %s", r.status, r.raw, tt.to, epoch)
			}
			retried := metric(t, fmt.Sprintf(`caddy_dtable_not_owner_answers_total{node=%q}`, tt.to)) - refused
			if tt.newOwnerFirst && retried != 0 {
				t.Errorf("%s answered 421 %v times; it knew the bucket before the commit", tt.to, retried)
			}
			t.Logf("%s answered 421 %v times", tt.to, retried)
			waitHeld(t, 0)
		})
	}
	h.noOverlaps()
}

// A held request whose move neither commits nor aborts within
// handoff_wait is answered 503 with Retry-After; one whose move aborts
// goes to the old owner.
func TestHeldRequestTimesOutOrGoesToTheOldOwner(t *testing.T) {
	h := setupHandoff(t, extraConfig{proxyBlock: "handoff_wait 1s"})
	t.Run("timeout", func(t *testing.T) {
		const b = bucket.Bucket(0x40) // n2
		h.startMove(b, "n1")
		start := time.Now()
		r := await(t, goDo("GET", bucketURL(b), nil), 5*time.Second, "held request")
		took := time.Since(start)
		if r.status != 503 || r.header.Get("Retry-After") != "5" || r.body["reason"] != "handoff_in_progress" || r.body["bucket"] != "40" ||
			!strings.Contains(r.body["error"], "moving from n2 to n1") {
			t.Fatalf("%d %v %s; want 503, Retry-After 5, reason handoff_in_progress", r.status, r.header, r.raw)
		}
		if took < time.Second || took > 3*time.Second {
			t.Errorf("answered after %v; want handoff_wait (1s)", took)
		}
		h.abort(b)
	})
	t.Run("abort", func(t *testing.T) {
		const b = bucket.Bucket(0x41) // n3
		h.startMove(b, "n1")
		pending := goDo("POST", bucketURL(b), []byte(`{"row": 1}`))
		waitHeld(t, 1)
		h.abort(b) // n3 was never told to release: it still holds 41 at epoch 2
		r := await(t, pending, 3*time.Second, "held request after the abort")
		if r.status != 200 || r.body["node"] != "n3" || r.body["epoch"] != "2" || r.body["method"] != "POST" {
			t.Fatalf("%d %s; want n3 at epoch 2", r.status, r.raw)
		}
	})
	t.Run("client goes away", func(t *testing.T) {
		const b = bucket.Bucket(0x42) // n1
		cancelled := metric(t, `caddy_dtable_routing_errors_total{reason="hold_cancelled"}`)
		h.startMove(b, "n2")
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", bucketURL(b), nil)
		gone := make(chan error, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			gone <- err
		}()
		waitHeld(t, 1)
		cancel()
		if err := <-gone; !errors.Is(err, context.Canceled) {
			t.Fatalf("request: %v; want it cancelled", err)
		}
		waitHeld(t, 0)
		testutil.Eventually(t, 2*time.Second, "routing_errors_total{reason=hold_cancelled} grows", func() bool {
			return metric(t, `caddy_dtable_routing_errors_total{reason="hold_cancelled"}`) == cancelled+1
		})
		h.abort(b)
	})
	h.noOverlaps()
}

// The hold bounds: the next request beyond them is answered 503 at once.
func TestHoldOverflowAnswersAtOnce(t *testing.T) {
	h := setupHandoff(t, extraConfig{proxyBlock: "handoff_max_held_per_bucket 3\n\t\thandoff_max_held 5"})
	h.startMove(0x50, "n1") // n3's
	h.startMove(0x51, "n3") // n1's
	h.startMove(0x52, "n3") // n2's
	var pending []<-chan result
	for range 3 {
		pending = append(pending, goDo("GET", bucketURL(0x50), nil))
	}
	waitHeld(t, 3)
	tests := []struct {
		name   string
		b      bucket.Bucket
		before int // more requests of b held first
		msg    string
	}{
		{"per bucket", 0x50, 0, "(handoff_max_held_per_bucket)"},
		{"in total", 0x52, 2, "(handoff_max_held)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range tt.before {
				pending = append(pending, goDo("GET", bucketURL(0x51), nil))
			}
			waitHeld(t, 3+tt.before)
			start := time.Now()
			r := await(t, goDo("GET", bucketURL(tt.b), nil), 2*time.Second, "request beyond the bound")
			if r.status != 503 || r.body["reason"] != "hold_overflow" || r.header.Get("Retry-After") == "" || !strings.Contains(r.body["error"], tt.msg) {
				t.Fatalf("%d %v %s; want 503 hold_overflow %s", r.status, r.header, r.raw, tt.msg)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("overflow answered after %v; want at once", took)
			}
		})
	}
	for _, b := range []bucket.Bucket{0x50, 0x51, 0x52} {
		h.abort(b)
	}
	for i, p := range pending {
		if r := await(t, p, 3*time.Second, "held request after the abort"); r.status != 200 {
			t.Errorf("held request %d: %d %s", i, r.status, r.raw)
		}
	}
}

// A bucket's WebSockets close when its move starts (others stay open),
// and a reconnect during the move is held, then reaches the new owner.
func TestWebSocketsCloseWhenTheMoveStartsAndReconnectsAreHeld(t *testing.T) {
	h := setupHandoff(t, extraConfig{})
	const b = bucket.Bucket(0x60)                                                // n1
	moving, staying, sameOwner := dialWS(t, b), dialWS(t, 0x61), dialWS(t, 0x63) // n1, n2, n1
	for c, want := range map[*websocket.Conn]string{moving: "n1:a", staying: "n2:a", sameOwner: "n1:a"} {
		if got, err := echo(c, "a"); err != nil || got != want {
			t.Fatalf("echo: %q %v; want %q", got, err, want)
		}
	}
	h.startMove(b, "n2") // n1 is not told to release: the proxy alone closes the stream
	moving.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, _, err := moving.ReadMessage(); err == nil {
		t.Fatal("the moving bucket's stream is still open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the moving bucket's stream was not closed within 3s of the move start")
	}
	for c, want := range map[*websocket.Conn]string{staying: "n2:b", sameOwner: "n1:b"} {
		if got, err := echo(c, "b"); err != nil || got != want {
			t.Fatalf("another bucket's stream was disturbed: %q %v; want %q", got, err, want)
		}
	}
	type dialed struct {
		c   *websocket.Conn
		err error
	}
	reconnect := make(chan dialed, 1)
	go func() {
		url := fmt.Sprintf("ws://127.0.0.1:%d/socket.io/?EIO=4&transport=websocket&dtable_uuid=%s", proxyPort, uuidIn(b))
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		reconnect <- dialed{c, err}
	}()
	waitHeld(t, 1)
	select {
	case d := <-reconnect:
		t.Fatalf("the reconnect was not held: %v", d.err)
	case <-time.After(300 * time.Millisecond):
	}
	h.notify("n1")
	h.commit(b)
	h.notify("n2")
	var d dialed
	select {
	case d = <-reconnect:
	case <-time.After(5 * time.Second):
		t.Fatal("the held reconnect did not complete within 5s of the commit")
	}
	if d.err != nil {
		t.Fatalf("held reconnect: %v", d.err)
	}
	defer d.c.Close()
	if got, err := echo(d.c, "back"); err != nil || got != "n2:back" {
		t.Fatalf("after the commit: %q %v; want n2:back", got, err)
	}
	h.noOverlaps()
}

// bodyRecorder wraps the fake servers: it reads each request's whole body
// first (so a 421 comes after the proxy sent all of it), and reports the
// body's length and SHA-256 in response headers; it counts the 421s.
type bodyRecorder struct {
	mu      sync.Mutex
	notMine map[string]int // per node
}

func (rec *bodyRecorder) wrap(node string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(body)
		w.Header().Set("X-Body-Sha256", hex.EncodeToString(sum[:]))
		w.Header().Set("X-Body-Length", strconv.Itoa(len(body)))
		r.Body = io.NopCloser(bytes.NewReader(body))
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == contract.StatusNotMine {
			rec.mu.Lock()
			rec.notMine[node]++
			rec.mu.Unlock()
		}
	})
}

func (rec *bodyRecorder) count(node string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.notMine[node]
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// An upstream 421 is retried by the newest assignment: the table already
// names the new owner, which has not been told yet and answers 421, then
// is told. The client sees only the answer of the new owner; a body is
// sent again intact.
func TestNotMineIsRetriedByTheNewestAssignment(t *testing.T) {
	rec := &bodyRecorder{notMine: map[string]int{}}
	h := setupHandoff(t, extraConfig{proxyBlock: "handoff_wait 2s", wrap: rec.wrap})
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	tests := []struct {
		name   string
		b      bucket.Bucket // owner n(b%3+1) -> to
		to     string
		method string
		body   []byte
		notify bool   // the new owner is told, after its first 421
		status int    // of the answer
		reason string // of a 503
	}{
		{"GET", 0x70, "n3", "GET", nil, true, 200, ""},
		{"POST with a body", 0x71, "n1", "POST", random(300 << 10), true, 200, ""},
		{"the new owner is never told", 0x72, "n2", "GET", nil, false, 503, "not_owner"},
		{"a body larger than the proxy keeps", 0x73, "n3", "PUT", random(replayLimit + 1), true, 503, "not_owner"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			retriedBefore := metric(t, fmt.Sprintf(`caddy_dtable_not_owner_answers_total{node=%q}`, tt.to))
			refused := rec.count(tt.to)
			h.reassign(tt.b, tt.to) // the server tt.to is not told yet
			start := time.Now()
			pending := goDo(tt.method, bucketURL(tt.b), tt.body)
			testutil.Eventually(t, 3*time.Second, tt.to+" answered 421", func() bool { return rec.count(tt.to) > refused })
			if tt.notify {
				h.notify(tt.to)
			}
			r := await(t, pending, 5*time.Second, "request")
			took := time.Since(start)
			t.Logf("answered %d after %v; %s answered 421 %d times", r.status, took, tt.to, rec.count(tt.to)-refused)
			if r.status != tt.status {
				t.Fatalf("%d %s; want %d", r.status, r.raw, tt.status)
			}
			if tt.status == 503 {
				if r.body["reason"] != tt.reason || r.header.Get("Retry-After") == "" {
					t.Fatalf("%d %v %s; want reason %s and Retry-After", r.status, r.header, r.raw, tt.reason)
				}
				if tt.body == nil && (took < 2*time.Second || took > 4*time.Second) {
					t.Errorf("answered after %v; want after handoff_wait (2s)", took)
				}
				if tt.body != nil && took > time.Second {
					t.Errorf("a body that cannot be sent again was answered after %v; want at once", took)
				}
				return
			}
			epoch := strconv.FormatInt(h.a.Version, 10)
			if r.body["node"] != tt.to || r.body["epoch"] != epoch || r.body["method"] != tt.method {
				t.Fatalf("%s; want %s at epoch %s", r.raw, tt.to, epoch)
			}
			sum := sha256.Sum256(tt.body)
			if r.header.Get("X-Body-Sha256") != hex.EncodeToString(sum[:]) || r.header.Get("X-Body-Length") != strconv.Itoa(len(tt.body)) {
				t.Errorf("the server got a body of %s bytes, SHA-256 %s; want %d bytes, %x",
					r.header.Get("X-Body-Length"), r.header.Get("X-Body-Sha256"), len(tt.body), sum)
			}
			if got := metric(t, fmt.Sprintf(`caddy_dtable_not_owner_answers_total{node=%q}`, tt.to)); got <= retriedBefore {
				t.Errorf("not_owner_answers_total{node=%q} %v; want more than %v", tt.to, got, retriedBefore)
			}
		})
	}
}

// Every request for a base carries its bucket's epoch (client values
// replaced); a request for no base carries none.
func TestEpochHeaderReachesTheUpstream(t *testing.T) {
	e := setup(t) // assignment version 1: no epochs recorded
	send := map[string]string{contract.HeaderBucketEpoch: "999", contract.HeaderBucket: "zz"}
	if a := do(t, "GET", bucketURL(0x05), send); a.status != 200 || a.body["epoch"] != "" {
		t.Fatalf("without epochs: %d %s; want no epoch header", a.status, a.raw)
	}
	a := &schema.Assignment{Version: 2}
	for b := range a.Owners {
		a.Owners[b] = owner(bucket.Bucket(b))
	}
	a.NextEpochs(nil) // every epoch 2
	a.Version = 3
	a.Owners[0x06] = "n2" // was n1: epoch 3
	a.Epochs[0x06] = 3
	e.put(layout.AssignmentKey(), a.Encode())
	e.waitVersion(3)
	tests := []struct {
		name, path, node, epoch string
	}{
		{"kept owner", "/dtables/" + uuidIn(0x05), "n3", "2"},
		{"new owner", "/api/v2/dtables/" + uuidIn(0x06) + "/", "n2", "3"},
		{"socket.io query", "/socket.io/?dtable_uuid=" + uuidIn(0xff), "n1", "2"},
		{"no base", "/ping/", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := do(t, "GET", proxyURL(tt.path), send)
			if a.status != 200 || a.body["epoch"] != tt.epoch || a.body["version"] != "3" || (tt.node != "" && a.body["node"] != tt.node) {
				t.Fatalf("%d %s; want node %q, epoch %q, version 3", a.status, a.raw, tt.node, tt.epoch)
			}
		})
	}
}

// The handoff metrics: held requests, hold time, handoffs by outcome and
// time per handoff.
func TestHandoffMetrics(t *testing.T) {
	h := setupHandoff(t, extraConfig{})
	outcomes := []string{"committed", "aborted", "forced"}
	before := map[string]float64{}
	for _, o := range outcomes {
		before[o] = metric(t, fmt.Sprintf(`caddy_dtable_handoffs_total{outcome=%q}`, o))
	}
	held := metric(t, `caddy_dtable_hold_seconds_count{outcome="released"}`)
	handoffs := metric(t, "caddy_dtable_handoff_seconds_count")

	h.startMove(0x80, "n1") // n3's: committed
	pending := goDo("GET", bucketURL(0x80), nil)
	waitHeld(t, 1)
	h.notify("n3")
	h.commit(0x80)
	h.notify("n1")
	if r := await(t, pending, 5*time.Second, "held request"); r.status != 200 || r.body["node"] != "n1" {
		t.Fatalf("held request: %d %s", r.status, r.raw)
	}
	h.startMove(0x81, "n3") // n1's: aborted
	h.abort(0x81)
	h.reassign(0x82, "n1") // n2's: forced

	want := map[string]float64{"committed": 1, "aborted": 1, "forced": 1}
	for _, o := range outcomes {
		if got := metric(t, fmt.Sprintf(`caddy_dtable_handoffs_total{outcome=%q}`, o)) - before[o]; got != want[o] {
			t.Errorf("handoffs_total{outcome=%q} grew by %v; want %v", o, got, want[o])
		}
	}
	if got := metric(t, `caddy_dtable_hold_seconds_count{outcome="released"}`) - held; got != 1 {
		t.Errorf("hold_seconds_count{outcome=released} grew by %v; want 1", got)
	}
	if got := metric(t, "caddy_dtable_handoff_seconds_count") - handoffs; got != 1 {
		t.Errorf("handoff_seconds_count grew by %v; want 1", got)
	}
	if got := metric(t, "caddy_dtable_held_requests"); got != 0 {
		t.Errorf("held_requests %v after every request ended; want 0", got)
	}
}
