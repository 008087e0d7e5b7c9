package caddymodule

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
)

// The memory of an idle WebSocket (issue 10 item 3).
//
// reverse_proxy tunnels an upgraded connection with two goroutines, each
// in io.CopyBuffer(dst, src, buf) with a buffer of stream_buffer_size.
// On a plain TCP client connection that buffer is never used: the client
// side is a *net.TCPConn, so io.CopyBuffer hands the copy to its WriteTo
// (client → owner) and ReadFrom (owner → client), which find no splice
// partner (the owner's side is net/http's wrapper of the upstream
// connection) and fall back to io.Copy, which allocates a buffer of
// 32 KiB of its own. So every stream held two 32 KiB buffers for its whole
// life, idle or not, whatever stream_buffer_size said (~64 kB of heap
// per stream, most of what the proxy kept per WebSocket; see README,
// "WebSocket scale").
//
// The proxy hands reverse_proxy, for an HTTP/1.1 upgrade, the client
// connection wrapped in a streamConn, whose WriteTo and ReadFrom copy
// with a small buffer while the stream is quiet and borrow a 32 KiB
// buffer from a pool only while data comes faster than the small buffer
// takes: an idle stream holds 2 × streamIdleBufSize. The bytes, their
// order and every end of stream (EOF, half-close, errors) are as with
// io.Copy.

// streamIdleBufSize is what each direction of a stream reads into while
// the previous read did not fill it (socket.io heartbeats and small
// messages fit).
const streamIdleBufSize = 1 << 10

// streamBusyBufSize is the pooled buffer a direction reads into after a
// read filled the small one, as io.Copy's.
const streamBusyBufSize = 32 << 10

var streamBufPool = sync.Pool{New: func() any { b := make([]byte, streamBusyBufSize); return &b }}

// streamCopyEnv, set to "caddy", turns the wrapper off (reverse_proxy
// copies, and ends a moved bucket's streams, as it does on its own): a
// switch for measuring the difference (tools/ws-benchmark), not a
// setting.
const streamCopyEnv = "DTABLE_STREAM_COPY"

// streamDefaults is the handler's WebSocket memory setting.
type streamDefaults struct {
	caddyCopy bool // DTABLE_STREAM_COPY=caddy: do not wrap
}

// provisionStreams reads the defaults (Provision calls it).
func (h *DtableBucket) provisionStreams() {
	h.streams.caddyCopy = os.Getenv(streamCopyEnv) == "caddy"
}

// streamWriter wraps the client's response writer of an upgrade request,
// so that reverse_proxy's hijack gets a streamConn, and returns the
// function to register for the stream (follower.openStream): it shuts
// the hijacked client connection down at once and cancels the request,
// as cancel does. Cancelling alone ends the stream through three
// goroutines in turn (reverse_proxy's closes the owner's side, a copy
// fails, the handler returns and closes the client's side), for each of
// a whole node's streams at once. Requests over HTTP/2 and HTTP/3 (extended CONNECT) are not
// hijacked and keep w and cancel.
func (h *DtableBucket) streamWriter(w http.ResponseWriter, r *http.Request, cancel context.CancelFunc) (http.ResponseWriter, context.CancelFunc) {
	if h.streams.caddyCopy || r.ProtoMajor != 1 {
		return w, cancel
	}
	hw := &hijackWriter{ResponseWriter: w}
	return hw, func() {
		hw.closeConn() // first: the client sees the end at once
		cancel()
	}
}

// hijackWriter is a response writer whose Hijack wraps the connection;
// everything else (Flush, deadlines through http.ResponseController)
// reaches the client's writer through Unwrap.
type hijackWriter struct {
	http.ResponseWriter
	mu     sync.Mutex
	conn   net.Conn // the hijacked connection, once hijacked
	closed bool     // closeConn ran: a connection hijacked later is closed at once
}

func (hw *hijackWriter) Unwrap() http.ResponseWriter { return hw.ResponseWriter }

func (hw *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(hw.ResponseWriter).Hijack()
	if err != nil {
		return conn, brw, err
	}
	hw.mu.Lock()
	hw.conn = conn
	closed := hw.closed
	hw.mu.Unlock()
	if closed {
		closeNow(conn)
	}
	return &streamConn{Conn: conn}, brw, nil
}

// closeConn closes the hijacked connection, or the one hijacked later.
func (hw *hijackWriter) closeConn() {
	hw.mu.Lock()
	hw.closed = true
	conn := hw.conn
	hw.mu.Unlock()
	if conn != nil {
		closeNow(conn)
	}
}

// closeNow ends a connection without waiting: a TCP connection (for TLS,
// the one underneath, as a close_notify could wait for a blocked write)
// is shut down both ways, which sends the client its FIN and wakes
// reverse_proxy's copies at once; the descriptor is closed when
// reverse_proxy closes the connection. Close itself would wait for the
// copy blocked in a read to let go of the descriptor, one stream after
// the other when a whole node's streams close. Any other connection is
// closed in a goroutine of its own.
func closeNow(c net.Conn) {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	if hc, ok := c.(interface {
		CloseRead() error
		CloseWrite() error
	}); ok {
		hc.CloseWrite()
		hc.CloseRead()
		return
	}
	go c.Close()
}

// streamConn is a hijacked client connection whose copies in either
// direction hold little memory while idle (see above).
type streamConn struct{ net.Conn }

// WriteTo copies what the client sends to w (the owner).
func (c *streamConn) WriteTo(w io.Writer) (int64, error) { return copyStream(w, c.Conn) }

// ReadFrom copies what r (the owner) sends to the client.
func (c *streamConn) ReadFrom(r io.Reader) (int64, error) { return copyStream(c.Conn, r) }

var errNoCloseWrite = errors.New("stream: the client connection cannot close its write side")

// CloseWrite half-closes the client connection, as reverse_proxy does on
// the owner's EOF; a connection without a write half reports an error,
// which ends the tunnel as reverse_proxy's own errCopyDone does.
func (c *streamConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errNoCloseWrite
}

// copyStream is io.Copy(dst, src) reading into a small buffer while the
// reads do not fill it, and into a pooled 32 KiB one, returned as soon as
// a read leaves it partly empty, while they do. A read blocks on an idle
// stream, so the buffer it reads into is what an idle stream holds.
func copyStream(dst io.Writer, src io.Reader) (written int64, err error) {
	small := make([]byte, streamIdleBufSize)
	var big *[]byte
	defer func() {
		if big != nil {
			streamBufPool.Put(big)
		}
	}()
	for {
		buf := small
		if big != nil {
			buf = *big
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			if nw < 0 || nr < nw {
				nw = 0
				if werr == nil {
					werr = errors.New("stream: invalid write result")
				}
			}
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
			if nr != nw {
				return written, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
		switch {
		case nr == len(buf) && big == nil:
			big = streamBufPool.Get().(*[]byte)
		case nr < len(buf) && big != nil:
			streamBufPool.Put(big)
			big = nil
		}
	}
}
