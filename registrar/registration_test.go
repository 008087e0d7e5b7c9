package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/leasedeadline"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

func testSettings(c *etcdtest.Etcd, id string, ttl time.Duration) *settings {
	s := &settings{
		node: schema.Node{NodeID: id, NodeURL: "https://" + id + ".example.com/", LocalNodeURL: "http://127.0.0.1:9/"},
		ttl:  ttl, layout: testLayout,
		notifyProtocol: 2, releaseTimeout: 10 * time.Second, shutdownTimeout: 10 * time.Second,
		fenceMargin: leasedeadline.DefaultMargin(ttl),
	}
	s.etcd.Endpoints = c.Endpoints()
	return s
}

// startRegistrar runs runRegistrar until the returned stop is called; stop
// returns its error.
func startRegistrar(t *testing.T, s *settings) (stop func() error) {
	t.Helper()
	stop, _ = startObservedRegistrar(t, s)
	return stop
}

// startObservedRegistrar is startRegistrar that also records the log.
func startObservedRegistrar(t *testing.T, s *settings) (stop func() error, logs *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core(), core))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- runRegistrar(ctx, s, log) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { stop() })
	return stop, logs
}

func TestRegistersAndWithdrawsOnStop(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	s := testSettings(c, "dtable-server-01", 5*time.Second)
	stop := startRegistrar(t, s)
	testutil.Eventually(t, 5*time.Second, "registered", func() bool { _, _, ok := getNode(t, cli, "dtable-server-01"); return ok })
	n, lease, _ := getNode(t, cli, "dtable-server-01")
	if !n.SameEndpoints(s.node) || lease == 0 || n.RegisteredAt == "" {
		t.Fatalf("registration = %+v lease %x", n, lease)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ttl, err := cli.TimeToLive(ctx, lease)
	if err != nil || ttl.GrantedTTL != 5 {
		t.Fatalf("lease TTL = %+v, %v; want 5s", ttl, err)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := getNode(t, cli, "dtable-server-01"); ok {
		t.Fatalf("key still there after a clean stop (%v)", time.Since(start))
	}
}

func TestRefusesToStartOnConflictingRegistration(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	other := schema.Node{NodeID: "dtable-server-01", NodeURL: "https://other.example.com/", LocalNodeURL: "http://10.1.1.1/"}
	lease, _ := cli.Grant(ctx, 60)
	if _, err := cli.Put(ctx, testLayout.NodeKey("dtable-server-01"), string(other.Encode()), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	s := testSettings(c, "dtable-server-01", 5*time.Second)
	errc := make(chan error, 1)
	go func() { errc <- runRegistrar(ctx, s, zap.NewNop()) }()
	select {
	case err := <-errc:
		if !errors.Is(err, errConflict) {
			t.Fatalf("error = %v; want a conflict", err)
		}
		for _, want := range []string{"https://other.example.com/", "http://10.1.1.1/", "https://dtable-server-01.example.com/", "within 6"} {
			if !strings.Contains(err.Error(), want) && !(want == "within 6" && strings.Contains(err.Error(), "within 5")) {
				t.Errorf("conflict message %q lacks %q", err, want)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("registrar did not refuse to start")
	}
	if n, _, _ := getNode(t, cli, "dtable-server-01"); !n.SameEndpoints(other) {
		t.Fatal("the other server's registration was overwritten")
	}
}

func TestTakesOverItsOwnStaleRegistration(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := testSettings(c, "n1", 5*time.Second)
	old, _ := cli.Grant(ctx, 60) // a previous run that was killed
	cli.Put(ctx, testLayout.NodeKey("n1"), string(s.node.Encode()), clientv3.WithLease(old.ID))
	startRegistrar(t, s)
	testutil.Eventually(t, 5*time.Second, "taken over with a new lease", func() bool {
		_, lease, ok := getNode(t, cli, "n1")
		return ok && lease != old.ID
	})
	// The old lease expiring or being revoked no longer removes the key.
	cli.Revoke(ctx, old.ID)
	if _, _, ok := getNode(t, cli, "n1"); !ok {
		t.Fatal("revoking the old lease removed the new registration")
	}
}

// TestRegistersAgainWhenLost: losing the lease (its session's Done) leads
// to a new registration under a new lease; losing the key to a re-write
// under the same lease.
func TestRegistersAgainWhenLost(t *testing.T) {
	cases := []struct {
		name string
		// lose does it to the registration under lease.
		lose func(ctx context.Context, t *testing.T, cli *clientv3.Client, lease clientv3.LeaseID)
		// want is the lease the registration must then carry.
		want    func(now, before clientv3.LeaseID) bool
		wantLog string // "" = not checked
	}{
		{"lease revoked (the key vanishes with it)", func(ctx context.Context, t *testing.T, cli *clientv3.Client, lease clientv3.LeaseID) {
			if _, err := cli.Revoke(ctx, lease); err != nil {
				t.Fatal(err)
			}
		}, func(now, before clientv3.LeaseID) bool { return now != 0 && now != before }, ""},
		// The key is first re-written without a lease (same value: the
		// watcher sees nothing to repair), so only the session's Done
		// tells that the lease is gone.
		{"lease revoked, key kept", func(ctx context.Context, t *testing.T, cli *clientv3.Client, lease clientv3.LeaseID) {
			n, _, _ := getNode(t, cli, "n1")
			if _, err := cli.Put(ctx, testLayout.NodeKey("n1"), string(n.Encode())); err != nil {
				t.Fatal(err)
			}
			if _, err := cli.Revoke(ctx, lease); err != nil {
				t.Fatal(err)
			}
			if _, l, ok := getNode(t, cli, "n1"); !ok || l != 0 {
				t.Fatalf("key after the revoke: present %v, lease %x; want present without lease", ok, l)
			}
		}, func(now, before clientv3.LeaseID) bool { return now != 0 && now != before }, "lease lost"},
		{"key deleted by hand", func(ctx context.Context, t *testing.T, cli *clientv3.Client, _ clientv3.LeaseID) {
			if _, err := cli.Delete(ctx, testLayout.NodeKey("n1")); err != nil {
				t.Fatal(err)
			}
		}, func(now, before clientv3.LeaseID) bool { return now == before }, "writing it again"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			_, logs := startObservedRegistrar(t, testSettings(c, "n1", 5*time.Second))
			var lease clientv3.LeaseID
			testutil.Eventually(t, 5*time.Second, "registered", func() bool { _, l, ok := getNode(t, cli, "n1"); lease = l; return ok })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tc.lose(ctx, t, cli, lease)
			took := testutil.Eventually(t, 5*time.Second, "registered again", func() bool {
				_, l, ok := getNode(t, cli, "n1")
				return ok && tc.want(l, lease)
			})
			t.Logf("registered again %v later (TTL 5s)", took)
			if tc.wantLog != "" && logs.FilterMessageSnippet(tc.wantLog).Len() == 0 {
				t.Errorf("no log says %q; logged %v", tc.wantLog, logs.All())
			}
		})
	}
}

func TestRegistersAgainAfterEtcdOutageLongerThanTTL(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	_, logs := startObservedRegistrar(t, testSettings(c, "n1", 2*time.Second))
	var lease clientv3.LeaseID
	testutil.Eventually(t, 5*time.Second, "registered", func() bool { _, l, ok := getNode(t, cli, "n1"); lease = l; return ok })
	c.Stop(0)
	time.Sleep(4 * time.Second) // longer than the TTL: the keep-alive gives up
	if logs.FilterMessageSnippet("lease lost").Len() == 0 {
		t.Errorf("the session did not report the lease lost during an outage longer than the TTL; logged %v", logs.All())
	}
	c.Restart(0)
	testutil.Eventually(t, 15*time.Second, "registered again after the outage",
		registeredWith(t, cli, "n1", func(l clientv3.LeaseID) bool { return l != lease }))
	// And it stays registered (its new lease is kept alive) for longer than a TTL.
	time.Sleep(3 * time.Second)
	if _, _, ok := getNode(t, cli, "n1"); !ok {
		t.Fatal("registration vanished after re-registering")
	}
}

func TestThreeMemberClusterLosesOneMember(t *testing.T) {
	c := etcdtest.StartMembers(t, 3)
	cli := c.ClientOf(t, c.Members[2].ClientURL)
	startRegistrar(t, testSettings(c, "n1", 2*time.Second))
	var lease clientv3.LeaseID
	testutil.Eventually(t, 10*time.Second, "registered", func() bool { _, l, ok := getNode(t, cli, "n1"); lease = l; return ok })
	c.Stop(0)
	c.WaitLeader(t)
	time.Sleep(3 * time.Second) // more than a TTL
	_, l, ok := getNode(t, cli, "n1")
	if !ok {
		t.Fatal("registration lost with one of three members down")
	}
	if l != lease {
		t.Logf("re-registered with a new lease during the member loss (allowed)")
	}
}

func TestHealthGate(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	var up atomic.Bool
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ping/" || !up.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("pong"))
	}))
	defer backend.Close()
	s := testSettings(c, "n1", 5*time.Second)
	s.node.LocalNodeURL = backend.URL + "/"
	s.health = healthSettings{path: "/ping/", interval: 50 * time.Millisecond, timeout: time.Second, failures: 2}
	startRegistrar(t, s)

	time.Sleep(300 * time.Millisecond)
	if _, _, ok := getNode(t, cli, "n1"); ok {
		t.Fatal("registered while the local server does not answer")
	}
	up.Store(true)
	testutil.Eventually(t, 5*time.Second, "registered once healthy", func() bool { _, _, ok := getNode(t, cli, "n1"); return ok })
	up.Store(false)
	testutil.Eventually(t, 5*time.Second, "withdrawn when unhealthy", func() bool { _, _, ok := getNode(t, cli, "n1"); return !ok })
	up.Store(true)
	testutil.Eventually(t, 5*time.Second, "registered again", func() bool { _, _, ok := getNode(t, cli, "n1"); return ok })
}

func TestNotifiesTheLatestStateWithRetries(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	var mu sync.Mutex
	var got []notification
	var calls atomic.Int32
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1)%3 == 1 { // every third attempt fails: retried
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		var n notification
		if err := json.NewDecoder(r.Body).Decode(&n); err != nil || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("bad notification: %v", err)
		}
		mu.Lock()
		got = append(got, n)
		mu.Unlock()
	}))
	defer receiver.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	put := func(a *schema.Assignment) {
		if _, err := cli.Put(ctx, testLayout.AssignmentKey(), string(a.Encode())); err != nil {
			t.Fatal(err)
		}
	}
	a := &schema.Assignment{Version: 1}
	for b := range a.Owners {
		a.Owners[b] = "n2"
	}
	a.Owners[0x10] = "n1"
	put(a)

	s := testSettings(c, "n1", 5*time.Second)
	s.notifyURL = receiver.URL + "/cluster-notify"
	s.notifyProtocol = 1 // the assignment changes only, one by one
	startRegistrar(t, s)
	// The first notification reports the state the registrar first sees;
	// the changes below must come after it to be notified one by one.
	testutil.Eventually(t, 15*time.Second, "first notification", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 1 })

	a2 := a.Clone()
	a2.Version = 2
	a2.Owners[0x11], a2.Owners[0xff] = "n1", "n1"
	put(a2)
	a3 := a2.Clone()
	a3.Version = 3
	a3.Owners[0x10] = "n2"
	put(a3)
	a4 := a3.Clone() // a change that does not concern n1 is still notified
	a4.Version = 4
	a4.Owners[0x20] = "n3"
	put(a4)

	// The server gets the latest state each time, with gained and lost
	// counted from the last state it accepted: every accepted notification
	// follows the one before, and applying them in order gives each one's
	// buckets. Failed attempts are retried with the latest state, so a
	// version may be skipped, but the last one (4) always arrives.
	testutil.Eventually(t, 15*time.Second, "version 4 notified", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && got[len(got)-1].Version == 4
	})
	mu.Lock()
	defer mu.Unlock()
	held := map[string]bool{}
	var prev int64
	for i, g := range got {
		if g.PreviousVersion != prev || g.NodeID != "n1" {
			t.Fatalf("notification %d: %+v follows version %d", i, g, prev)
		}
		for _, b := range g.Gained {
			held[b] = true
		}
		for _, b := range g.Lost {
			delete(held, b)
		}
		if len(held) != len(g.Buckets) {
			t.Fatalf("notification %d: gained/lost give %v, buckets %v", i, held, g.Buckets)
		}
		for _, b := range g.Buckets {
			if !held[b] {
				t.Fatalf("notification %d: gained/lost give %v, buckets %v", i, held, g.Buckets)
			}
		}
		prev = g.Version
	}
	if last := got[len(got)-1]; strings.Join(last.Buckets, ",") != "11,ff" {
		t.Fatalf("last notification %+v", last)
	}
	if int(calls.Load()) <= len(got) {
		t.Errorf("%d calls for %d notifications: failed attempts were not retried", calls.Load(), len(got))
	}
}

// A server that refuses one notification for good (a 4xx) does not block
// the later ones: the next state is sent, counted from the last accepted.
func TestRefusedNotificationDoesNotBlockLaterOnes(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	var mu sync.Mutex
	var got []notification
	var refusedV2 atomic.Int32
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n notification
		json.NewDecoder(r.Body).Decode(&n)
		if n.Version == 2 {
			refusedV2.Add(1)
			http.Error(w, "no", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, n)
		mu.Unlock()
	}))
	defer receiver.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	put := func(v int64, n1 ...int) {
		a := &schema.Assignment{Version: v}
		for b := range a.Owners {
			a.Owners[b] = "n2"
		}
		for _, b := range n1 {
			a.Owners[b] = "n1"
		}
		if _, err := cli.Put(ctx, testLayout.AssignmentKey(), string(a.Encode())); err != nil {
			t.Fatal(err)
		}
	}
	put(1, 0x10)
	s := testSettings(c, "n1", 5*time.Second)
	s.notifyURL, s.notifyProtocol = receiver.URL, 1
	startRegistrar(t, s)
	testutil.Eventually(t, 10*time.Second, "version 1 notified", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	put(2, 0x10, 0x11)
	testutil.Eventually(t, 10*time.Second, "version 2 refused twice", func() bool { return refusedV2.Load() >= 2 })
	put(3, 0x11, 0x12)
	testutil.Eventually(t, 10*time.Second, "version 3 notified", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 })
	mu.Lock()
	defer mu.Unlock()
	g := got[1]
	if g.Version != 3 || g.PreviousVersion != 1 || strings.Join(g.Gained, ",") != "11,12" || strings.Join(g.Lost, ",") != "10" {
		t.Fatalf("after the refusal: %+v", g)
	}
}

// When the registration is deleted and another server registers the same
// node_id before this registrar writes its own back, the registrar does not
// overwrite it: it stops with a conflict.
func TestRewriteDoesNotOverwriteAnotherServer(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	s := testSettings(c, "n1", 5*time.Second)
	other := schema.Node{NodeID: "n1", NodeURL: "https://other.example.com/", LocalNodeURL: "http://127.0.0.1:8/"}
	testHookBeforeRewrite = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, testLayout.NodeKey("n1"), string(other.Encode())); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookBeforeRewrite = nil }()
	stop := startRegistrar(t, s)
	testutil.Eventually(t, 5*time.Second, "registered", func() bool { _, _, ok := getNode(t, cli, "n1"); return ok })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, testLayout.NodeKey("n1")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the other server's registration stays", func() bool {
		n, _, ok := getNode(t, cli, "n1")
		return ok && n.SameEndpoints(other)
	})
	time.Sleep(500 * time.Millisecond)
	if n, _, _ := getNode(t, cli, "n1"); !n.SameEndpoints(other) {
		t.Fatalf("the registrar overwrote another server's registration: %+v", n)
	}
	if err := stop(); !errors.Is(err, errConflict) {
		t.Fatalf("stop: %v, want a conflict", err)
	}
}
