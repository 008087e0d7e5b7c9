// Package e2e runs whole clusters on this machine, to prove the handoff
// end to end: real etcd (embedded), real Caddy with the module (caddytest),
// registrar and monitor processes built from this tree, and stand-in
// servers (internal/fakeserver, strict: they follow the server contract
// and log every hold and every request they serve). Every test asserts
// from the servers' logs that no bucket was held or served by two servers
// at overlapping instants.
package e2e

import (
	"context"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	clientv3 "go.etcd.io/etcd/client/v3"

	_ "github.com/dtablecluster/dtable-router/caddymodule"
	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

var layout = schema.Layout{Prefix: schema.DefaultPrefix}

// binaries are built once per test run.
var (
	buildOnce                sync.Once
	registrarBin, monitorBin string
	buildErr                 error
	binDir                   string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func build(t *testing.T) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "e2e-bin-")
		if buildErr != nil {
			return
		}
		registrarBin, monitorBin = filepath.Join(binDir, "registrar"), filepath.Join(binDir, "monitor")
		for bin, pkg := range map[string]string{registrarBin: "../../registrar", monitorBin: "../../monitor"} {
			if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// ttl is the registrars' lease TTL in these tests: short, so that a crash
// is seen quickly.
const ttl = 3 * time.Second

// saveDelay is how long a stand-in takes to save a dirty bucket on a
// release in the handoff tests: a few hundred ms, as the issue asks, so
// that a handoff is slow enough for the proxy to hold requests.
const saveDelay = 300 * time.Millisecond

// The one Caddy of this test binary (caddytest) listens on these.
var (
	portsOnce                      sync.Once
	adminPort, proxyPort, httpPort int
)

type cluster struct {
	t       *testing.T
	etcd    *etcdtest.Etcd
	cli     *clientv3.Client
	servers map[string]*server
	mons    map[string]*testutil.Process
	// handoffs records, per committed move seen in etcd, the time from
	// its start to its commit.
	handoffs struct {
		mu   sync.Mutex
		took []time.Duration
	}
}

// server is one stand-in dtable-server and its registrar.
type server struct {
	name  string
	fake  *fakeserver.Server
	http  *httptest.Server
	relay *relay // the registrar's way to etcd, which a test can cut
	reg   *testutil.Process
}

type options struct {
	servers  int
	save     time.Duration // each server's save delay
	refuse   map[string]bool
	monitors int
	monArgs  []string
	// proxyBlock is more lines in the dtable_bucket_proxy block.
	proxyBlock string
}

func newCluster(t *testing.T, o options) *cluster {
	build(t)
	portsOnce.Do(func() {
		adminPort, proxyPort, httpPort = testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	})
	c := &cluster{t: t, etcd: etcdtest.Start(t), servers: map[string]*server{}, mons: map[string]*testutil.Process{}}
	c.cli = c.etcd.Client(t)
	for i := 1; i <= o.servers; i++ {
		name := fmt.Sprintf("s%d", i)
		s := &server{name: name, fake: fakeserver.New(fakeserver.Config{Name: name, Strict: true, SaveDelay: o.save, RefuseRelease: o.refuse[name]})}
		s.http = httptest.NewServer(s.fake)
		t.Cleanup(s.http.Close)
		s.relay = newRelay(t, strings.TrimPrefix(c.etcd.Endpoints()[0], "http://"))
		c.servers[name] = s
		c.startRegistrar(s)
	}
	for i := 0; i < o.monitors; i++ {
		name := fmt.Sprintf("mon-%c", 'a'+i)
		args := append([]string{"-etcd", strings.Join(c.etcd.Endpoints(), ","), "-id", name, "-settle", "1s",
			"-interval", "500ms", "-session-ttl", "2s"}, o.monArgs...)
		c.mons[name] = testutil.StartProcess(t, name, monitorBin, nil, args...)
	}
	c.loadCaddy(o.proxyBlock)
	c.followHandoffs()
	testutil.Eventually(t, 20*time.Second, "every bucket assigned and held by its owner", func() bool {
		a := c.assignment()
		if a == nil || len(a.Owned("")) != 0 {
			return false
		}
		for _, s := range c.servers {
			if len(s.fake.Held()) != len(a.Owned(s.name)) {
				return false
			}
		}
		return true
	})
	// The proxy follows etcd on its own: a load started now must not race
	// its first routing table (a 503 no_assignment would count as failed).
	testutil.Eventually(t, 10*time.Second, "the proxy routes every bucket to its owner", func() bool {
		for b := range bucket.Count {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(bucket.Bucket(b))))
			if err != nil {
				return false
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
		}
		return true
	})
	return c
}

func (c *cluster) startRegistrar(s *server) {
	s.reg = testutil.StartProcess(c.t, "registrar-"+s.name, registrarBin, nil,
		"-etcd", s.relay.addr, "-node-id", s.name, "-node-url", "https://"+s.name+".example.com/",
		"-local-node-url", s.http.URL+"/", "-notify-url", s.http.URL+fakeserver.NotifyPath,
		"-ttl", ttl.String(), "-shutdown-timeout", "30s", "-release-timeout", "10s")
}

func (c *cluster) loadCaddy(proxyBlock string) {
	eps := strings.Join(c.etcd.Endpoints(), " ")
	cfg := fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	grace_period 1ns
	skip_install_trust
	auto_https off
}
:%d {
	dtable_bucket_proxy {
		etcd %s
		lb_try_duration 2s
%s
	}
}
`, adminPort, httpPort, proxyPort, eps, proxyBlock)
	tester := caddytest.NewTester(c.t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort, LoadRequestTimeout: 20 * time.Second})
	tester.InitServer(cfg, "caddyfile")
	c.t.Cleanup(func() { // unload before etcd stops
		body := strings.NewReader(fmt.Sprintf(`{"admin":{"listen":"localhost:%d"}}`, adminPort))
		if resp, err := http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "application/json", body); err == nil {
			resp.Body.Close()
		}
	})
}

// followHandoffs watches the assignment and records each committed move.
func (c *cluster) followHandoffs() {
	ctx, cancel := context.WithCancel(context.Background())
	c.t.Cleanup(cancel)
	wch := c.cli.Watch(ctx, layout.AssignmentKey())
	go func() {
		started := map[bucket.Bucket]time.Time{}
		var prev *schema.Assignment
		for wr := range wch {
			for _, ev := range wr.Events {
				a, err := schema.ParseAssignment(ev.Kv.Value)
				if err != nil {
					continue
				}
				now := time.Now()
				for b, m := range a.Moving {
					if _, ok := started[b]; !ok {
						started[b] = m.Since
					}
				}
				for b, since := range started {
					if _, still := a.Moving[b]; still {
						continue
					}
					if prev != nil && prev.Owners[b] != a.Owners[b] {
						c.handoffs.mu.Lock()
						c.handoffs.took = append(c.handoffs.took, now.Sub(since))
						c.handoffs.mu.Unlock()
					}
					delete(started, b)
				}
				prev = a
			}
		}
	}()
}

func (c *cluster) assignment() *schema.Assignment {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.cli.Get(ctx, layout.AssignmentKey())
	if err != nil || len(resp.Kvs) == 0 {
		return nil
	}
	a, err := schema.ParseAssignment(resp.Kvs[0].Value)
	if err != nil {
		return nil
	}
	return a
}

func (c *cluster) waitAssignment(what string, d time.Duration, cond func(*schema.Assignment) bool) *schema.Assignment {
	c.t.Helper()
	var a *schema.Assignment
	testutil.Eventually(c.t, d, what, func() bool { a = c.assignment(); return a != nil && cond(a) })
	return a
}

func settled(a *schema.Assignment) bool { return len(a.Moving) == 0 && len(a.Queued) == 0 }

// checkNoOverlap fails the test if any bucket was held or served by two
// servers at overlapping instants.
func (c *cluster) checkNoOverlap() {
	c.t.Helper()
	var logs [][]fakeserver.Interval
	holds, serves := 0, 0
	for _, s := range c.servers {
		l := s.fake.Log()
		logs = append(logs, l)
		for _, iv := range l {
			switch iv.Kind {
			case "hold":
				holds++
			case "serve":
				serves++
			}
		}
	}
	if bad := fakeserver.Overlaps(logs...); len(bad) > 0 {
		c.t.Fatalf("%d overlaps (a bucket on two servers at once):\n%s", len(bad), strings.Join(bad[:min(len(bad), 20)], "\n"))
	}
	c.t.Logf("no overlap in %d holds and %d served requests", holds, serves)
}

// uuidOf is a base UUID in bucket b.
func uuidOf(b bucket.Bucket) string { return fmt.Sprintf("%s000000-0000-4000-8000-000000000000", b) }

// load sends requests for every bucket through the proxy until stop is
// closed, from workers goroutines, and counts the failures (any answer
// but 200, or a transport error), in all and per bucket. It is bounded by
// max requests; the stop func fails the test if the load reached max
// before it was stopped (the test was then not under load throughout).
// GETs and POSTs alternate, so every bucket gets dirty.
type load struct {
	sent, failed atomic.Int64
	failedBy     [bucket.Count]atomic.Int64
	slowest      [bucket.Count]atomic.Int64 // per bucket, the longest request's nanoseconds
	mu           sync.Mutex
	failures     []string
	done         chan struct{}
}

func startLoad(t *testing.T, workers int, max int64) (*load, func()) {
	l := &load{done: make(chan struct{})}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 30 * time.Second}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i += workers {
				select {
				case <-stop:
					return
				default:
				}
				if l.sent.Load() >= max {
					return
				}
				b := bucket.Bucket(i % bucket.Count)
				method := []string{"GET", "POST"}[i/bucket.Count%2]
				req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(b)), strings.NewReader("x"))
				l.sent.Add(1)
				start := time.Now()
				resp, err := client.Do(req)
				var body []byte // a failure's answer names its reason
				if err == nil {
					body, _ = io.ReadAll(io.LimitReader(resp.Body, 200))
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				took := int64(time.Since(start))
				for prev := l.slowest[b].Load(); took > prev && !l.slowest[b].CompareAndSwap(prev, took); prev = l.slowest[b].Load() {
				}
				if err != nil || resp.StatusCode != 200 {
					l.failed.Add(1)
					l.failedBy[b].Add(1)
					l.mu.Lock()
					if len(l.failures) < 10 {
						msg := fmt.Sprint(err)
						if err == nil {
							msg = fmt.Sprintf("%s %s: %d %s", method, b, resp.StatusCode, strings.TrimSpace(string(body)))
						}
						l.failures = append(l.failures, time.Now().Format("15:04:05.000")+" "+msg)
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l, func() {
		t.Helper()
		close(stop)
		<-l.done
		if n := l.sent.Load(); n >= max {
			t.Errorf("the load stopped on its own after its max of %d requests (sent %d), before the test stopped it: not under load throughout", max, n)
		}
	}
}

func (l *load) report(t *testing.T) {
	t.Helper()
	l.reportExcept(t, nil)
}

// reportExcept fails the test if any request failed but those for the
// excused buckets, whose failures it only counts (a crashed server's
// buckets, while no one may serve them).
func (l *load) reportExcept(t *testing.T, excused []bucket.Bucket) {
	t.Helper()
	excusedFailed := int64(0)
	for _, b := range excused {
		excusedFailed += l.failedBy[b].Load()
	}
	failed := l.failed.Load() - excusedFailed
	t.Logf("load: %d requests, %d failed (%d of them for the %d buckets allowed to fail)", l.sent.Load(), l.failed.Load(), excusedFailed, len(excused))
	if failed == 0 && excusedFailed > 0 {
		l.mu.Lock()
		t.Logf("first failures: %v", l.failures)
		l.mu.Unlock()
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", failed, l.sent.Load(), l.failures)
	}
}

// keyEvent is one change under the prefix, as a watch delivered it.
type keyEvent struct {
	key     string
	rev     int64
	at      time.Time // when the watch delivered it: within ms of the write
	deleted bool
	value   []byte
}

// keyLog records every change under the prefix from its start on, so a
// test can order what etcd did (revisions) and time it.
type keyLog struct {
	mu     sync.Mutex
	events []keyEvent
	// start is the assignment key as it was when the log started (key
	// empty if there was none); at is when it was read, not written.
	start keyEvent
}

func (c *cluster) recordKeys() *keyLog {
	ctx, cancel := context.WithCancel(context.Background())
	c.t.Cleanup(cancel)
	resp, err := c.cli.Get(ctx, layout.AssignmentKey())
	if err != nil {
		c.t.Fatal(err)
	}
	l := &keyLog{}
	if len(resp.Kvs) == 1 {
		kv := resp.Kvs[0]
		l.start = keyEvent{key: string(kv.Key), rev: kv.ModRevision, at: time.Now(), value: kv.Value}
	}
	wch := c.cli.Watch(ctx, layout.Prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		for wr := range wch {
			now := time.Now()
			l.mu.Lock()
			for _, ev := range wr.Events {
				l.events = append(l.events, keyEvent{key: string(ev.Kv.Key), rev: ev.Kv.ModRevision, at: now,
					deleted: ev.Type == clientv3.EventTypeDelete, value: ev.Kv.Value})
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// of returns the recorded events of one key, oldest first.
func (l *keyLog) of(key string) []keyEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []keyEvent
	for _, ev := range l.events {
		if ev.key == key {
			out = append(out, ev)
		}
	}
	return out
}

// deletion returns the delete event of key, once it has been seen.
func (l *keyLog) deletion(key string) (keyEvent, bool) {
	for _, ev := range l.of(key) {
		if ev.deleted {
			return ev, true
		}
	}
	return keyEvent{}, false
}

// assignments returns the recorded assignments, oldest first, with the
// events that wrote them.
func (l *keyLog) assignments() ([]*schema.Assignment, []keyEvent) {
	var as []*schema.Assignment
	var evs []keyEvent
	for _, ev := range l.of(layout.AssignmentKey()) {
		if a, err := schema.ParseAssignment(ev.value); err == nil && !ev.deleted {
			as, evs = append(as, a), append(evs, ev)
		}
	}
	return as, evs
}

// relay forwards TCP connections to target until cut.
type relay struct {
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
}

func newRelay(t *testing.T, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	go r.serve(ln)
	t.Cleanup(r.cut)
	return r
}

func (r *relay) serve(ln net.Listener) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", r.target)
		if err != nil {
			in.Close()
			continue
		}
		r.mu.Lock()
		r.conns[in], r.conns[out] = true, true
		r.mu.Unlock()
		go func() { io.Copy(out, in); out.Close() }()
		go func() { io.Copy(in, out); in.Close() }()
	}
}

// cut closes the listener and every connection: the registrar behind it
// is cut off from etcd while everything else goes on.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
	}
	r.conns = map[net.Conn]bool{}
}
