package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

const pageToken = "page-s3cret"

// sseEvent is one server-sent event, or a comment (keep-alive).
type sseEvent struct {
	typ, data, comment string
}

// sseStream reads GET /events in the background.
type sseStream struct {
	resp   *http.Response
	events chan sseEvent
}

func openEvents(t *testing.T, authorization string) *sseStream {
	t.Helper()
	req, _ := http.NewRequest("GET", adminURL("/events"), nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	s := &sseStream{resp: resp, events: make(chan sseEvent, 1024)}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		return s
	}
	go func() {
		defer close(s.events)
		r := bufio.NewReader(resp.Body)
		var ev sseEvent
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case line == "":
				s.events <- ev
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				ev.comment = strings.TrimSpace(line[1:])
			case strings.HasPrefix(line, "event: "):
				ev.typ = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				ev.data += line[len("data: "):]
			}
		}
	}()
	return s
}

// next returns the next event satisfying ok, failing after d.
func (s *sseStream) next(t *testing.T, d time.Duration, what string, ok func(sseEvent) bool) sseEvent {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case ev, open := <-s.events:
			if !open {
				t.Fatalf("the stream ended while waiting for %s", what)
			}
			if ok(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("not within %v: %s", d, what)
		}
	}
}

// nextState returns the next state event whose state satisfies ok.
func (s *sseStream) nextState(t *testing.T, d time.Duration, what string, ok func(*liveState) bool) *liveState {
	t.Helper()
	var st *liveState
	s.next(t, d, what, func(ev sseEvent) bool {
		if ev.typ != "state" {
			return false
		}
		st = new(liveState)
		if err := json.Unmarshal([]byte(ev.data), st); err != nil {
			t.Fatalf("state event: %v: %s", err, ev.data)
		}
		return ok(st)
	})
	return st
}

// follower of this test's etcd.
func (e *env) follower() *follower {
	var fw *follower
	forEachFollower(func(f *follower) {
		if strings.Join(f.endpoints, ",") == strings.Join(e.etcd.Endpoints(), ",") {
			fw = f
		}
	})
	if fw == nil {
		e.t.Fatal("no follower for this test's etcd")
	}
	return fw
}

// The page shell is served without the token and holds no cluster data;
// its live state needs the token, comes at once, follows every change
// within a second, is kept alive, and ends on disconnect and on reload.
func TestStatusPageShellAndEvents(t *testing.T) {
	old := sseKeepAlive
	oldLoadAge := loadCacheAge
	sseKeepAlive, loadCacheAge = 150*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { sseKeepAlive, loadCacheAge = old, oldLoadAge })
	e := setupWith(t, extraConfig{adminBlock: "\t\ttoken " + pageToken})

	for path, ctype := range map[string]string{"/": "text/html", "/assets/app.js": "text/javascript", "/assets/app.css": "text/css"} {
		a := do(t, "GET", adminURL(path), nil)
		if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), ctype) ||
			!strings.Contains(a.header.Get("Content-Security-Policy"), "default-src 'none'") || a.header.Get("X-Frame-Options") != "DENY" {
			t.Fatalf("GET %s without the token: %d %v", path, a.status, a.header)
		}
		for _, n := range []string{"n1", "n2", "n3", e.backends["n1"].srv.URL} {
			if strings.Contains(a.raw, n) {
				t.Fatalf("GET %s serves cluster data (%q) without the token", path, n)
			}
		}
	}
	if a := do(t, "GET", adminURL("/"), nil); !strings.Contains(a.raw, `src="assets/app.js"`) {
		t.Fatalf("the page does not load its script: %s", a.raw)
	}
	if a := do(t, "POST", adminURL("/"), nil); a.status != http.StatusMethodNotAllowed {
		t.Fatalf("POST /: %d", a.status)
	}
	for _, tt := range []struct{ method, path string }{{"GET", "/events"}, {"POST", "/drain/n1"}, {"POST", "/undrain/n1"}, {"GET", "/assets/other.js"}} {
		t.Run(tt.method+" "+tt.path+" without the token", func(t *testing.T) {
			if a := do(t, tt.method, adminURL(tt.path), nil); a.status != http.StatusUnauthorized {
				t.Fatalf("%s %s without the token: %d %s; want 401", tt.method, tt.path, a.status, a.raw)
			}
		})
	}

	fw := e.follower()
	start := time.Now()
	s := openEvents(t, "Bearer "+pageToken)
	if s.resp.StatusCode != 200 || s.resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /events: %d %v", s.resp.StatusCode, s.resp.Header)
	}
	st := s.nextState(t, 2*time.Second, "the first state", func(*liveState) bool { return true })
	t.Logf("first state after %v", time.Since(start).Round(time.Millisecond))
	if st.Version != 1 || len(st.Buckets) != bucket.Count || len(st.Nodes) != 3 || !st.EtcdConnected || st.Leader != "" {
		t.Fatalf("first state: version %d, %d buckets, %d nodes, connected %v, leader %q", st.Version, len(st.Buckets), len(st.Nodes), st.EtcdConnected, st.Leader)
	}
	for i, b := range st.Buckets {
		if want := fmt.Sprintf("n%d", i%3+1); b.Bucket.Bucket != bucket.Bucket(i).String() || b.NodeID != want || !b.Routable || b.Load != nil {
			t.Fatalf("bucket %d: %+v; want owner %s, routable, no load", i, b, want)
		}
	}
	for _, n := range st.Nodes {
		if n.State != "live" || n.LoadShare != nil || n.Buckets < 85 {
			t.Fatalf("node %+v", n)
		}
	}
	s.next(t, time.Second, "a keep-alive comment", func(ev sseEvent) bool { return ev.comment == "keep-alive" })

	// A move starts: it shows within a second, with its reason, in the
	// bucket and in the recent moves.
	a := &schema.Assignment{Version: 2}
	for b := range a.Owners {
		a.Owners[b] = fmt.Sprintf("n%d", b%3+1)
	}
	since := time.Now().Add(-time.Second).UTC().Truncate(time.Millisecond)
	a.Moving = map[bucket.Bucket]schema.MoveState{0x05: {From: "n3", To: "n1", Epoch: 2, Since: since, Reason: "rebalance"}}
	wrote := time.Now()
	e.put(layout.AssignmentKey(), a.Encode())
	st = s.nextState(t, time.Second, "version 2 within 1 s", func(st *liveState) bool { return st.Version == 2 })
	t.Logf("version 2 streamed %v after the write", time.Since(wrote).Round(time.Millisecond))
	if b := st.Buckets[0x05]; b.MovingTo != "n1" || b.MovingReason != "rebalance" || b.MovingSince == nil || !b.MovingSince.Equal(since) {
		t.Fatalf("moving bucket: %+v", b)
	}
	if len(st.RecentMoves) != 1 || st.RecentMoves[0] != (moveEvent{At: st.RecentMoves[0].At, Bucket: "05", Kind: moveStarted, From: "n3", To: "n1", Reason: "rebalance", Epoch: 2}) {
		t.Fatalf("recent moves: %+v", st.RecentMoves)
	}
	// It commits.
	a.Version, a.Owners[0x05], a.Epochs[0x05], a.Moving = 3, "n1", 3, nil
	e.put(layout.AssignmentKey(), a.Encode())
	st = s.nextState(t, time.Second, "version 3 within 1 s", func(st *liveState) bool { return st.Version == 3 })
	if m := st.RecentMoves[0]; m.Kind != moveCommitted || m.From != "n3" || m.To != "n1" || m.Reason != "rebalance" || m.Epoch != 3 || m.TookMS < 1000 {
		t.Fatalf("commit: %+v", st.RecentMoves)
	}
	if st.Buckets[0x05].NodeID != "n1" || st.Buckets[0x05].MovingTo != "" || st.Buckets[0x05].Epoch != 3 {
		t.Fatalf("bucket 05 after the commit: %+v", st.Buckets[0x05])
	}

	// Load reports (the proxies' keys under <prefix>/load/) show as each
	// bucket's score, summed over the proxies, and each node's share; an
	// invalid report is left out.
	report := func(proxy string, loads map[bucket.Bucket]schema.BucketLoad) []byte {
		return schema.LoadReport{Proxy: proxy, Interval: 30 * time.Second, At: time.Now(), Buckets: loads}.Encode()
	}
	e.put(layout.LoadKey("p1"), report("p1", map[bucket.Bucket]schema.BucketLoad{0x05: {Requests: 30, WebSockets: 5}, 0x07: {Requests: 5}}))
	e.put(layout.LoadKey("p2"), report("p2", map[bucket.Bucket]schema.BucketLoad{0x05: {WebSockets: 5}}))
	e.put(layout.LoadKey("p3"), []byte(`{"proxy":"p3","buckets":{"05":{"requests":-1}}}`))
	st = s.nextState(t, 3*time.Second, "the load reports", func(st *liveState) bool { return st.Buckets[0x05].Load != nil })
	if l := st.Buckets[0x05].Load; *l != 40 {
		t.Fatalf("bucket 05 load %v; want 40 (30 requests/s + 10 WebSockets over two proxies)", *l)
	}
	if l := st.Buckets[0x07].Load; l == nil || *l != 5 {
		t.Fatalf("bucket 07 load %v; want 5", l)
	}
	for _, n := range st.Nodes {
		want := map[string]float64{"n1": 40.0 / 45, "n2": 5.0 / 45, "n3": 0}[n.NodeID]
		if n.LoadShare == nil || math.Abs(*n.LoadShare-want) > 1e-9 {
			t.Fatalf("node %s load share %v; want %v", n.NodeID, deref(n.LoadShare), want)
		}
	}

	// A second viewer shares the state; one that leaves is forgotten.
	s2 := openEvents(t, "Bearer "+pageToken)
	s2.nextState(t, 2*time.Second, "the second viewer's first state", func(st *liveState) bool { return st.Version == 3 })
	testutil.Eventually(t, 2*time.Second, "two viewers", func() bool { return fw.live.viewerCount() == 2 })
	s2.resp.Body.Close()
	testutil.Eventually(t, 2*time.Second, "the viewer that left is gone", func() bool { return fw.live.viewerCount() == 1 })

	// A config reload (here: to a config without the site) ends the stream.
	body := strings.NewReader(fmt.Sprintf(`{"admin":{"listen":"localhost:%d"}}`, adminPort))
	resp, err := http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	ended := time.After(5 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-s.events:
		case <-ended:
			t.Fatal("the stream did not end on a config reload")
		}
	}
}

// A viewer that stops reading blocks neither the follower nor the other
// viewers, and is dropped once a write to it outlasts sseWriteTimeout.
func TestStatusEventsSlowViewerBlocksNobody(t *testing.T) {
	old := sseWriteTimeout
	sseWriteTimeout = time.Second
	t.Cleanup(func() { sseWriteTimeout = old })
	e := setup(t)
	fw := e.follower()

	slow, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", siteAdminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.(*net.TCPConn).SetReadBuffer(1024) // and it never reads
	fmt.Fprintf(slow, "GET /events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", siteAdminPort)
	testutil.Eventually(t, 2*time.Second, "the slow viewer connected", func() bool { return fw.live.viewerCount() == 1 })
	fast := openEvents(t, "")
	fast.nextState(t, 2*time.Second, "the first state", func(*liveState) bool { return true })

	// Many changes, each a state of some 25 kB: more than the slow
	// viewer's socket buffers hold.
	const last = 200
	start := time.Now()
	for v := int64(2); v <= last; v++ {
		e.putAssignment(v, map[bucket.Bucket]string{bucket.Bucket(v % bucket.Count): "n1"})
	}
	wrote := time.Now()
	t.Logf("%d assignments written in %v", last-1, wrote.Sub(start).Round(time.Millisecond))
	// (Matched as text: decoding each of the intermediate states would make
	// this reader the slow one.)
	fast.next(t, time.Second, fmt.Sprintf("version %d within 1 s of its write", last), func(ev sseEvent) bool {
		return ev.typ == "state" && strings.Contains(ev.data, fmt.Sprintf(`"version":%d,`, last))
	})
	t.Logf("the fast viewer saw version %d %v after its write", last, time.Since(wrote).Round(time.Millisecond))
	if v := e.routedVersion(); v != last {
		t.Fatalf("the proxy routes by version %d; want %d", v, last)
	}
	// The slow viewer gets only the latest state each time, so how many of
	// them it was sent, and whether its socket buffers (the sender's grows
	// up to 4 MB) are full yet, depends on timing: keep changing the state,
	// one more each poll, until its writes block past sseWriteTimeout.
	v := int64(last)
	took := testutil.Eventually(t, 10*time.Second, "the slow viewer dropped", func() bool {
		if fw.live.viewerCount() == 1 {
			return true
		}
		v++
		e.putAssignment(v, map[bucket.Bucket]string{bucket.Bucket(v % bucket.Count): "n1"})
		return false
	})
	t.Logf("the slow viewer dropped %v later, after %d more states", took.Round(time.Millisecond), v-last)
}

func deref(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}
