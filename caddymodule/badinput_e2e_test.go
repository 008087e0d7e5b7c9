package caddymodule

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// trap is a listener standing for a machine the proxy must never dial
// (one a request names in its Host, its absolute URI or a header).
type trap struct {
	ln    net.Listener
	dials atomic.Int64
}

func newTrap(t *testing.T) *trap {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &trap{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tr.dials.Add(1)
			c.Close()
		}
	}()
	return tr
}

// caseRecorder wraps the fake servers: it counts, per node, the requests
// of each matrix case (by their X-Matrix-Case header).
type caseRecorder struct {
	mu   sync.Mutex
	seen map[string]map[string]int // case -> node -> requests
}

func (rec *caseRecorder) wrap(node string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c := r.Header.Get("X-Matrix-Case"); c != "" {
			rec.mu.Lock()
			if rec.seen[c] == nil {
				rec.seen[c] = map[string]int{}
			}
			rec.seen[c][node]++
			rec.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (rec *caseRecorder) of(c string) map[string]int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	out := map[string]int{}
	for n, k := range rec.seen[c] {
		out[n] = k
	}
	return out
}

// TestBadInputMatrix: what clients can send the proxy that it must not
// get wrong, in one place. Each case checks the status and the message;
// that nothing crashed (no 500, and the proxy routes the next request);
// and that nothing outside the registered nodes was dialled: the trap,
// the machine the requests name in their Host, absolute URI and headers,
// sees no connection; the upstream Caddy dialled (X-Dtable-Upstream, from
// header_down) is the owner's local_node_url; and the servers saw the
// request only if it was routed, and only its owner.
func TestBadInputMatrix(t *testing.T) {
	rec := &caseRecorder{seen: map[string]map[string]int{}}
	e := setupWith(t, extraConfig{wrap: rec.wrap,
		proxyBlock: "\t\theader_down X-Dtable-Upstream {http.reverse_proxy.upstream.hostport}"})
	tr := newTrap(t)
	trapAddr := tr.ln.Addr().String()
	upstream := map[string]string{} // node -> the host:port of its local_node_url
	for n, b := range e.backends {
		upstream[n] = strings.TrimPrefix(b.srv.URL, "http://")
	}

	const u5 = "05264e76-0e5a-448a-9f34-580b551364ca" // n3's (the owner of bucket b is n(b%3+1))
	a, b := uuidIn(0x00), uuidIn(0x01)                // n1's, n2's
	long := strings.Repeat("5", 8192)
	tests := []struct {
		name   string
		method string // GET if empty
		target string
		header map[string]string
		status int
		reason string // of a routing error's JSON
		node   string // that answers a routed request
		msg    string // in the error (or in the body of an answer not ours)
		saw    func(t *testing.T, got answer)
	}{
		// Malformed, truncated, oversized, non-hex and mixed-case UUIDs.
		{name: "not a UUID", target: "/api/v1/dtables/not-a-uuid/rows/", status: 400, reason: "malformed_uuid",
			msg: `path after /api/v1/dtables/: invalid base UUID "not-a-uuid": length 10, want 36 (dashed) or 32 (hex)`},
		{name: "truncated dashed UUID", target: "/dtables/" + u5[:35] + "/", status: 400, reason: "malformed_uuid", msg: "length 35"},
		{name: "truncated hex UUID", target: "/dtables/" + strings.ReplaceAll(u5, "-", "")[:31], status: 400, reason: "malformed_uuid", msg: "length 31"},
		{name: "one character too many", target: "/dtables/" + u5 + "0/", status: 400, reason: "malformed_uuid", msg: "length 37"},
		{name: "UUID and an extension", target: "/dtables/" + u5 + ".json", status: 400, reason: "malformed_uuid", msg: "length 41"},
		{name: "oversized UUID", target: "/dtables/" + long + "/rows/", status: 400, reason: "malformed_uuid",
			msg: `invalid base UUID "` + long[:64] + `…": length 8192`},
		{name: "oversized query UUID", target: "/socket.io/?dtable_uuid=" + long, status: 400, reason: "malformed_uuid",
			msg: "query parameter dtable_uuid: invalid base UUID"},
		{name: "request line too long", target: "/dtables/" + strings.Repeat("5", 2<<20), status: 431, msg: "Request Header Fields Too Large"},
		{name: "non-hex UUID", target: "/dtables/5g264e76-0e5a-448a-9f34-580b551364ca", status: 400, reason: "malformed_uuid",
			msg: "non-hex character 'g' at position 2"},
		{name: "misplaced dash", target: "/dtables/05264e760-e5a-448a-9f34-580b551364ca", status: 400, reason: "malformed_uuid",
			msg: "expected '-' at position 9, found '0'"},
		{name: "fullwidth digit", target: "/dtables/%EF%BC%905264e76-0e5a-448a-9f34-580b551364", status: 400, reason: "malformed_uuid", msg: "non-hex character"},
		{name: "NUL in the UUID", target: "/dtables/05264e76-0e5a-448a-9f34-580b551364c%00", status: 400, reason: "malformed_uuid", msg: `non-hex character '\x00' at position 36`},
		{name: "empty UUID", target: "/dtables/", status: 400, reason: "missing_uuid", msg: "path after /dtables/: missing base UUID"},
		{name: "empty query UUID", target: "/socket.io/?dtable_uuid=", status: 400, reason: "malformed_uuid", msg: `invalid base UUID ""`},
		{name: "invalid escape in the path", target: "/dtables/%zz264e76-0e5a-448a-9f34-580b551364ca", status: 400, msg: "Bad Request"},
		{name: "invalid escape in the query", target: "/socket.io/?dtable_uuid=%zz", status: 400, reason: "malformed_uuid", msg: `invalid base UUID "%zz"`},
		{name: "mixed-case UUID", target: "/dtables/05264E76-0e5A-448a-9F34-580b551364Ca/", status: 200, node: "n3"},
		{name: "mixed-case hex UUID", target: "/api/v1/dtables/05264E760e5A448a9F34580b551364Ca/rows/", status: 200, node: "n3"},
		{name: "mixed-case query UUID", target: "/socket.io/?dtable_uuid=05264E76-0E5A-448A-9F34-580B551364CA", status: 200, node: "n3"},
		{name: "percent-encoded UUID", target: "/dtables/%30%35" + u5[2:] + "/", status: 200, node: "n3"},

		// Path tricks and their encodings.
		{name: "dot-dot segments", target: "/dtables/" + a + "/../../dtables/" + b + "/rows/", status: 400, reason: "ambiguous_request", msg: `path: dot segment ".."`},
		{name: "encoded dot-dot", target: "/dtables/" + a + "/%2e%2e/%2E%2E/dtables/" + b + "/", status: 400, reason: "ambiguous_request", msg: `dot segment ".."`},
		{name: "half-encoded dot-dot", target: "/dtables/" + a + "/.%2E/", status: 400, reason: "ambiguous_request", msg: `dot segment ".."`},
		{name: "dot segment", target: "/dtables/./" + b, status: 400, reason: "ambiguous_request", msg: `dot segment "."`},
		{name: "encoded dot segment", target: "/%2e/dtables/" + b, status: 400, reason: "ambiguous_request", msg: `dot segment "."`},
		{name: "dot segments before the prefix", target: "/x/../dtables/" + b + "/", status: 400, reason: "ambiguous_request", msg: `dot segment ".."`},
		{name: "dot segment without a base", target: "/ping/./", status: 400, reason: "ambiguous_request", msg: `dot segment "."`},
		{name: "encoded slashes", target: "/dtables/" + a + "/..%2f..%2fdtables%2f" + b + "/", status: 400, reason: "ambiguous_request", msg: "encoded slash %2f"},
		{name: "encoded slash in the prefix", target: "/api%2Fv1/dtables/" + b, status: 400, reason: "ambiguous_request", msg: "encoded slash %2F"},
		{name: "encoded backslash", target: "/dtables/" + a + "%5c..%5c" + b, status: 400, reason: "ambiguous_request", msg: "encoded slash %5c"},
		{name: "encoded backslash in upper case", target: "/dtables/" + a + "%5C..%5C" + b, status: 400, reason: "ambiguous_request", msg: "backslash"},
		{name: "backslash", target: "/dtables/" + a + `\..\` + b, status: 400, reason: "ambiguous_request", msg: "backslash"},
		{name: "empty segment before the prefix", target: "//dtables/" + b + "/", status: 400, reason: "ambiguous_request", msg: "empty segment (//)"},
		{name: "empty segment in the prefix", target: "/api//v2/dtables/" + b + "/", status: 400, reason: "ambiguous_request", msg: "empty segment (//) before the base UUID after /api/v2/dtables/"},
		{name: "empty segment before the UUID", target: "/dtables//" + b, status: 400, reason: "ambiguous_request", msg: "empty segment (//)"},
		{name: "empty segment after the UUID", target: "/dtables/" + b + "//rows/", status: 200, node: "n2"},
		{name: "prefix in upper case", target: "/DTABLES/" + b + "/", status: 200, node: "n2"},
		{name: "prefix in mixed case", target: "/Api/V1/Internal/DTables/" + b + "/view-rows/", status: 200, node: "n2"},
		{name: "percent-encoded prefix", target: "/%61pi/v2/dtables/" + b + "/", status: 200, node: "n2"},
		{name: "two bases in the query", target: "/socket.io/?dtable_uuid=" + a + "&dtable_uuid=" + b, status: 400, reason: "ambiguous_request",
			msg: "query parameter dtable_uuid: two different base UUIDs"},
		{name: "one base twice in the query", target: "/socket.io/?dtable_uuid=" + b + "&EIO=4&dtable_uuid=" + strings.ToUpper(b), status: 200, node: "n2"},
		{name: "path and query disagree", target: "/dtables/" + a + "/?dtable_uuid=" + b, status: 400, reason: "ambiguous_request",
			msg: "path after /dtables/ names base " + a + ", query parameter dtable_uuid names " + b},
		{name: "path and query agree", target: "/dtables/" + b + "/?dtable_uuid=" + strings.ReplaceAll(b, "-", ""), status: 200, node: "n2"},
		{name: "encoded parameter name", target: "/socket.io/?dtable_uuid=" + a + "&dtable%5Fuuid=" + b, status: 400, reason: "ambiguous_request", msg: "two different base UUIDs"},
		{name: "bracket parameter", target: "/socket.io/?dtable_uuid[]=" + b, status: 200, node: "n2"},
		{name: "parameter in another case", target: "/dtables/" + a + "/?DTABLE_UUID=" + b, status: 200, node: "n1"},

		// Client-sent fencing headers are replaced.
		{name: "X-Dtable-* headers", target: "/dtables/" + u5, header: map[string]string{
			"X-Dtable-Bucket": "ff", "X-Dtable-Bucket-Epoch": "999", "X-Dtable-Assignment-Version": "999"},
			status: 200, node: "n3", saw: func(t *testing.T, got answer) {
				if got.body["bucket"] != "05" || got.body["version"] != "1" || got.body["epoch"] != "" {
					t.Errorf("the server saw bucket %q, version %q, epoch %q; want 05, 1 and none", got.body["bucket"], got.body["version"], got.body["epoch"])
				}
			}},
		{name: "X-Dtable-* headers in lower case, no base", target: "/ping/", header: map[string]string{
			"x-dtable-bucket": "05", "x-dtable-bucket-epoch": "7", "x-dtable-assignment-version": "999"},
			status: 200, saw: func(t *testing.T, got answer) {
				if got.body["bucket"] != "" || got.body["version"] != "1" || got.body["epoch"] != "" {
					t.Errorf("the server saw bucket %q, version %q, epoch %q; want none, 1, none", got.body["bucket"], got.body["version"], got.body["epoch"])
				}
			}},

		// Another machine named by the request is never dialled.
		{name: "Host names another machine", target: "/dtables/" + u5, header: map[string]string{"Host": trapAddr}, status: 200, node: "n3"},
		{name: "absolute URI names another machine", target: "http://" + trapAddr + "/dtables/" + u5, status: 200, node: "n3"},
		{name: "absolute URI and Host name other machines", target: "http://" + trapAddr + "/api/v2/dtables/" + b + "/",
			header: map[string]string{"Host": "evil.example:80"}, status: 200, node: "n2"},
		{name: "forwarding headers name another machine", target: "/dtables/" + u5, header: map[string]string{
			"X-Forwarded-Host": trapAddr, "Forwarded": "host=" + trapAddr, "X-Forwarded-Proto": "https"}, status: 200, node: "n3"},
		{name: "absolute URI with a path trick", target: "http://" + trapAddr + "/dtables/" + a + "/../" + b, status: 400, reason: "ambiguous_request"},
		{name: "absolute URI without a base", target: "http://" + trapAddr + "/ping/", status: 200},
		{name: "userinfo in the absolute URI", target: "http://user:pw@" + trapAddr + "/dtables/" + u5, status: 200, node: "n3"},
		// Names no base: goes to a registered node (which answers it), never to the trap.
		{name: "CONNECT to another machine", method: "CONNECT", target: trapAddr, header: map[string]string{"Host": trapAddr}, status: 200},
	}
	sanity := func(t *testing.T) {
		t.Helper()
		if got := do(t, "GET", proxyURL("/dtables/"+u5), nil); got.status != 200 || got.body["node"] != "n3" {
			t.Fatalf("the proxy does not route after the case: %d %s", got.status, got.raw)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := cmpOr(tt.method, "GET")
			header := map[string]string{"X-Matrix-Case": tt.name}
			for k, v := range tt.header {
				header[k] = v
			}
			got := rawDo(t, proxyPort, method, tt.target, header)
			msg := got.raw
			if got.body["reason"] != "" {
				msg = got.body["error"]
			}
			switch {
			case got.status == 500:
				t.Fatalf("500: %s", got.raw)
			case tt.status != 0 && got.status != tt.status:
				t.Errorf("status %d; want %d (%s)", got.status, tt.status, short(got.raw))
			case tt.reason != "" && (got.body["reason"] != tt.reason || got.header.Get("Content-Type") != "application/json"):
				t.Errorf("reason %q; want %q in JSON (%s)", got.body["reason"], tt.reason, short(got.raw))
			case tt.node != "" && got.body["node"] != tt.node:
				t.Errorf("answered by %q; want %s (%s)", got.body["node"], tt.node, short(got.raw))
			}
			if !strings.Contains(msg, tt.msg) {
				t.Errorf("message %q does not say %q", short(msg), tt.msg)
			}
			if tt.saw != nil {
				tt.saw(t, got)
			}
			// Dialled: only the owner, and only for a routed request.
			if up := got.header.Get("X-Dtable-Upstream"); up != "" && (tt.node != "" && up != upstream[tt.node] || !isUpstream(upstream, up)) {
				t.Errorf("Caddy dialled %s; want %s (registered: %v)", up, upstream[tt.node], upstream)
			}
			seen := rec.of(tt.name)
			switch {
			case tt.node != "":
				if len(seen) != 1 || seen[tt.node] != 1 {
					t.Errorf("the servers saw %v; want one request at %s", seen, tt.node)
				}
			case got.status >= 400 && got.status != 502:
				if len(seen) != 0 {
					t.Errorf("the servers saw %v of a refused request", seen)
				}
			}
			if n := tr.dials.Load(); n != 0 {
				t.Fatalf("the machine the request named (%s) was dialled %d times", trapAddr, n)
			}
			sanity(t)
		})
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func isUpstream(upstream map[string]string, hostPort string) bool {
	for _, u := range upstream {
		if u == hostPort {
			return true
		}
	}
	return false
}

// short cuts a long text for a failure message.
func short(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}
