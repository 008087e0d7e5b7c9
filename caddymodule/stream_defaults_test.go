package caddymodule

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"testing/iotest"
	"time"
)

// chunkReader returns the data in reads of the given sizes (then EOF).
type chunkReader struct {
	data  []byte
	sizes []int
	reads []int // the buffer length of each Read
}

func (c *chunkReader) Read(p []byte) (int, error) {
	c.reads = append(c.reads, len(p))
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.sizes) > 0 {
		n = min(n, c.sizes[0])
		c.sizes = c.sizes[1:]
	}
	n = copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func TestCopyStreamBytesAndBuffers(t *testing.T) {
	data := make([]byte, 200<<10)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	// Small messages, then a burst that fills the buffers, then small again.
	sizes := []int{10, 100, streamIdleBufSize, streamBusyBufSize, streamBusyBufSize, 500, 7, streamIdleBufSize, 3}
	src := &chunkReader{data: data, sizes: sizes}
	var dst bytes.Buffer
	n, err := copyStream(&dst, src)
	if err != nil || n != int64(len(data)) || !bytes.Equal(dst.Bytes(), data) {
		t.Fatalf("copied %d bytes, err %v, equal %v", n, err, bytes.Equal(dst.Bytes(), data))
	}
	want := []int{
		streamIdleBufSize, streamIdleBufSize, streamIdleBufSize, // 10, 100, a full small read
		streamBusyBufSize, streamBusyBufSize, streamBusyBufSize, // full big reads, then 500: back to small
		streamIdleBufSize, streamIdleBufSize, // 7, a full small read
		streamBusyBufSize, // 3
	}
	for i, w := range want {
		if i >= len(src.reads) || src.reads[i] != w {
			t.Fatalf("read buffer sizes %v, want %v…", src.reads, want)
		}
	}
}

func TestCopyStreamErrors(t *testing.T) {
	boom := errors.New("boom")
	// A read error after some bytes: the bytes are written, the error returned.
	var dst bytes.Buffer
	n, err := copyStream(&dst, io.MultiReader(bytes.NewReader([]byte("abc")), iotest.ErrReader(boom)))
	if n != 3 || !errors.Is(err, boom) || dst.String() != "abc" {
		t.Errorf("read error: n %d err %v dst %q", n, err, dst.String())
	}
	// A write error ends the copy with it.
	n, err = copyStream(errWriter{boom}, bytes.NewReader([]byte("abc")))
	if n != 0 || !errors.Is(err, boom) {
		t.Errorf("write error: n %d err %v", n, err)
	}
	// A short write is io.ErrShortWrite.
	n, err = copyStream(shortWriter{}, bytes.NewReader([]byte("abcd")))
	if n != 2 || !errors.Is(err, io.ErrShortWrite) {
		t.Errorf("short write: n %d err %v", n, err)
	}
	// Data and EOF in one read.
	dst.Reset()
	n, err = copyStream(&dst, iotest.DataErrReader(bytes.NewReader([]byte("xyz"))))
	if n != 3 || err != nil || dst.String() != "xyz" {
		t.Errorf("data with EOF: n %d err %v", n, err)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

// TestStreamConnIsWhatIOCopyUses checks that io.CopyBuffer, as
// reverse_proxy calls it, goes through the streamConn in both directions
// (and so never through net's 32 KiB io.Copy fallback), and that
// CloseWrite half-closes a TCP connection.
func TestStreamConnIsWhatIOCopyUses(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	sc := &streamConn{Conn: server}
	var _ io.WriterTo = sc
	var _ io.ReaderFrom = sc

	// client → owner: io.CopyBuffer(owner, sc, buf) ends at the client's EOF.
	client.Write([]byte("hello"))
	client.(*net.TCPConn).CloseWrite()
	var owner bytes.Buffer
	if _, err := io.CopyBuffer(&owner, sc, make([]byte, 1)); err != nil || owner.String() != "hello" {
		t.Fatalf("client → owner: %q %v", owner.String(), err)
	}
	// owner → client: io.CopyBuffer(sc, owner, buf), then CloseWrite.
	if _, err := io.CopyBuffer(sc, onlyReader{bytes.NewReader([]byte("world"))}, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := sc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "world" {
		t.Fatalf("owner → client: %q %v", got, err)
	}
	if err := (&streamConn{Conn: pipeConn{}}).CloseWrite(); !errors.Is(err, errNoCloseWrite) {
		t.Errorf("CloseWrite without a write half: %v", err)
	}
}

type onlyReader struct{ io.Reader }

type pipeConn struct{ net.Conn }

// TestStreamWriterHijack checks that an HTTP/1.1 upgrade's writer hands
// out a streamConn on Hijack, other requests keep theirs, and the
// DTABLE_STREAM_COPY=caddy switch turns it off.
func TestStreamWriterHijack(t *testing.T) {
	var h DtableBucket
	h.provisionStreams()
	got := make(chan net.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw, _ := h.streamWriter(w, r, func() {})
		conn, brw, err := http.NewResponseController(sw).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		got <- conn
		conn.Close()
	}))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("%v %v", resp, err)
	}
	if conn := <-got; conn == nil {
		t.Fatal("no conn")
	} else if _, ok := conn.(*streamConn); !ok {
		t.Errorf("hijacked %T, want *streamConn", conn)
	}

	r2 := httptest.NewRequest("GET", "/", nil)
	r2.ProtoMajor = 2
	w := httptest.NewRecorder()
	if sw, _ := h.streamWriter(w, r2, func() {}); sw != http.ResponseWriter(w) {
		t.Error("an HTTP/2 request's writer was wrapped")
	}
	t.Setenv(streamCopyEnv, "caddy")
	h.provisionStreams()
	r1 := httptest.NewRequest("GET", "/", nil)
	if sw, _ := h.streamWriter(w, r1, func() {}); sw != http.ResponseWriter(w) {
		t.Error("wrapped with DTABLE_STREAM_COPY=caddy")
	}
}

// TestStreamCancelClosesTheClientAtOnce checks that the stream's cancel
// function cancels the request and closes the hijacked connection (the
// client sees the end without the handler doing anything), and that a
// connection hijacked after the cancel is closed at once.
func TestStreamCancelClosesTheClientAtOnce(t *testing.T) {
	var h DtableBucket
	h.provisionStreams()
	for _, cancelFirst := range []bool{false, true} {
		cancelled := make(chan struct{})
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sw, cancel := h.streamWriter(w, r, func() { close(cancelled) })
			if cancelFirst {
				cancel()
			}
			conn, brw, err := http.NewResponseController(sw).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			if !cancelFirst {
				cancel()
			}
			<-release // the handler holds on; only the cancel closes the connection
			conn.Close()
		}))
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"))
		br := bufio.NewReader(c)
		if resp, err := http.ReadResponse(br, nil); err == nil && resp.StatusCode != 101 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("cancel first %v: the connection was not closed: %v", cancelFirst, err)
		}
		<-cancelled
		close(release)
		c.Close()
		srv.Close()
	}
}
