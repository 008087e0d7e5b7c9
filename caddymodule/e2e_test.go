package caddymodule

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/gorilla/websocket"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/contract"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

var layout = schema.Layout{Prefix: schema.DefaultPrefix}

// ports for the one Caddy that caddytest runs per test binary.
var (
	portsOnce                           sync.Once
	adminPort, proxyPort, siteAdminPort int
	httpPort, httpsPort                 int
)

// backend is a fake dtable-server (see internal/fakeserver).
type backend struct {
	name string
	srv  *httptest.Server
	fake *fakeserver.Server
}

// newBackend starts a fake server: lenient (serves everything), or strict
// (the server contract: serves only the buckets it was notified of, at
// their epochs). wrap, if not nil, wraps its handler.
func newBackend(t *testing.T, name string, strict bool, wrap func(string, http.Handler) http.Handler) *backend {
	b := &backend{name: name, fake: fakeserver.New(fakeserver.Config{Name: name, Strict: strict, SaveDelay: 50 * time.Millisecond})}
	var h http.Handler = b.fake
	if wrap != nil {
		h = wrap(name, h)
	}
	b.srv = httptest.NewServer(h)
	t.Cleanup(b.srv.Close)
	return b
}

type env struct {
	t        *testing.T
	etcd     *etcdtest.Etcd
	cli      *clientv3.Client
	backends map[string]*backend
	tester   *caddytest.Tester
	extra    extraConfig
}

// extraConfig is more for a test: Caddyfile global options, lines in the
// proxy site besides dtable_bucket_proxy and in its block, and strict
// backends (optionally wrapped).
type extraConfig struct {
	global, proxySite, proxyBlock string
	adminBlock                    string     // lines in the dtable_cluster_admin block
	lbTry                         string     // lb_try_duration of the proxy; default 500ms
	adminEtcd                     string     // where the admin site finds etcd; default the etcd line of the proxy site
	beforeLoad                    func(*env) // runs once etcd runs, before Caddy loads the config
	strict                        bool
	wrap                          func(node string, h http.Handler) http.Handler
}

// setup starts etcd, three backends registered as n1..n3 (n3's
// local_node_url has a path prefix), an assignment (bucket b -> n(b%3+1)),
// and loads a Caddy config with the proxy and admin sites.
func setup(t *testing.T) *env { return setupWith(t, extraConfig{}) }

// setupWith is setup with more Caddyfile.
func setupWith(t *testing.T, extra extraConfig) *env {
	portsOnce.Do(func() {
		p := testutil.FreePorts(t, 5) // distinct (separate FreePort calls may repeat a port)
		adminPort, proxyPort, siteAdminPort, httpPort, httpsPort = p[0], p[1], p[2], p[3], p[4]
	})
	watchProgressInterval = 200 * time.Millisecond
	e := &env{t: t, etcd: etcdtest.Start(t), backends: map[string]*backend{}, extra: extra}
	e.cli = e.etcd.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		e.backends[n] = newBackend(t, n, extra.strict, extra.wrap)
		local := e.backends[n].srv.URL + "/"
		if n == "n3" {
			local = e.backends[n].srv.URL + "/n3prefix/"
		}
		e.put(layout.NodeKey(n), schema.Node{NodeID: n, NodeURL: "https://" + n + ".example.com/", LocalNodeURL: local}.Encode())
	}
	e.putAssignment(1, nil)
	if extra.beforeLoad != nil {
		extra.beforeLoad(e)
	}
	e.load()
	return e
}

func (e *env) config() string {
	eps := strings.Join(e.etcd.Endpoints(), " ")
	return fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	https_port %d
	grace_period 1ns
	skip_install_trust
	auto_https off
%s
}
:%d {
	dtable_bucket_proxy {
		etcd %s
		lb_try_duration %s
%s
	}
%s
}
:%d {
	dtable_cluster_admin {
		%s
		request_timeout 1500ms
%s
	}
}
`, adminPort, httpPort, httpsPort, e.extra.global, proxyPort, eps, cmp.Or(e.extra.lbTry, "500ms"), e.extra.proxyBlock, e.extra.proxySite, siteAdminPort, cmp.Or(e.extra.adminEtcd, "etcd "+eps), e.extra.adminBlock)
}

func (e *env) load() {
	e.tester = caddytest.NewTester(e.t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort, LoadRequestTimeout: 20 * time.Second})
	e.tester.InitServer(e.config(), "caddyfile")
	// Unload the sites before etcd stops (cleanups run last-in first-out):
	// an open watch stream makes etcd's graceful stop wait seconds.
	e.t.Cleanup(func() {
		body := strings.NewReader(fmt.Sprintf(`{"admin":{"listen":"localhost:%d"}}`, adminPort))
		resp, err := http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "application/json", body)
		if err == nil {
			resp.Body.Close()
		}
	})
	e.waitVersion(1)
}

func (e *env) put(key string, value []byte) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.cli.Put(ctx, key, string(value)); err != nil {
		e.t.Fatal(err)
	}
}

// putAssignment writes bucket b -> n(b%3+1), with overrides.
func (e *env) putAssignment(version int64, override map[bucket.Bucket]string) {
	a := &schema.Assignment{Version: version}
	for b := range a.Owners {
		a.Owners[b] = fmt.Sprintf("n%d", b%3+1)
	}
	for b, n := range override {
		a.Owners[b] = n
	}
	e.put(layout.AssignmentKey(), a.Encode())
}

// waitVersion waits until the proxy routes by the given assignment version.
func (e *env) waitVersion(v int64) {
	e.t.Helper()
	testutil.Eventually(e.t, 10*time.Second, fmt.Sprintf("the proxy routes by assignment version %d", v), func() bool {
		return e.routedVersion() == v
	})
}

// waitVersionAtLeast waits until the proxy routes by version v or a later one.
func (e *env) waitVersionAtLeast(v int64) {
	e.t.Helper()
	testutil.Eventually(e.t, 10*time.Second, fmt.Sprintf("the proxy routes by assignment version %d or later", v), func() bool {
		return e.routedVersion() >= v
	})
}

// routedVersion is the assignment version the proxy routes by (-1: it
// does not follow this test's etcd).
func (e *env) routedVersion() int64 {
	var got int64 = -1
	forEachFollower(func(fw *follower) {
		if strings.Join(fw.endpoints, ",") == strings.Join(e.etcd.Endpoints(), ",") {
			got = fw.table.Load().version
		}
	})
	return got
}

// clusterLabels are the labels of the test cluster's follower metrics.
func (e *env) clusterLabels() string {
	return fmt.Sprintf(`etcd=%q,prefix="/dtable-cluster"`, strings.TrimPrefix(e.etcd.Endpoints()[0], "http://"))
}

func uuidIn(b bucket.Bucket) string {
	return fmt.Sprintf("%02x264e76-0e5a-448a-9f34-580b551364ca", uint8(b))
}

type answer struct {
	status int
	header http.Header
	body   map[string]string // the fake server's Answer, or an error body
	raw    string
}

func do(t *testing.T, method, url string, header map[string]string) answer {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	json.Unmarshal(raw, &a.body)
	return a
}

func proxyURL(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", proxyPort, path) }
func adminURL(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", siteAdminPort, path) }

func TestRoutesEveryBucketToItsOwner(t *testing.T) {
	setup(t)
	// Each bucket is asked for in one of these forms, in turn.
	forms := []struct {
		name string
		path func(uuid string) string
	}{
		{"dashed in the v1 API", func(u string) string { return "/api/v1/dtables/" + u + "/rows/?limit=5" }},
		{"hex in /dtables/", func(u string) string { return "/dtables/" + strings.ToUpper(strings.ReplaceAll(u, "-", "")) }},
		{"internal API", func(u string) string { return "/api/v1/internal/dtables/" + u + "/view-rows/" }},
		{"v2 API", func(u string) string { return "/api/v2/dtables/" + u + "/metadata/" }},
		{"socket.io query", func(u string) string { return "/socket.io/?EIO=4&dtable_uuid=" + u }},
	}
	for i, form := range forms {
		t.Run(form.name, func(t *testing.T) {
			for n := i; n < bucket.Count; n += len(forms) {
				b := bucket.Bucket(n)
				owner := fmt.Sprintf("n%d", n%3+1)
				p := form.path(uuidIn(b))
				a := do(t, "GET", proxyURL(p), map[string]string{contract.HeaderBucket: "zz", contract.HeaderVersion: "999"})
				if a.status != 200 || a.body["node"] != owner {
					t.Fatalf("%s: status %d, node %q; want %s (%s)", p, a.status, a.body["node"], owner, a.raw)
				}
				if a.body["bucket"] != b.String() || a.body["version"] != "1" {
					t.Fatalf("%s: fencing headers bucket=%q version=%q; want %s, 1", p, a.body["bucket"], a.body["version"], b)
				}
				wantPath := strings.SplitN(p, "?", 2)[0]
				if owner == "n3" {
					wantPath = "/n3prefix" + wantPath
				}
				if a.body["path"] != wantPath {
					t.Fatalf("%s: backend saw path %q; want %q", p, a.body["path"], wantPath)
				}
			}
		})
	}
}

func TestHostAndHeadersDoNotChooseTheUpstream(t *testing.T) {
	e := setup(t)
	// Bucket 00 is n1's; a request that claims n2's address as Host, or
	// uses the absolute form naming n2, still reaches n1.
	n2 := strings.TrimPrefix(e.backends["n2"].srv.URL, "http://")
	req, _ := http.NewRequest("GET", proxyURL("/dtables/"+uuidIn(0)), nil)
	req.Host = n2
	req.Header.Set("X-Forwarded-Host", n2)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var a fakeserver.Answer
	json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if a.Node != "n1" {
		t.Fatalf("Host %s steered the request to %q", n2, a.Node)
	}
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", proxyPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET http://%s/dtables/%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", n2, uuidIn(0), n2)
	raw, _ := io.ReadAll(conn)
	if !strings.Contains(string(raw), `"node":"n1"`) {
		t.Fatalf("absolute-form request naming n2 was not routed to n1:\n%s", raw)
	}
}

func TestReassignmentTakesEffectWithoutReload(t *testing.T) {
	e := setup(t)
	p := proxyURL("/api/v1/dtables/" + uuidIn(0x00) + "/rows/")
	if a := do(t, "GET", p, nil); a.body["node"] != "n1" {
		t.Fatalf("before: %v", a.body)
	}
	e.putAssignment(2, map[bucket.Bucket]string{0x00: "n2"})
	took := testutil.Eventually(t, 2*time.Second, "bucket 00 routed to n2 by assignment version 2", func() bool {
		a := do(t, "GET", p, nil)
		return a.body["node"] == "n2" && a.body["version"] == "2"
	})
	t.Logf("reassignment took effect in %v", took)
}

// putUnroutableAssignment writes assignment version 2: bucket b -> n(b%3+1)
// but bucket 01 unassigned and bucket 02 owned by ghost, which is not
// registered.
func (e *env) putUnroutableAssignment() {
	e.t.Helper()
	e.putAssignment(2, map[bucket.Bucket]string{0x01: "", 0x02: "ghost"})
	e.waitVersion(2)
}

// routingErrorCases are requests the proxy cannot route, with a
// putUnroutableAssignment.
var routingErrorCases = []struct {
	name, path      string
	status          int
	reason, bucket  string
	node            string   // {http.dtable_bucket.node}
	messageContains []string // the "error" of the JSON answer
}{
	{"malformed UUID in the path", "/api/v1/dtables/not-a-uuid/rows/", 400, "malformed_uuid", "", "",
		[]string{"path after /api/v1/dtables/: invalid base UUID \"not-a-uuid\": length 10"}},
	{"missing UUID", "/api/v1/dtables/", 400, "missing_uuid", "", "", []string{"missing base UUID"}},
	{"malformed UUID in the query", "/socket.io/?dtable_uuid=5g264e76-0e5a-448a-9f34-580b551364ca", 400, "malformed_uuid", "", "",
		[]string{"query parameter dtable_uuid: invalid base UUID"}},
	{"unassigned bucket", "/dtables/" + uuidIn(0x01), 503, "bucket_unassigned", "01", "", []string{"bucket 01"}},
	{"owner not registered", "/dtables/" + uuidIn(0x02), 503, "owner_not_registered", "02", "ghost", []string{"bucket 02", "its owner ghost"}},
}

// Without handle_errors, a routing error is answered in JSON, with
// Retry-After on a 503.
func TestErrorsSayWhatIsWrong(t *testing.T) {
	e := setup(t)
	e.putUnroutableAssignment()
	for _, tt := range routingErrorCases {
		t.Run(tt.name, func(t *testing.T) {
			a := do(t, "GET", proxyURL(tt.path), nil)
			if a.status != tt.status || a.header.Get("Content-Type") != "application/json" || a.body["reason"] != tt.reason ||
				a.body["bucket"] != tt.bucket {
				t.Errorf("%d %v %s; want %d, JSON with reason %s and bucket %q", a.status, a.header, a.raw, tt.status, tt.reason, tt.bucket)
			}
			for _, want := range tt.messageContains {
				if !strings.Contains(a.body["error"], want) {
					t.Errorf("error %q does not say %q", a.body["error"], want)
				}
			}
			if want := map[int]string{503: "5"}[tt.status]; a.header.Get("Retry-After") != want {
				t.Errorf("Retry-After %q; want %q", a.header.Get("Retry-After"), want)
			}
		})
	}
	// A request without a UUID goes to a registered node that owns buckets.
	t.Run("no UUID", func(t *testing.T) {
		r := do(t, "GET", proxyURL("/ping/"), map[string]string{contract.HeaderBucket: "7f"})
		if r.status != 200 || !strings.HasPrefix(r.body["node"], "n") || r.body["bucket"] != "" || r.body["version"] != "2" {
			t.Errorf("/ping/: %d %s", r.status, r.raw)
		}
	})
}

// With handle_errors, the site answers routing errors itself, seeing the
// status, the message and the placeholders; access logs see the
// placeholders through log_append, and Caddy's error log has the errors.
func TestHandleErrorsSeesThePlaceholders(t *testing.T) {
	dir := t.TempDir()
	accessLog, errorLog := filepath.Join(dir, "access.log"), filepath.Join(dir, "error.log")
	e := setupWith(t, extraConfig{
		global: fmt.Sprintf(`	log routing_errors {
		output file %s
		format json
		level DEBUG
		include http.log.error
	}`, errorLog),
		proxySite: fmt.Sprintf(`	log {
		output file %s
		format json
	}
	log_append bucket {http.dtable_bucket.bucket}
	log_append node {http.dtable_bucket.node}
	log_append reason {http.dtable_bucket.reason}
	handle_errors {
		respond "{http.error.status_code} {http.dtable_bucket.reason} {http.dtable_bucket.bucket} {http.dtable_bucket.node}: {http.error.message}"
	}`, accessLog),
	})
	e.putUnroutableAssignment()
	for _, tt := range routingErrorCases {
		t.Run(tt.name, func(t *testing.T) {
			a := do(t, "GET", proxyURL(tt.path), nil)
			prefix := fmt.Sprintf("%d %s %s %s: ", tt.status, tt.reason, tt.bucket, tt.node)
			if a.status != tt.status || !strings.HasPrefix(a.raw, prefix) || strings.Contains(a.header.Get("Content-Type"), "json") {
				t.Errorf("%d %v %q; want %d and a text body starting %q", a.status, a.header, a.raw, tt.status, prefix)
			}
			for _, want := range tt.messageContains {
				if !strings.Contains(a.raw, want) {
					t.Errorf("body %q does not say %q", a.raw, want)
				}
			}
			if want := map[int]string{503: "5"}[tt.status]; a.header.Get("Retry-After") != want {
				t.Errorf("Retry-After %q; want %q", a.header.Get("Retry-After"), want)
			}
		})
	}
	routed := do(t, "GET", proxyURL("/dtables/"+uuidIn(0x03)), nil)
	if routed.status != 200 || routed.body["node"] != "n1" {
		t.Fatalf("routed request: %d %s", routed.status, routed.raw)
	}

	t.Run("access log", func(t *testing.T) {
		want := map[string][3]string{"/dtables/" + uuidIn(0x03): {"03", "n1", ""}}
		for _, tt := range routingErrorCases {
			want[tt.path] = [3]string{tt.bucket, tt.node, tt.reason}
		}
		got := map[string][3]string{}
		testutil.Eventually(t, 5*time.Second, "an access log entry of every request", func() bool {
			for _, entry := range readJSONLines(t, accessLog) {
				var l struct {
					Request              struct{ URI string }
					Bucket, Node, Reason string
				}
				json.Unmarshal(entry, &l)
				got[l.Request.URI] = [3]string{l.Bucket, l.Node, l.Reason}
			}
			return len(got) >= len(want)
		})
		for uri, w := range want {
			if got[uri] != w {
				t.Errorf("%s: access log has bucket, node, reason %q; want %q", uri, got[uri], w)
			}
		}
	})
	t.Run("error log", func(t *testing.T) {
		testutil.Eventually(t, 5*time.Second, "the error log has the 503 of bucket 01", func() bool {
			for _, entry := range readJSONLines(t, errorLog) {
				var l struct {
					Logger, Msg string
					Status      int
				}
				json.Unmarshal(entry, &l)
				// http.log.error, or a sub-logger named after the site's access log
				if strings.HasPrefix(l.Logger, "http.log.error") && l.Status == 503 && strings.HasPrefix(l.Msg, "bucket 01: not assigned") {
					return true
				}
			}
			return false
		})
	})
}

// readJSONLines returns the lines of a JSON log file (none if it does not exist yet).
func readJSONLines(t *testing.T, file string) []json.RawMessage {
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var lines []json.RawMessage
	for _, l := range bytes.Split(data, []byte("\n")) {
		if json.Valid(l) {
			lines = append(lines, l)
		}
	}
	return lines
}

func dialWS(t *testing.T, b bucket.Bucket) *websocket.Conn {
	t.Helper()
	url := fmt.Sprintf("ws://127.0.0.1:%d/socket.io/?EIO=4&transport=websocket&dtable_uuid=%s", proxyPort, uuidIn(b))
	c, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", url, err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func echo(c *websocket.Conn, msg string) (string, error) {
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	c.SetWriteDeadline(time.Now().Add(3 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		return "", err
	}
	_, got, err := c.ReadMessage()
	return string(got), err
}

func TestWebSocketIsProxiedAndClosedWhenItsBucketMoves(t *testing.T) {
	e := setup(t)
	moving, staying := dialWS(t, 0x10), dialWS(t, 0x20) // owners n2 and n3
	if got, err := echo(moving, "hello"); err != nil || got != "n2:hello" {
		t.Fatalf("echo through proxy: %q %v", got, err)
	}
	if got, err := echo(staying, "hi"); err != nil || got != "n3:hi" {
		t.Fatalf("echo through proxy: %q %v", got, err)
	}
	e.putAssignment(2, map[bucket.Bucket]string{0x10: "n1"})
	e.waitVersion(2)
	moving.SetReadDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	if _, _, err := moving.ReadMessage(); err == nil {
		t.Fatal("the stream of the moved bucket is still open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the stream of the moved bucket was not closed within 3s")
	}
	t.Logf("stream of the moved bucket closed %v after the new table", time.Since(start))
	if got, err := echo(staying, "still"); err != nil || got != "n3:still" {
		t.Fatalf("the other bucket's stream was disturbed: %q %v", got, err)
	}
	// The client reconnects and reaches the new owner.
	again := dialWS(t, 0x10)
	if got, err := echo(again, "back"); err != nil || got != "n1:back" {
		t.Fatalf("after reconnect: %q %v", got, err)
	}
}

func TestEtcdOutageKeepsRoutingAndIsReported(t *testing.T) {
	e := setup(t)
	e.etcd.Stop(0)
	testutil.Eventually(t, 10*time.Second, "the admin status says etcd is not connected", func() bool {
		return strings.Contains(do(t, "GET", adminURL("/status"), nil).raw, `"etcd_connected": false`)
	})
	for i := range 30 {
		b := bucket.Bucket(i * 7)
		a := do(t, "GET", proxyURL("/dtables/"+uuidIn(b)), nil)
		if a.status != 200 || a.body["node"] != fmt.Sprintf("n%d", int(b)%3+1) {
			t.Fatalf("during the outage, bucket %s: %d %s", b, a.status, a.raw)
		}
	}
	m := do(t, "GET", fmt.Sprintf("http://localhost:%d/metrics", adminPort), nil)
	if !strings.Contains(m.raw, `caddy_dtable_etcd_connected{`+e.clusterLabels()+`} 0`) {
		t.Errorf("metrics do not show the outage:\n%s", grepLines(m.raw, "caddy_dtable"))
	}
	e.etcd.Restart(0)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestAdminSiteLookupNodesBucketsAndMetrics(t *testing.T) {
	e := setup(t)
	u := uuidIn(0x05) // n3
	a := do(t, "GET", adminURL("/lookup/"+u), nil)
	var l lookupResult
	json.Unmarshal([]byte(a.raw), &l)
	if a.status != 200 || l.Bucket != "05" || l.NodeID != "n3" || l.NodeURL != "https://n3.example.com/" ||
		l.LocalNodeURL != e.backends["n3"].srv.URL+"/n3prefix/" || l.Version != 1 {
		t.Fatalf("lookup: %d %s", a.status, a.raw)
	}
	if a := do(t, "GET", adminURL("/lookup/nope"), nil); a.status != 400 || !strings.Contains(a.raw, "invalid base UUID") {
		t.Fatalf("bad lookup: %d %s", a.status, a.raw)
	}
	var buckets []map[string]any
	b := do(t, "GET", adminURL("/buckets"), nil)
	if json.Unmarshal([]byte(b.raw), &buckets); len(buckets) != 256 || buckets[255]["node_id"] != "n1" {
		t.Fatalf("buckets: %d entries", len(buckets))
	}
	var nodes []map[string]any
	n := do(t, "GET", adminURL("/nodes"), nil)
	if json.Unmarshal([]byte(n.raw), &nodes); len(nodes) != 3 || nodes[0]["buckets"] != float64(86) || nodes[0]["state"] != "live" {
		t.Fatalf("nodes: %s", n.raw)
	}
	if a := do(t, "GET", adminURL("/rebalance/"), nil); a.status != 405 {
		t.Fatalf("GET /rebalance/: %d", a.status)
	}
	// None of the admin views is served on the proxy port.
	for _, p := range []string{"/lookup/" + u, "/buckets", "/nodes", "/status"} {
		t.Run("proxied on the proxy port: "+p, func(t *testing.T) {
			if a := do(t, "GET", proxyURL(p), nil); a.body["node"] == "" {
				t.Errorf("%s on the proxy port was not proxied: %s", p, a.raw)
			}
		})
	}
	// Caddy's admin API has the same views.
	api := do(t, "GET", fmt.Sprintf("http://localhost:%d/dtable-cluster/status", adminPort), nil)
	if api.status != 200 || !strings.Contains(api.raw, `"/dtable-cluster"`) || !strings.Contains(api.raw, `"version": 1`) {
		t.Fatalf("admin API: %d %s", api.status, api.raw)
	}
	// Metrics: requests by owner node, routing errors by reason, version.
	do(t, "GET", proxyURL("/dtables/"+u), nil)
	do(t, "GET", proxyURL("/dtables/xyz"), nil)
	m := do(t, "GET", fmt.Sprintf("http://localhost:%d/metrics", adminPort), nil)
	for _, want := range []string{`caddy_dtable_requests_total{node="n3"}`, `caddy_dtable_routing_errors_total{reason="malformed_uuid"}`,
		`caddy_dtable_assignment_version{` + e.clusterLabels() + `} 1`, `caddy_dtable_etcd_connected{` + e.clusterLabels() + `} 1`,
		`caddy_dtable_assignment_age_seconds`} {
		if !strings.Contains(m.raw, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m.raw, "caddy_dtable"))
		}
	}
	if strings.Contains(m.raw, u) {
		t.Error("a base UUID appears in the metrics")
	}
}

func TestReloadKeepsTheSharedFollower(t *testing.T) {
	e := setup(t)
	var before *follower
	forEachFollower(func(fw *follower) { before = fw })
	relists := before.watcher.Status().Relists
	e.tester.InitServer(strings.Replace(e.config(), "lb_try_duration 500ms", "lb_try_duration 600ms", 1), "caddyfile")
	count := 0
	forEachFollower(func(fw *follower) {
		count++
		if fw != before {
			t.Error("the reload started a new etcd client and watcher")
		}
	})
	if count != 1 || before.watcher.Status().Relists != relists {
		t.Fatalf("%d followers after reload; relists %d -> %d", count, relists, before.watcher.Status().Relists)
	}
	if a := do(t, "GET", proxyURL("/dtables/"+uuidIn(0)), nil); a.body["node"] != "n1" {
		t.Fatalf("after reload: %s", a.raw)
	}
}

// buildMonitor builds the monitor program for the rebalance test.
func buildMonitor(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "monitor")
	if out, err := exec.Command("go", "build", "-o", bin, "../monitor").CombinedOutput(); err != nil {
		t.Fatalf("build monitor: %v\n%s", err, out)
	}
	return bin
}

func TestRebalanceThroughTheAdminSite(t *testing.T) {
	e := setup(t)
	// Without a monitor: a clear 503 after request_timeout.
	a := do(t, "POST", adminURL("/rebalance/"), nil)
	if a.status != 503 || !strings.Contains(a.body["error"], "no monitor is running") {
		t.Fatalf("rebalance without a monitor: %d %s", a.status, a.raw)
	}
	// Unbalance: n1 owns everything but 10 buckets.
	over := map[bucket.Bucket]string{}
	for b := range bucket.Count {
		over[bucket.Bucket(b)] = "n1"
	}
	for b := range 10 {
		over[bucket.Bucket(b)] = []string{"n2", "n3"}[b%2]
	}
	e.putAssignment(2, over)
	e.waitVersion(2)
	mon := exec.Command(buildMonitor(t), "-etcd", strings.Join(e.etcd.Endpoints(), ","), "-settle", "0s", "-interval", "1s")
	mon.Stdout, mon.Stderr = io.Discard, io.Discard
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Process.Kill(); mon.Wait() })

	var dry, done struct {
		OK           bool                      `json:"ok"`
		DryRun       bool                      `json:"dry_run"`
		Version      int64                     `json:"version"`
		Moves        []map[string]string       `json:"moves"`
		MovesPerNode map[string]map[string]int `json:"moves_per_node"`
	}
	testutil.Eventually(t, 15*time.Second, "the starting monitor answers a dry run", func() bool {
		a = do(t, "POST", adminURL("/rebalance/?dry_run=1"), nil)
		return a.status == 200
	})
	json.Unmarshal([]byte(a.raw), &dry)
	// Minimal moves: n1 has 246 and must end with 86: 160 moves.
	if a.status != 200 || !dry.OK || !dry.DryRun || len(dry.Moves) != 160 || dry.Version != 2 {
		t.Fatalf("dry run: %d %s", a.status, a.raw)
	}
	a = do(t, "POST", adminURL("/rebalance/"), nil)
	json.Unmarshal([]byte(a.raw), &done)
	if a.status != 200 || !done.OK || done.DryRun || len(done.Moves) != 160 || done.Version != 3 || done.MovesPerNode["n1"]["lost"] != 160 {
		t.Fatalf("rebalance: %d %s", a.status, a.raw)
	}
	// The rebalance starts handoffs; the monitor goes on with them (the
	// throttle's queue, timeouts) and may write version 4 at once.
	e.waitVersionAtLeast(3)
	// The same path on the proxy port is proxied, not served.
	if p := do(t, "POST", proxyURL("/rebalance/"), nil); p.body["node"] == "" || strings.Contains(p.raw, "moves") {
		t.Fatalf("POST /rebalance/ on 5550 was served: %s", p.raw)
	}

}

// rawDo sends one request with the request target exactly as given (no
// client normalises it) and reads the answer.
func rawDo(t *testing.T, port int, method, target string, header map[string]string) answer {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\n", method, target)
	if _, ok := header["Host"]; !ok {
		fmt.Fprintf(&req, "Host: 127.0.0.1:%d\r\n", port)
	}
	for k, v := range header {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	req.WriteString("Connection: close\r\n\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	json.Unmarshal(raw, &a.body)
	return a
}
