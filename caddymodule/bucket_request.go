package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/contract"
)

// This file is the request path of a request for a base, after
// DtableBucket.ServeHTTP found its bucket: serveBucket and its
// bucketRequest, which carry out the proxy's side of a handoff
// (docs/server-contract.md, "Proxy → server"):
//
//   - A request for a moving bucket is held until the bucket's route
//     changes (the move committed: the new owner; aborted: the old one),
//     for at most handoff_wait. Waking is by channel: every route has a
//     changed channel that install closes when a newer table changes that
//     bucket's route, so a held request costs its own goroutine (which it
//     has anyway) and a timer, and nothing polls.
//   - At most handoff_max_held_per_bucket requests of one bucket, and
//     handoff_max_held in all, wait at once; the next one is answered 503
//     at once (hold_overflow), as is one whose wait ends without a new
//     route (handoff_in_progress).
//   - An upstream that answers 421 (contract.StatusNotMine) is asked again
//     by the newest table, after the bucket's route changes or a short
//     back-off (the new owner may learn of its bucket a little after the
//     proxy does), within the same handoff_wait; the client never sees
//     the 421. The response writer keeps the upstream's answer back until
//     its status is known (retryWriter), and the request body is kept
//     while it is sent so it can be sent again (replayBody).

// Defaults of the handoff settings of DtableBucket.
const (
	defaultHandoffWait     = 5 * time.Second
	defaultMaxHeldInBucket = 1000
	defaultMaxHeld         = 10000
)

// replayLimit is how much of a request body the proxy keeps to send it
// again after a 421. A request whose upstream read more than this before
// answering 421 is not sent again: it is answered 503 (not_owner) with
// Retry-After, as a client can retry it itself. The API's bodies (row
// edits, queries) are far smaller; uploads go to the file server, not to
// the dtable-server.
const replayLimit = 1 << 20

// replayPrealloc is the most a body's declared length makes the proxy
// allocate before the bytes arrive.
const replayPrealloc = 64 << 10

// Back-off between attempts after a 421 while the bucket's route stays
// the same: 20 ms, doubling, at most 320 ms.
const (
	notMineFirstBackoff = 20 * time.Millisecond
	notMineMaxBackoff   = 320 * time.Millisecond
)

// serveBucket routes a request for a base in bucket b: it holds it while
// the bucket moves, sends it to the owner, and sends it again by the
// newest table when the owner answers 421. Upgraded connections
// (WebSocket) are registered as streams of the bucket, so install closes
// them when the bucket starts moving or changes owner.
func (h *DtableBucket) serveBucket(w http.ResponseWriter, r *http.Request, b bucket.Bucket, next caddyhttp.Handler) error {
	bucketName := b.String()
	upgrade := isUpgrade(r)
	var cancelStream context.CancelFunc
	if upgrade {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		r = r.WithContext(ctx)
		w, cancelStream = h.streamWriter(w, r, cancel) // small idle buffers, close at once (stream_defaults.go)
	}
	br := &bucketRequest{h: h, b: b}
	br.rw.w = w
	// Counted for the load report: every request of the bucket, routed
	// or not (its demand); bytes as they pass (retryWriter, replayBody).
	load := &h.follower.load[b]
	load.requests.Add(1)
	br.rw.load = load
	if upgrade {
		br.rw.upgrade = upgradeGet
		if r.Method == http.MethodConnect {
			br.rw.upgrade = upgradeConnect
		}
	}
	defer br.finish()
	if !upgrade && r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		br.body = &br.bodyStore
		br.bodyStore.load = load
		r.Body = br.body.start(r.Body, r.ContentLength)
		br.rw.body = br.body
	}
	path, rawPath := r.URL.Path, r.URL.RawPath
	for {
		var (
			t          *routeTable
			rt         *route
			unregister func()
		)
		if upgrade {
			t, rt, unregister = h.follower.openStream(b, cancelStream)
		} else {
			t = h.follower.table.Load()
			rt = &t.routes[b]
		}
		if rt.moving {
			if e := br.wait(r, rt, reasonHandoff); e != nil {
				return br.fail(w, r, e)
			}
			continue
		}
		if !rt.ok && rt.reason == reasonNotRegistered && len(t.anyNode) > 0 && time.Since(rt.since) < h.handoffWait {
			// The owner's registration has just gone: its lease ended
			// (its server fenced itself first) or the key was deleted.
			// The monitor gives the bucket a new owner within
			// milliseconds of a lease's end, and a registrar writes a
			// deleted key back: hold the request for that, as for a move.
			// Not when no routable node owns a bucket (t.anyNode is
			// empty), or when the owner has been gone for handoff_wait
			// already (no monitor, a settle wait): those requests get
			// their 503 at once, and hold no slot.
			if e := br.wait(r, rt, reasonNotRegistered); e != nil {
				return br.fail(w, r, e)
			}
			continue
		}
		if !rt.ok {
			return br.fail(w, r, &routingError{status: http.StatusServiceUnavailable, bucket: bucketName, node: rt.nodeID,
				reason: rt.reason, msg: rt.describe(t.version)})
		}
		setRoutePlaceholders(r, bucketNameVals[b], rt)
		rt.requests.Inc()
		// The names are canonical: set directly, as Header.Set would. The
		// values live in br (one slice each, capacity 1, so an append
		// copies), not in three allocations a request.
		br.hdr[0] = bucketName
		r.Header[contract.HeaderBucket] = br.hdr[0:1:1]
		if rt.epochStr != "" {
			br.hdr[1] = rt.epochStr
			r.Header[contract.HeaderBucketEpoch] = br.hdr[1:2:2]
		} else {
			delete(r.Header, contract.HeaderBucketEpoch) // not recorded: the server checks no epoch
		}
		br.hdr[2] = t.versionStr
		r.Header[contract.HeaderVersion] = br.hdr[2:3:3]
		r.URL.Path, r.URL.RawPath = path, rawPath
		applyPathPrefix(r, rt.pathPrefix)
		br.choice.route = rt
		caddyhttp.SetVar(r.Context(), routeVar, &br.choice)
		br.rw.reset()
		err := br.attempt(next, r)
		if upgrade {
			unregister()
		}
		if br.choice.changed {
			// The route changed before the dial; nothing was sent. Send
			// it again by the newest table.
			br.rw.before.restore(w.Header())
			if e := br.reroute(r, rt); e != nil {
				return br.fail(w, r, e)
			}
			continue
		}
		if !br.rw.notMine {
			if e := unavailable(err, bucketName, rt); e != nil && br.rw.state == rwPending {
				br.rw.before.restore(w.Header())
				return br.fail(w, r, e)
			}
			return err
		}
		// The owner said the bucket is not its own (yet, or any more).
		notOwnerTotal.WithLabelValues(rt.nodeID).Inc()
		if c := h.logCheck(zapcore.DebugLevel, "upstream answered 421 (not my bucket): sending again by the newest route"); c != nil {
			c.Write(zap.String("bucket", bucketName), zap.String("node", rt.nodeID), zap.Int64("epoch", rt.epoch))
		}
		if br.body != nil {
			body, ok := br.body.again()
			if !ok {
				return br.fail(w, r, &routingError{status: http.StatusServiceUnavailable, bucket: bucketName, node: rt.nodeID,
					reason: reasonNotOwner, msg: fmt.Sprintf("bucket %s: its owner %s answered 421 (not my bucket) "+
						"after reading more than %d bytes of the request body, which the proxy cannot send again", b, rt.nodeID, replayLimit)})
			}
			r.Body = body
		}
		if e := br.wait(r, rt, reasonNotOwner); e != nil {
			return br.fail(w, r, e)
		}
	}
}

// logCheck is h.log.Check, for a handler that may not be provisioned (unit tests).
func (h *DtableBucket) logCheck(lvl zapcore.Level, msg string) *zapcore.CheckedEntry {
	if h.log == nil {
		return nil
	}
	return h.log.Check(lvl, msg)
}

// applyPathPrefix prepends a node's local_node_url path to the request's.
func applyPathPrefix(r *http.Request, prefix string) {
	if prefix == "" {
		return
	}
	r.URL.Path = prefix + r.URL.Path
	if r.URL.RawPath != "" {
		r.URL.RawPath = prefix + r.URL.RawPath
	}
}

// bucketRequest is one request for a base across its attempts.
type bucketRequest struct {
	h         *DtableBucket
	rw        retryWriter
	body      *replayBody // nil: the request has no body; else &bodyStore
	bodyStore replayBody
	choice    upstreamChoice // the current attempt's, for the upstream source
	reroutes  int            // attempts aborted because the route changed
	// hdr holds the fencing headers' values (bucket, epoch, version) of
	// the current attempt. reverse_proxy sends a clone of the request's
	// headers, so rewriting them for the next attempt changes nothing sent.
	hdr [3]string

	// The hold window: set when the request first waits.
	deadline time.Time
	timer    *time.Timer
	backoff  time.Duration
	waited   time.Duration // in all its waits
	outcome  string        // the routing error reason it ended with; "" if sent on
	// b and didWait share a word (the request is allocated per request:
	// its size class is its cost).
	b       bucket.Bucket
	didWait bool
}

// attempt runs the next handler (reverse_proxy) once. If the upstream's
// 421 is being dropped and reading its body fails, reverse_proxy aborts
// with http.ErrAbortHandler; nothing reached the client, so that is
// recovered and the request is tried again like any 421. An attempt whose
// route changed before the dial is aborted and recovered too
// (br.choice.changed).
func (br *bucketRequest) attempt(next caddyhttp.Handler, r *http.Request) error {
	return br.choice.run(next, &br.rw, r, &br.rw.notMine)
}

// reroute prepares a request whose route rt changed before it was
// dialled to be sent again: its body from the start. It returns the
// routing error that ends the request instead: it was re-routed too
// often, or its body was partly read and not kept.
func (br *bucketRequest) reroute(r *http.Request, rt *route) *routingError {
	t, now := rt.follower.lookup(rt.bucket)
	change := br.choice.describeChange(t, now)
	if c := br.h.logCheck(zapcore.DebugLevel, "route changed before the dial: sending the request again by the newest table"); c != nil {
		c.Write(zap.String("bucket", rt.bucket.String()), zap.String("change", change))
	}
	br.reroutes++
	fail := func(why string) *routingError {
		return &routingError{status: http.StatusServiceUnavailable, bucket: rt.bucket.String(), node: rt.nodeID, reason: reasonMoved,
			msg: change + "; " + why}
	}
	if br.reroutes > maxReroutes {
		return fail(fmt.Sprintf("it changed %d times before the request could be sent", br.reroutes))
	}
	if br.body != nil {
		body, ok := br.body.again()
		if !ok {
			return fail("the request body was partly sent and is too large to send again")
		}
		r.Body = body
	}
	return nil
}

// wait holds the request until rt, the route it was (or would have been)
// sent by, is replaced by a newer table's, or, after a 421 (why is
// reasonNotOwner), at most a back-off; all within the request's hold
// window (handoff_wait from its first wait). It returns the routing error
// that ends the request: the window passed (why), the bounds are full
// (hold_overflow) or the client went away (hold_cancelled).
func (br *bucketRequest) wait(r *http.Request, rt *route, why string) *routingError {
	h := br.h
	now := time.Now()
	if br.deadline.IsZero() {
		br.deadline = now.Add(h.handoffWait)
	}
	remaining := br.deadline.Sub(now)
	if remaining <= 0 {
		return br.windowPassed(rt, why)
	}
	if e := h.takeHoldSlot(rt); e != nil {
		return e
	}
	defer h.releaseHoldSlot(rt.bucket)
	d := remaining
	if why == reasonNotOwner {
		br.backoff = min(max(2*br.backoff, notMineFirstBackoff), notMineMaxBackoff)
		d = min(d, br.backoff)
	}
	if br.timer == nil {
		br.timer = time.NewTimer(d)
	} else {
		br.timer.Reset(d) // stopped after each wait; Go 1.23 timers keep no stale tick
	}
	br.didWait = true
	heldRequests.Inc()
	defer heldRequests.Dec()
	var e *routingError
	select {
	case <-rt.changed:
	case <-br.timer.C:
		if !time.Now().Before(br.deadline) {
			e = br.windowPassed(rt, why)
		}
	case <-r.Context().Done():
		e = &routingError{status: http.StatusServiceUnavailable, bucket: rt.bucket.String(), node: rt.nodeID,
			reason: reasonHoldCancelled, msg: fmt.Sprintf("bucket %s: the client went away while its request was held", rt.bucket)}
	}
	br.timer.Stop()
	br.waited += time.Since(now)
	return e
}

// windowPassed is the error of a request whose hold window passed.
func (br *bucketRequest) windowPassed(rt *route, why string) *routingError {
	e := &routingError{status: http.StatusServiceUnavailable, bucket: rt.bucket.String(), node: rt.nodeID, reason: why}
	switch why {
	case reasonHandoff:
		e.msg = fmt.Sprintf("bucket %s is moving from %s to %s; the handoff did not complete within %v (handoff_wait)",
			rt.bucket, rt.nodeID, rt.moveTo, br.h.handoffWait)
	case reasonNotRegistered:
		e.msg = fmt.Sprintf("bucket %s: its owner %s is not registered (down, or its registration expired), and the bucket got no registered owner within %v (handoff_wait)",
			rt.bucket, rt.nodeID, br.h.handoffWait)
	default:
		e.msg = fmt.Sprintf("bucket %s: its owner %s answered 421 (not my bucket) and no other owner took it within %v (handoff_wait)",
			rt.bucket, rt.nodeID, br.h.handoffWait)
	}
	return e
}

// fail ends the request with a routing error (see DtableBucket.fail).
func (br *bucketRequest) fail(w http.ResponseWriter, r *http.Request, e *routingError) error {
	br.outcome = e.reason
	return br.h.fail(w, r, e)
}

// finish records the request's hold time, if it waited.
func (br *bucketRequest) finish() {
	if br.timer != nil {
		br.timer.Stop()
	}
	if br.body != nil {
		br.body.stopKeeping()
	}
	if br.rw.streamOpen {
		br.rw.load.websockets.Add(-1) // reverse_proxy returns when the tunnel ends
	}
	if br.didWait {
		outcome := br.outcome
		if outcome == "" {
			outcome = "released"
		}
		holdSeconds.WithLabelValues(outcome).Observe(br.waited.Seconds())
	}
}

// takeHoldSlot counts a waiting request against the per-bucket and the
// total bound, or returns the hold_overflow error.
func (h *DtableBucket) takeHoldSlot(rt *route) *routingError {
	b := rt.bucket
	inBucket := h.heldInBucket[b].Add(1)
	total := h.heldTotal.Add(1)
	if inBucket <= int64(h.MaxHeldInBucket) && total <= int64(h.MaxHeld) {
		return nil
	}
	h.releaseHoldSlot(b)
	msg := fmt.Sprintf("bucket %s: %d requests of the bucket are held already (handoff_max_held_per_bucket)", b, h.MaxHeldInBucket)
	if inBucket <= int64(h.MaxHeldInBucket) {
		msg = fmt.Sprintf("bucket %s: %d requests are held already (handoff_max_held)", b, h.MaxHeld)
	}
	return &routingError{status: http.StatusServiceUnavailable, bucket: b.String(), node: rt.nodeID, reason: reasonHoldOverflow, msg: msg}
}

func (h *DtableBucket) releaseHoldSlot(b bucket.Bucket) {
	h.heldInBucket[b].Add(-1)
	h.heldTotal.Add(-1)
}

// retryWriter is the response writer reverse_proxy writes to. Until the
// status is known, headers go to the client's writer as they would
// without it; a 421 from the upstream is then dropped: the client
// writer's headers are put back as they were before the attempt (a
// snapshot taken without allocating, see headerSnapshot), and the 421's
// body and trailers go nowhere, so the request can be sent again. Any
// other status passes, and so does everything after it.
type retryWriter struct {
	w       http.ResponseWriter
	before  headerSnapshot // the client writer's headers before this attempt
	scratch http.Header    // where a dropped answer's late headers (trailers) go
	state   uint8
	notMine bool // this attempt's answer was a 421, dropped
	// load counts the bytes written and, for an upgrade request
	// (upgrade), the stream it opens (streamOpen until the request ends).
	// The two flags sit next to the others, in what would be padding: the
	// request's allocation stays in its size class.
	upgrade    uint8
	streamOpen bool
	body       *replayBody // told to stop keeping the body once an answer passes; may be nil
	load       *bucketLoad
}

// What an upgrade request's answer must be to open a stream: 101 for an
// HTTP/1.1 Upgrade; 2xx for a CONNECT (WebSocket over HTTP/2 or 3, which
// reverse_proxy answers 200).
const (
	upgradeNone uint8 = iota
	upgradeGet
	upgradeConnect
)

const (
	rwPending  uint8 = iota // no status yet
	rwPassing               // a status other than 421 was written: pass everything on
	rwDropping              // a 421 was written: drop the rest of it
)

// reset prepares the writer for an attempt; nothing reached the client
// yet.
func (rw *retryWriter) reset() {
	rw.state, rw.notMine = rwPending, false
	rw.before.take(rw.w.Header())
}

func (rw *retryWriter) Header() http.Header {
	if rw.state == rwDropping {
		if rw.scratch == nil {
			rw.scratch = http.Header{}
		}
		return rw.scratch
	}
	return rw.w.Header()
}

func (rw *retryWriter) WriteHeader(code int) {
	switch {
	case rw.state == rwDropping:
		return
	case rw.state == rwPassing:
		rw.w.WriteHeader(code) // the client's writer says what a second status means
		return
	case code == contract.StatusNotMine:
		rw.state, rw.notMine = rwDropping, true
		rw.before.restore(rw.w.Header())
		return
	case code >= 100 && code < 200 && code != http.StatusSwitchingProtocols:
		rw.w.WriteHeader(code) // informational: not the answer yet
		return
	}
	rw.state = rwPassing
	if rw.body != nil {
		rw.body.stopKeeping()
	}
	if !rw.streamOpen && rw.load != nil && (rw.upgrade == upgradeGet && code == http.StatusSwitchingProtocols ||
		rw.upgrade == upgradeConnect && code >= 200 && code < 300) {
		rw.streamOpen = true
		rw.load.websockets.Add(1)
	}
	rw.w.WriteHeader(code)
}

func (rw *retryWriter) Write(p []byte) (int, error) {
	if rw.state == rwPending {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.state == rwDropping {
		return len(p), nil
	}
	n, err := rw.w.Write(p)
	// A WebSocket's frames are not counted (its open count stands in for
	// them): over HTTP/1.1 they bypass this writer (hijacked), over HTTP/2
	// and 3 (extended CONNECT) the owner's frames come through it.
	if rw.load != nil && !rw.streamOpen {
		rw.load.bytesOut.Add(uint64(n))
	}
	return n, err
}

// FlushError is what http.ResponseController calls to flush; a flush of
// a dropped answer does nothing (the client's writer must not see it: it
// would send a 200).
func (rw *retryWriter) FlushError() error {
	if rw.state == rwPending {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.state == rwDropping {
		return nil
	}
	return http.NewResponseController(rw.w).Flush()
}

// Flush is for handlers that assert http.Flusher.
func (rw *retryWriter) Flush() { _ = rw.FlushError() }

// Unwrap lets http.ResponseController reach the client's writer (to
// hijack it for a WebSocket, set deadlines).
func (rw *retryWriter) Unwrap() http.ResponseWriter { return rw.w }

// headerSnapshot remembers a header map's fields so that they can be put
// back. Before reverse_proxy runs, the response has few headers (Server,
// those of header directives), so up to four are kept in an array and
// taking a snapshot allocates nothing; more are cloned. The value slices
// are shared, not copied: until the status is known, reverse_proxy only
// adds fields or appends values (copyHeader, Via), which leaves the
// shared slices' contents as they were.
type headerSnapshot struct {
	n      int
	fields [4]struct {
		name   string
		values []string
	}
	many http.Header // when there are more than four fields
}

func (s *headerSnapshot) take(h http.Header) {
	s.n, s.many = 0, nil
	if len(h) > len(s.fields) {
		s.many = h.Clone()
		return
	}
	for name, values := range h {
		s.fields[s.n].name, s.fields[s.n].values = name, values
		s.n++
	}
}

func (s *headerSnapshot) restore(h http.Header) {
	clear(h)
	if s.many != nil {
		maps.Copy(h, s.many)
		return
	}
	for _, f := range s.fields[:s.n] {
		h[f.name] = f.values
	}
}

// replayBody is a request body that can be read again from the start:
// what the attempts read from the client is kept (up to replayLimit), and
// a new attempt's reader gives the kept bytes first, then goes on reading
// the client. The transport may still be reading the previous attempt's
// reader after its response came (it writes the body in its own
// goroutine): reads are serialised, and a reader that has been replaced
// reads nothing more, so the bytes each attempt sends are the body's.
type replayBody struct {
	first replayReader // the first attempt's reader (saves an allocation)
	mu    sync.Mutex
	src   io.ReadCloser // the client's body; the server closes it
	buf   []byte        // the first bytes read from src
	keep  bool          // keeping what is read (false: too large, or the answer passed)
	lost  bool          // bytes were read from src and not kept: no replay
	err   error         // src's error once it returned one (io.EOF at the end)
	gen   uint32        // the current reader's generation
	done  atomic.Bool   // an answer passed to the client: stop keeping
	load  *bucketLoad   // counts the bytes read from src (once each, however often replayed); may be nil
}

var errBodyReplaced = errors.New("request body: read by an attempt that has been replaced by another")

// start sets rb up to read src, and returns the first attempt's reader.
func (rb *replayBody) start(src io.ReadCloser, length int64) io.ReadCloser {
	rb.src = src
	rb.keep = length <= replayLimit
	if rb.keep && length > 0 {
		// One allocation for a small body of known length; a large one
		// grows as it arrives, so a declared length costs no memory.
		rb.buf = make([]byte, 0, min(length, replayPrealloc))
	}
	rb.first.rb = rb
	return &rb.first
}

// again returns a reader from the start for another attempt, or false if
// bytes were read and not kept.
func (rb *replayBody) again() (io.ReadCloser, bool) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.gen++
	if rb.lost {
		return nil, false
	}
	return &replayReader{rb: rb, gen: rb.gen}, true
}

// stopKeeping drops the kept bytes once no replay can come (an answer
// passed to the client, or the request ended). It takes no lock: a read
// may be blocked on the client holding it.
func (rb *replayBody) stopKeeping() { rb.done.Store(true) }

type replayReader struct {
	rb  *replayBody
	gen uint32
	off int // bytes of rb.buf given
}

func (rr *replayReader) Read(p []byte) (int, error) {
	rb := rr.rb
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rr.gen != rb.gen {
		return 0, errBodyReplaced
	}
	if rb.done.Load() && rb.keep && rr.off >= len(rb.buf) {
		// No replay can come; this reader has given what was kept.
		rb.keep, rb.buf = false, nil
	}
	if rr.off < len(rb.buf) {
		n := copy(p, rb.buf[rr.off:])
		rr.off += n
		return n, nil
	}
	if rb.err != nil {
		return 0, rb.err
	}
	n, err := rb.src.Read(p)
	if n > 0 && rb.load != nil {
		rb.load.bytesIn.Add(uint64(n))
	}
	if n > 0 {
		if rb.keep && len(rb.buf)+n <= replayLimit {
			rb.buf = append(rb.buf, p[:n]...)
			rr.off += n
		} else {
			rb.keep, rb.buf, rb.lost = false, nil, true
		}
	}
	if err != nil {
		rb.err = err
	}
	return n, err
}

// Close does not close the client's body: another attempt may need it
// (the server closes it when the request ends).
func (rr *replayReader) Close() error { return nil }
