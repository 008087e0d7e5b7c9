package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/contract"
)

// DtableBucket is the http.handlers.dtable_bucket handler. For each request it
// finds the base UUID, looks up the bucket's owner in the etcd-watched
// assignment, stamps the fencing headers (bucket, its epoch, assignment
// version) and hands the request on; the reverse_proxy after it (with the
// dtable_bucket upstream source) dials that owner. A request for a
// moving bucket is held until the move commits or aborts, and one that
// the owner answers 421 (not my bucket) is sent again by the newest
// assignment, both within HandoffWait. A request it cannot
// route is a routing error: 400 for a missing, malformed or ambiguous UUID
// (uuidFinder), 503 with Retry-After when the bucket has no registered
// owner or its handoff outlasts the wait (see fail for how it is
// answered).
//
// It sets these placeholders on every request it sees, for later handlers
// (header_up), handle_errors and logs (log_append):
//
//	{http.dtable_bucket.bucket}  the request's bucket ("5c"); empty if the request names no valid base UUID
//	{http.dtable_bucket.node}    the owner the request goes to, or the owner that is not registered; empty if none
//	{http.dtable_bucket.reason}  why the request was not routed (malformed_uuid, bucket_unassigned, ...); empty if it was
//
// The request path starts at ServeHTTP below; a request for a base goes
// on to serveBucket (bucket_request.go), the per-bucket loop that holds,
// sends and sends again.
//
// The Caddyfile directive dtable_bucket_proxy sets up both handlers.
type DtableBucket struct {
	EtcdConfig
	// UUIDPathPrefixes: the base UUID is the path segment after one of
	// these. Default: /dtables/, /api/v1/dtables/, /api/v1/internal/dtables/, /api/v2/dtables/.
	UUIDPathPrefixes []string `json:"uuid_path_prefixes,omitempty"`
	// UUIDQueryParams: else the UUID is the value of one of these query
	// parameters. Default: dtable_uuid (socket.io connects with it).
	UUIDQueryParams []string `json:"uuid_query_params,omitempty"`
	// NoUUID says what to do with a request that names no base (/ping/):
	// "any_node" (default) sends it to a registered node that owns buckets;
	// "reject" answers 400.
	NoUUID string `json:"no_uuid,omitempty"`
	// RetryAfter is the Retry-After of 503 answers; default 5s.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`
	// HandoffWait is how long a request may wait for its bucket: held
	// while the bucket moves, and sent again after its owner answered 421
	// (not my bucket); then it is answered 503. Default 5s.
	HandoffWait caddy.Duration `json:"handoff_wait,omitempty"`
	// MaxHeldInBucket bounds the requests of one bucket that wait at once
	// (default 1000), MaxHeld those of all buckets (default 10000); the
	// next one is answered 503 at once (reason hold_overflow).
	MaxHeldInBucket int `json:"handoff_max_held_per_bucket,omitempty"`
	MaxHeld         int `json:"handoff_max_held,omitempty"`
	// LoadReport says how this proxy publishes the traffic it counts per
	// bucket, for the monitor's balancing by load; default every 30s, as
	// "caddy@<hostname>".
	LoadReport *LoadReportConfig `json:"load_report,omitempty"`

	finder      uuidFinder
	retryAfter  string
	handoffWait time.Duration
	// Requests waiting now, per bucket and in all (see takeHoldSlot).
	heldInBucket [bucket.Count]atomic.Int64
	heldTotal    atomic.Int64
	streams      streamDefaults // WebSocket memory (stream_defaults.go)
	followerRef
	log *zap.Logger
	// unregisterLoad takes this handler's load report settings back
	// from the follower (Cleanup).
	unregisterLoad func()
}

// CaddyModule returns the Caddy module information.
func (*DtableBucket) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.dtable_bucket", New: func() caddy.Module { return new(DtableBucket) }}
}

// Provision joins (or starts) the shared follower. It does not wait for
// etcd.
func (h *DtableBucket) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	if len(h.UUIDPathPrefixes) == 0 {
		h.UUIDPathPrefixes = DefaultUUIDPathPrefixes
	}
	if len(h.UUIDQueryParams) == 0 {
		h.UUIDQueryParams = DefaultUUIDQueryParams
	}
	for _, p := range h.UUIDPathPrefixes {
		if err := checkPathPrefix(p); err != nil {
			return fmt.Errorf("uuid_path_prefixes: %v", err)
		}
	}
	for _, q := range h.UUIDQueryParams {
		if err := checkQueryParam(q); err != nil {
			return fmt.Errorf("uuid_query_params: %v", err)
		}
	}
	h.finder = newUUIDFinder(h.UUIDPathPrefixes, h.UUIDQueryParams)
	if h.NoUUID == "" {
		h.NoUUID = "any_node"
	}
	if h.RetryAfter <= 0 {
		h.RetryAfter = caddy.Duration(5 * time.Second)
	}
	h.retryAfter = strconv.Itoa(max(1, int(time.Duration(h.RetryAfter).Round(time.Second)/time.Second)))
	if h.HandoffWait == 0 {
		h.HandoffWait = caddy.Duration(defaultHandoffWait)
	}
	h.handoffWait = time.Duration(h.HandoffWait)
	if h.MaxHeldInBucket == 0 {
		h.MaxHeldInBucket = defaultMaxHeldInBucket
	}
	if h.MaxHeld == 0 {
		h.MaxHeld = defaultMaxHeld
	}
	h.provisionStreams()
	loadCfg, err := h.LoadReport.resolve()
	if err != nil {
		return err
	}
	if err := h.join(ctx, h.EtcdConfig); err != nil {
		return err
	}
	h.unregisterLoad = h.follower.registerLoadReport(loadCfg)
	return nil
}

// Validate checks the settings.
func (h *DtableBucket) Validate() error {
	if h.NoUUID != "any_node" && h.NoUUID != "reject" {
		return fmt.Errorf(`no_uuid: %q, want "any_node" or "reject"`, h.NoUUID)
	}
	if h.HandoffWait < 0 {
		return fmt.Errorf("handoff_wait: %v, want a positive duration", time.Duration(h.HandoffWait))
	}
	if h.MaxHeldInBucket < 0 || h.MaxHeld < 0 {
		return fmt.Errorf("handoff_max_held_per_bucket %d, handoff_max_held %d: want positive numbers", h.MaxHeldInBucket, h.MaxHeld)
	}
	return nil
}

// Cleanup takes back this handler's load report settings and releases
// the shared follower; the last user stops it.
func (h *DtableBucket) Cleanup() error {
	if h.unregisterLoad != nil {
		h.unregisterLoad()
	}
	return h.release()
}

// routeVar is the request variable through which the handler's choice
// (*upstreamChoice) goes from the DtableBucket handler to the upstream
// source.
const routeVar = "dtable_bucket.route"

// upstreamChoice is where the handler sends one attempt of a request.
type upstreamChoice struct {
	route *route
	// noBase: the request names no base; any routable node will do, so
	// the route stays valid while its node is routable.
	noBase bool
	// attempting is true while the attempt runs under run, which recovers
	// errRouteChanged; changed is set when the upstream source found the
	// route changed and aborted the attempt (nothing was sent).
	attempting, changed bool
}

// errRouteChanged is the panic value with which the upstream source
// aborts an attempt whose route changed before it was dialled:
// reverse_proxy would otherwise retry the stale route until its
// lb_try_duration and answer a bare 503. Like http.ErrAbortHandler, it
// unwinds reverse_proxy's ServeHTTP, which has written nothing yet (the
// source runs before each dial); run recovers it, and the handler sends
// the request again by the newest table.
var errRouteChanged = errors.New("dtable_bucket: the route changed before the dial")

// maxReroutes bounds how often one request is sent again because its
// route changed between the handler and the dial (each time needs a new
// routing table); then it is answered 503 moved_during_request.
const maxReroutes = 8

// valid reports whether the choice still holds in the newest table, and
// returns that table's route of the bucket.
func (c *upstreamChoice) valid() (bool, *routeTable, *route) {
	t, now := c.route.follower.lookup(c.route.bucket)
	if c.noBase {
		for _, n := range t.anyNode {
			if n.sameTarget(c.route) {
				return true, t, now
			}
		}
		return false, t, now
	}
	return now.sameTarget(c.route), t, now
}

// describeChange says how the choice's route changed (now is the newest
// table's route of its bucket).
func (c *upstreamChoice) describeChange(t *routeTable, now *route) string {
	old := c.route
	switch {
	case c.noBase:
		return fmt.Sprintf("node %s, chosen for a request that names no base, no longer owns buckets or is not registered", old.nodeID)
	case !now.ok:
		return fmt.Sprintf("bucket %s changed during the request: %s", old.bucket, now.describe(t.version))
	case now.nodeID != old.nodeID:
		return fmt.Sprintf("bucket %s moved from %s to %s during the request", old.bucket, old.nodeID, now.nodeID)
	}
	return fmt.Sprintf("bucket %s: its owner %s changed its local_node_url during the request", old.bucket, old.nodeID)
}

// run runs next once for this choice, recovering the abort of an attempt
// whose route changed (c.changed is then set, the returned error nil).
// abortOK, if not nil, says (when the attempt ends) whether an
// http.ErrAbortHandler panic is the caller's to recover too (see
// bucketRequest.attempt).
func (c *upstreamChoice) run(next caddyhttp.Handler, w http.ResponseWriter, r *http.Request, abortOK *bool) (err error) {
	c.attempting, c.changed = true, false
	defer func() {
		c.attempting = false
		if c.changed || (abortOK != nil && *abortOK) {
			if v := recover(); v != nil && v != errRouteChanged && v != http.ErrAbortHandler {
				panic(v)
			}
		}
	}()
	return next.ServeHTTP(w, r)
}

// unavailable turns a 503 that reverse_proxy returns as an error, with no
// answer to pass on (its one upstream marked down by passive health
// checks or at max_requests, or response retries run out), into a routing
// error, so that it is answered like every other 503 of the proxy (JSON,
// Retry-After); nil for any other error. An upstream's own 503 answer is
// not an error: it passes as it is.
func unavailable(err error, bucketName string, rt *route) *routingError {
	if err == nil {
		return nil
	}
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable {
		return nil
	}
	what := "node " + rt.nodeID
	if bucketName != "" {
		what = "bucket " + bucketName + ": its owner " + rt.nodeID
	}
	return &routingError{status: http.StatusServiceUnavailable, bucket: bucketName, node: rt.nodeID, reason: reasonUpstreamUnavailable,
		msg: fmt.Sprintf("%s: the proxy got no answer to pass on (%v)", what, he.Err)}
}

// Placeholders set by DtableBucket (documented on the type).
const (
	placeholderBucket = "http.dtable_bucket.bucket"
	placeholderNode   = "http.dtable_bucket.node"
	placeholderReason = "http.dtable_bucket.reason"
)

// ServeHTTP routes one request: a request for a base is served by
// serveBucket (bucket_request.go), which holds it while its bucket moves
// and sends it again after a 421; one that names no base goes to any node
// that owns buckets, here.
func (h *DtableBucket) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	b, found, uerr := h.finder.find(r)
	if uerr != nil {
		return h.fail(w, r, &routingError{status: http.StatusBadRequest, reason: uerr.reason(), msg: uerr.Error()})
	}
	if found {
		return h.serveBucket(w, r, b, next)
	}
	if h.NoUUID == "reject" {
		return h.fail(w, r, &routingError{status: http.StatusBadRequest, reason: reasonMissingUUID,
			msg: "the request names no base: expected a base UUID in the path (after " + strings.Join(h.finder.prefixNames(), ", ") +
				") or in the query (" + strings.Join(h.finder.queryParams, ", ") + ")"})
	}
	// No base: any node that owns buckets answers it (no hold, no epoch:
	// it concerns no bucket).
	c := &upstreamChoice{noBase: true}
	path, rawPath := r.URL.Path, r.URL.RawPath
	delete(r.Header, contract.HeaderBucket)
	delete(r.Header, contract.HeaderBucketEpoch)
	for tries := 0; ; tries++ {
		t := h.follower.table.Load()
		if len(t.anyNode) == 0 {
			return h.fail(w, r, &routingError{status: http.StatusServiceUnavailable, reason: reasonNoNode,
				msg: "no registered node owns buckets in the current assignment"})
		}
		rt := t.anyNode[h.follower.rr.Add(1)%uint64(len(t.anyNode))]
		setRoutePlaceholders(r, "", rt)
		rt.requests.Inc()
		r.Header[contract.HeaderVersion] = []string{t.versionStr}
		r.URL.Path, r.URL.RawPath = path, rawPath
		applyPathPrefix(r, rt.pathPrefix)
		c.route = rt
		caddyhttp.SetVar(r.Context(), routeVar, c)
		err := c.run(next, w, r, nil)
		if !c.changed {
			if e := unavailable(err, "", rt); e != nil {
				return h.fail(w, r, e)
			}
			return err
		}
		if tries == maxReroutes {
			return h.fail(w, r, &routingError{status: http.StatusServiceUnavailable, node: rt.nodeID, reason: reasonMoved,
				msg: fmt.Sprintf("the node chosen for a request that names no base changed %d times before it could be sent", maxReroutes+1)})
		}
	}
}

// setPlaceholders sets all three placeholders, "" for what is unknown, so
// that none is left verbatim in a text such as a handle_errors body.
func setPlaceholders(r *http.Request, bucketName, node, reason string) {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set(placeholderBucket, bucketName)
	repl.Set(placeholderNode, node)
	repl.Set(placeholderReason, reason)
}

// setRoutePlaceholders is setPlaceholders for a request sent by rt (no
// reason), with values converted to interfaces once (bucketNameVals, the
// route's nodeIDVal), so that the request path allocates nothing for them
// (issue 10: two allocations a request). b is "" for a request that names
// no base.
func setRoutePlaceholders(r *http.Request, b any, rt *route) {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set(placeholderBucket, b)
	if rt.nodeIDVal != nil {
		repl.Set(placeholderNode, rt.nodeIDVal)
	} else {
		repl.Set(placeholderNode, rt.nodeID) // a route not made by nodeRoute
	}
	repl.Set(placeholderReason, "")
}

// bucketNameVals are the buckets' names as placeholder values.
var bucketNameVals = func() (v [bucket.Count]any) {
	for b := range v {
		v[b] = bucket.Bucket(b).String()
	}
	return v
}()

// routingError is why a request cannot be routed.
type routingError struct {
	status int    // 400 or 503
	bucket string // the request's bucket; "" if it names no valid base UUID
	node   string // the bucket's owner, if it has one
	reason string // missing_uuid, malformed_uuid, no_node, bucket_unassigned, ...
	msg    string // what is wrong, for people
}

func (e *routingError) Error() string { return e.msg }

// fail counts a routing error, sets the placeholders and answers.
//
// Caddy's contract is that a handler that returns an error has written
// nothing: the server then runs the site's error routes (handle_errors)
// or, when there are none, writes the bare status code
// (caddyhttp.Server.ServeHTTP). A handler that wrote a response and then
// returned an error would have the server write the status a second time
// ("superfluous WriteHeader") and error routes would find the answer
// already sent. So fail does one or the other:
//
//   - The server has error routes: they decide the answer, so fail returns
//     caddyhttp.Error(status, err). handle_errors sees the status and
//     message as {http.error.status_code} and {http.error.message}, our
//     placeholders, and the Retry-After header of a 503, which is set
//     first. Caddy's authentication handler does the same: basic auth sets
//     WWW-Authenticate, the handler sets http.auth.* placeholders "so it can
//     be used in the handle_errors directive" and returns 401 as an error.
//     Caddy's error log (http.log.error) records the error, at debug level
//     once an error route has answered.
//   - It has none: fail writes the documented default answer itself, a
//     JSON body {"error", "reason", "bucket"} with Retry-After on a 503,
//     and returns nil, as a handler that answers does. Caddy's error log
//     does not see it then; the routing_errors metric counts it.
//
// Both ways the placeholders are set, so access logs see them (log_append).
// The choice is per server: a handle_errors in any site of the server's
// listener takes over error answers for all its sites, as it does in Caddy
// for every other handler's errors. The other way, the directive adding a
// default error route, would not work: the Caddyfile adapter orders a
// server's error routes by their place in the file (those with status
// matchers first), so ours could run before the user's handle_errors and
// hide our errors from it; and a JSON config would get no default.
func (h *DtableBucket) fail(w http.ResponseWriter, r *http.Request, e *routingError) error {
	errorCounter(e.reason).Inc()
	setPlaceholders(r, e.bucket, e.node, e.reason)
	if e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", h.retryAfter)
	}
	if hasErrorRoutes(r) {
		return caddyhttp.Error(e.status, e)
	}
	return writeDefaultAnswer(w, e)
}

// hasErrorRoutes reports whether the server handling r has error routes.
func hasErrorRoutes(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return ok && srv != nil && srv.Errors != nil && len(srv.Errors.Routes) > 0
}

// writeDefaultAnswer writes a routing error as JSON: the message, the
// reason and, when known, the bucket.
func writeDefaultAnswer(w http.ResponseWriter, e *routingError) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	body := map[string]string{"error": e.msg, "reason": e.reason}
	if e.bucket != "" {
		body["bucket"] = e.bucket
	}
	return json.NewEncoder(w).Encode(body)
}

// isUpgrade reports a long-lived upgraded connection: an HTTP/1.1
// Upgrade (WebSocket), or a CONNECT over HTTP/2 or HTTP/3 (WebSocket over
// extended CONNECT, which Caddy turns into an HTTP/1.1 upgrade upstream).
func isUpgrade(r *http.Request) bool {
	if r.Method == http.MethodConnect {
		return true
	}
	return r.Header.Get("Upgrade") != "" && headerHasToken(r.Header, "Connection", "upgrade")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
