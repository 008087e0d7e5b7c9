package caddymodule

import (
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/dtablecluster/dtable-router/internal/contract"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// unroutableFollower is a follower without etcd whose assignment gives
// every bucket to n1, except 01 (unassigned) and 02 (owned by ghost, which
// is not registered).
func unroutableFollower() *follower {
	return testFollower(func(snap *watch.Snapshot) {
		snap.Assignment.Owners[0x01] = ""
		snap.Assignment.Owners[0x02] = "ghost"
	})
}

// served is what a DtableBucket did with one request.
type served struct {
	rec  *httptest.ResponseRecorder // what it wrote
	err  error                      // what it returned
	repl *caddy.Replacer            // the request's placeholders
	next bool                       // whether it called the next handler
}

// serve runs a DtableBucket (not provisioned: no etcd) on one request of
// a server with or without error routes.
func serve(t *testing.T, fw *follower, noUUID, target string, errorRoutes bool) served {
	t.Helper()
	h := &DtableBucket{NoUUID: noUUID, finder: *defaultFinder(), retryAfter: "5"}
	h.follower = fw
	srv := &caddyhttp.Server{}
	if errorRoutes {
		srv.Errors = &caddyhttp.HTTPErrorConfig{Routes: caddyhttp.RouteList{{}}}
	}
	s := served{rec: httptest.NewRecorder(), repl: caddy.NewReplacer()}
	r := caddyhttp.PrepareRequest(httptest.NewRequest("GET", target, nil), s.repl, s.rec, srv)
	s.err = h.ServeHTTP(s.rec, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		s.next = true
		return nil
	}))
	return s
}

func placeholders(repl *caddy.Replacer) [3]string {
	var out [3]string
	for i, name := range []string{placeholderBucket, placeholderNode, placeholderReason} {
		v, known := repl.GetString(name)
		if !known {
			v = "(unset)"
		}
		out[i] = v
	}
	return out
}

func TestRoutingErrors(t *testing.T) {
	tests := []struct {
		name   string
		fw     *follower
		noUUID string
		target string
		status int
		// {http.dtable_bucket.bucket}, .node, .reason
		placeholders [3]string
	}{
		{"malformed UUID", unroutableFollower(), "any_node", "/dtables/xyz", 400, [3]string{"", "", "malformed_uuid"}},
		{"missing UUID", unroutableFollower(), "any_node", "/dtables/", 400, [3]string{"", "", "missing_uuid"}},
		{"no UUID, reject", unroutableFollower(), "reject", "/ping/", 400, [3]string{"", "", "missing_uuid"}},
		{"no UUID, no node", followerWithoutAssignment(), "any_node", "/ping/", 503, [3]string{"", "", "no_node"}},
		{"no assignment", followerWithoutAssignment(), "any_node", "/dtables/" + uuidIn(0x5c), 503, [3]string{"5c", "", "no_assignment"}},
		{"unassigned bucket", unroutableFollower(), "any_node", "/dtables/" + uuidIn(0x01), 503, [3]string{"01", "", "bucket_unassigned"}},
		{"owner not registered", unroutableFollower(), "any_node", "/dtables/" + uuidIn(0x02), 503, [3]string{"02", "ghost", "owner_not_registered"}},
	}
	for _, tt := range tests {
		retryAfter := map[int]string{503: "5"}[tt.status]
		t.Run(tt.name+"/default answer", func(t *testing.T) {
			s := serve(t, tt.fw, tt.noUUID, tt.target, false)
			rec := s.rec
			if s.err != nil || s.next {
				t.Fatalf("returned %v, next called %v; want the handler to answer", s.err, s.next)
			}
			var body map[string]string
			if rec.Code != tt.status || rec.Header().Get("Content-Type") != "application/json" ||
				json.Unmarshal(rec.Body.Bytes(), &body) != nil {
				t.Fatalf("answer %d %v %s; want %d in JSON", rec.Code, rec.Header(), rec.Body, tt.status)
			}
			if body["reason"] != tt.placeholders[2] || body["bucket"] != tt.placeholders[0] || body["error"] == "" {
				t.Errorf("body %v; want reason %s, bucket %q and a message", body, tt.placeholders[2], tt.placeholders[0])
			}
			if got := rec.Header().Get("Retry-After"); got != retryAfter {
				t.Errorf("Retry-After %q; want %q", got, retryAfter)
			}
			if got := placeholders(s.repl); got != tt.placeholders {
				t.Errorf("placeholders %q; want %q", got, tt.placeholders)
			}
		})
		t.Run(tt.name+"/error routes", func(t *testing.T) {
			s := serve(t, tt.fw, tt.noUUID, tt.target, true)
			rec := s.rec
			var he caddyhttp.HandlerError
			if !errors.As(s.err, &he) || he.StatusCode != tt.status || s.next {
				t.Fatalf("returned %v, next called %v; want a caddyhttp.HandlerError with status %d", s.err, s.next, tt.status)
			}
			var re *routingError
			if !errors.As(s.err, &re) || re.reason != tt.placeholders[2] {
				t.Errorf("error %v does not carry the routing error %s", s.err, tt.placeholders[2])
			}
			if rec.Code != http.StatusOK || rec.Body.Len() != 0 || rec.Header().Get("Content-Type") != "" {
				t.Errorf("the handler wrote %d %v %q; the error routes answer", rec.Code, rec.Header(), rec.Body)
			}
			if got := rec.Header().Get("Retry-After"); got != retryAfter {
				t.Errorf("Retry-After %q; want %q", got, retryAfter)
			}
			if got := placeholders(s.repl); got != tt.placeholders {
				t.Errorf("placeholders %q; want %q", got, tt.placeholders)
			}
		})
	}
}

func TestRoutedRequestPlaceholders(t *testing.T) {
	tests := []struct {
		name         string
		target       string
		placeholders [3]string
	}{
		{"with a UUID", "/dtables/" + uuidIn(0x5c), [3]string{"5c", "n1", ""}},
		{"without a UUID", "/ping/", [3]string{"", "n1", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := serve(t, unroutableFollower(), "any_node", tt.target, false)
			if s.err != nil || !s.next || s.rec.Body.Len() != 0 {
				t.Fatalf("returned %v, next called %v, wrote %q; want it routed", s.err, s.next, s.rec.Body)
			}
			if got := placeholders(s.repl); got != tt.placeholders {
				t.Errorf("placeholders %q; want %q", got, tt.placeholders)
			}
		})
	}
}

// A bucket that moves between the handler and the proxy's dial is not
// sent to its old owner: inside the handler's attempt the source aborts
// it (the handler sends it again by the newest table); called on its own
// it fails, and handle_errors can tell why. The message names the change.
func TestUpstreamsRefuseAMovedBucket(t *testing.T) {
	fw := unroutableFollower()
	repl := caddy.NewReplacer()
	r := caddyhttp.PrepareRequest(httptest.NewRequest("GET", "/dtables/"+uuidIn(0x5c), nil), repl, nil, &caddyhttp.Server{})
	_, chosen := fw.lookup(0x5c)
	choice := &upstreamChoice{route: chosen}
	caddyhttp.SetVar(r.Context(), routeVar, choice)

	ups, err := DtableBucketUpstreams{}.GetUpstreams(r)
	if err != nil || len(ups) != 1 || ups[0].Dial != "127.0.0.1:5000" {
		t.Fatalf("before the move: %v, %v", ups, err)
	}
	for _, tt := range []struct {
		name, owner, message string
	}{
		{"moved", "n2", "bucket 5c moved from n1 to n2 during the request"},
		{"owner deregistered", "ghost", "bucket 5c changed during the request: bucket 5c: its owner ghost (assignment version 3) is not registered"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			snap := *fw.table.Load().snap
			snap.Nodes = maps.Clone(snap.Nodes)
			snap.Nodes["n2"] = schema.Node{NodeID: "n2", NodeURL: "https://n2/", LocalNodeURL: "http://127.0.0.1:5002/"}
			assignment := *snap.Assignment
			assignment.Owners[0x5c] = tt.owner
			snap.Assignment = &assignment
			fw.table.Store(buildTable(fw, &snap, nil))
			defer fw.table.Store(buildTable(fw, unroutableFollower().table.Load().snap, nil))

			repl.Set(placeholderReason, "")
			ups, err := DtableBucketUpstreams{}.GetUpstreams(r)
			if err == nil || len(ups) != 0 || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("after the move: %v, %v; want an error saying %q", ups, err, tt.message)
			}
			if got, _ := repl.GetString(placeholderReason); got != reasonMoved {
				t.Errorf("{%s} = %q; want %s", placeholderReason, got, reasonMoved)
			}
			// Inside the handler's attempt: aborted, and recovered by run.
			err = choice.run(caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				DtableBucketUpstreams{}.GetUpstreams(r)
				t.Error("GetUpstreams returned inside the attempt")
				return nil
			}), httptest.NewRecorder(), r, nil)
			if err != nil || !choice.changed || choice.attempting {
				t.Errorf("run: %v, changed %v, attempting %v; want the attempt aborted", err, choice.changed, choice.attempting)
			}
		})
	}
}

// Another panic in an attempt is not swallowed.
func TestAttemptDoesNotSwallowOtherPanics(t *testing.T) {
	c := &upstreamChoice{}
	defer func() {
		if v := recover(); v != "boom" {
			t.Fatalf("recovered %v; want the panic to pass", v)
		}
	}()
	c.run(caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { panic("boom") }),
		httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), new(true))
}

// The handler sets the fencing headers by map key, which needs their
// canonical form.
func TestHeaderNamesAreCanonical(t *testing.T) {
	for _, name := range []string{contract.HeaderBucket, contract.HeaderBucketEpoch, contract.HeaderVersion} {
		if c := textproto.CanonicalMIMEHeaderKey(name); c != name {
			t.Errorf("%q is not canonical (%q)", name, c)
		}
	}
}

// followerWithoutAssignment is a follower that has read no assignment yet.
func followerWithoutAssignment() *follower {
	fw := &follower{}
	fw.table.Store(buildTable(fw, nil, nil))
	return fw
}

// BenchmarkServeHTTP is the handler's own cost per routed request, with a
// next handler that answers as reverse_proxy does (headers, status, body).
// One request is reused, so that its construction does not hide the cost.
func BenchmarkServeHTTP(b *testing.B) {
	h := &DtableBucket{NoUUID: "any_node", finder: *defaultFinder(), retryAfter: "5"}
	h.follower = testFollower()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Body != nil {
			io.Copy(io.Discard, r.Body)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, err := w.Write([]byte(`{}`))
		return err
	})
	for _, method := range []string{"GET", "POST"} {
		b.Run(method, func(b *testing.B) {
			r := httptest.NewRequest(method, "/api/v1/dtables/5c264e76-0e5a-448a-9f34-580b551364ca/rows/", nil)
			r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, &caddyhttp.Server{})
			body := strings.NewReader(`{"row": {"name": "x"}}`)
			w := &benchWriter{header: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				if method == "POST" {
					body.Seek(0, io.SeekStart)
					r.Body, r.ContentLength = io.NopCloser(body), body.Size()
				}
				clear(w.header)
				if err := h.ServeHTTP(w, r, next); err != nil || w.code != 200 {
					b.Fatal(err, w.code)
				}
			}
		})
	}
}

// benchWriter is a ResponseWriter that keeps nothing but the status.
type benchWriter struct {
	header http.Header
	code   int
}

func (w *benchWriter) Header() http.Header         { return w.header }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }

// A stream's route is its own copy, not a pointer into the table it was
// opened under: a WebSocket outlives many tables, and such a pointer would
// keep each of them (256 routes) alive.
func TestStreamKeepsNoTableAlive(t *testing.T) {
	fw := testFollower()
	tbl, rt, unregister := fw.openStream(0x2a, func() {})
	defer unregister()
	var kept *route
	for s := range fw.streams[0x2a] {
		kept = s.route
	}
	if kept == nil || kept != rt {
		t.Fatalf("the stream is not registered with the route it returned")
	}
	for i := range tbl.routes {
		if kept == &tbl.routes[i] {
			t.Fatalf("the stream's route points into the table (route %d)", i)
		}
	}
	if !kept.sameTarget(&tbl.routes[0x2a]) || kept.changed != tbl.routes[0x2a].changed {
		t.Fatalf("the copy differs from the table's route")
	}
}
