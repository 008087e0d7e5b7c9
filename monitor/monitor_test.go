package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

var layout = schema.Layout{Prefix: schema.DefaultPrefix}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// registerNode registers a node under its own lease, as a registrar would.
func registerNode(t *testing.T, cli *clientv3.Client, id string) clientv3.LeaseID {
	t.Helper()
	ctx := ctxT(t)
	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	n := schema.Node{NodeID: id, NodeURL: "https://" + id + ".example.com/", LocalNodeURL: "http://127.0.0.1:9/"}
	if _, err := cli.Put(ctx, layout.NodeKey(id), string(n.Encode()), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	return lease.ID
}

type testMonitor struct {
	m      *monitor
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// startMonitor runs a monitor with its own client and watcher.
func startMonitor(t *testing.T, c *etcdtest.Etcd, id string, log *zap.Logger, opts ...func(*monitor)) *testMonitor {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	if log == nil {
		log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	w := watch.New(watch.Config{Client: cli, Layout: layout, Logger: log})
	w.Start()
	tm := &testMonitor{cli: cli, done: make(chan struct{})}
	tm.m = &monitor{cli: cli, layout: layout, watcher: w, id: id, interval: 200 * time.Millisecond,
		settle: 0, sessionTTL: 2, log: log.With(zap.String("monitor", id))}
	for _, o := range opts {
		o(tm.m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tm.cancel = cancel
	go func() {
		defer close(tm.done)
		tm.m.run(ctx)
		w.Stop()
	}()
	t.Cleanup(tm.stop)
	return tm
}

// stop is a clean shutdown: the monitor resigns at once.
func (tm *testMonitor) stop() {
	tm.cancel()
	<-tm.done
	tm.cli.Close()
}

// crash cuts the monitor off etcd without a goodbye, as SIGKILL would: its
// session lease is not revoked and expires after its TTL.
func (tm *testMonitor) crash() {
	tm.cli.Close()
	tm.cancel()
	<-tm.done
}

func getAssignment(t *testing.T, cli *clientv3.Client) *schema.Assignment {
	t.Helper()
	resp, err := cli.Get(ctxT(t), layout.AssignmentKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	a, err := schema.ParseAssignment(resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("assignment in etcd is invalid: %v", err)
	}
	return a
}

// waitAssignment waits until a valid assignment satisfies cond (an
// invalid value counts as "not yet") and returns it and how long it took.
func waitAssignment(t *testing.T, cli *clientv3.Client, what string, cond func(*schema.Assignment) bool) (*schema.Assignment, time.Duration) {
	t.Helper()
	ctx := ctxT(t)
	var found *schema.Assignment
	took := testutil.Eventually(t, 15*time.Second, what, func() bool {
		resp, err := cli.Get(ctx, layout.AssignmentKey())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) > 0 {
			if a, err := schema.ParseAssignment(resp.Kvs[0].Value); err == nil && cond(a) {
				found = a
				return true
			}
		}
		return false
	})
	return found, took
}

func countsAre(a *schema.Assignment, want map[string]int) bool {
	c := a.Counts()
	if len(c) != len(want) {
		return false
	}
	for n, k := range want {
		if c[n] != k {
			return false
		}
	}
	return true
}

func updatedBy(a *schema.Assignment) string {
	var s string
	json.Unmarshal(a.Extra["updated_by"], &s)
	return s
}

func TestMonitorLifecycle(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	leases := map[string]clientv3.LeaseID{}
	for _, n := range []string{"n1", "n2", "n3"} {
		leases[n] = registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil)

	// All 256 buckets assigned, 86/85/85.
	first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool {
		return countsAre(a, map[string]int{"n1": 86, "n2": 85, "n3": 85})
	})
	if first.Version < 1 || updatedBy(first) != "mon-a" {
		t.Fatalf("first assignment version %d by %q", first.Version, updatedBy(first))
	}

	// A node's lease is revoked: only its buckets move, within 1s.
	if _, err := cli.Revoke(ctxT(t), leases["n2"]); err != nil {
		t.Fatal(err)
	}
	second, took := waitAssignment(t, cli, "n2's buckets moved", func(a *schema.Assignment) bool { return a.Version == first.Version+1 })
	t.Logf("buckets of a revoked node reassigned in %v", took)
	if took > time.Second {
		t.Errorf("took %v to move a dead node's buckets; want under 1s", took)
	}
	for _, mv := range ownerDiff(first, second) {
		if mv.From != "n2" {
			t.Fatalf("bucket %s moved from live %s", mv.Bucket, mv.From)
		}
	}
	if !countsAre(second, map[string]int{"n1": 128, "n3": 128}) {
		t.Fatalf("after n2 left: %v", second.Counts())
	}

	// It comes back: nothing moves.
	leases["n2"] = registerNode(t, cli, "n2")
	time.Sleep(1 * time.Second) // several reconcile intervals
	if a := getAssignment(t, cli); a.Version != second.Version {
		t.Fatalf("a joining node moved buckets: version %d", a.Version)
	}

	// Dry run: the plan, nothing written.
	ctx := ctxT(t)
	dry, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if !dry.DryRun || len(dry.Moves) != 85 || dry.Version != second.Version || getAssignment(t, cli).Version != second.Version {
		t.Fatalf("dry run: %d moves, version %d", len(dry.Moves), dry.Version)
	}
	// Rebalance: 85/85/86 with the minimal 85 moves (128-85 + 128-86 =
	// 43 + 42), each a handoff the servers acknowledge, in waves of at
	// most 8 into n2: 11 waves.
	ack := startAcker(t, cli)
	resp, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Version != second.Version+1 || len(resp.Moves) != 85 || len(resp.Started) != 8 || len(resp.Queued) != 77 || resp.Waves != 11 {
		t.Fatalf("rebalance: version %d, %d moves, %d started, %d queued, %d waves", resp.Version, len(resp.Moves), len(resp.Started), len(resp.Queued), resp.Waves)
	}
	third, took := waitAssignment(t, cli, "rebalance done", settled)
	t.Logf("rebalance of 85 buckets in waves took %v, version %d", took, third.Version)
	if d := ownerDiff(second, third); len(d) != 85 || ack.count() != 85 {
		t.Fatalf("rebalance: diff %d, %d acknowledgements", len(d), ack.count())
	}
	if c := third.Counts(); max(c["n1"], c["n2"], c["n3"])-min(c["n1"], c["n2"], c["n3"]) > 1 {
		t.Fatalf("after rebalance: %v", c)
	}
	if resp.MovesPerNode["n2"].Gained != 85 || resp.Leader != "mon-a" {
		t.Fatalf("response: %+v", resp)
	}
	// A second rebalance has nothing to do.
	again, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance})
	if err != nil || len(again.Moves) != 0 || again.Version != third.Version {
		t.Fatalf("second rebalance: %+v %v", again, err)
	}

	// No live node at all (all gone at once): the assignment is left alone.
	if _, err := cli.Txn(ctx).Then(clientv3.OpDelete(layout.NodeKey("n1")), clientv3.OpDelete(layout.NodeKey("n2")),
		clientv3.OpDelete(layout.NodeKey("n3"))).Commit(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if a := getAssignment(t, cli); a.Version != third.Version || a.Owners != third.Owners {
		t.Fatalf("assignment changed with no live node: version %d", a.Version)
	}
}

func TestDrainPinAndUndrainRequests(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil)
	start, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	ctx := ctxT(t)
	startAcker(t, cli)

	resp, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpDrain, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	drained, _ := waitAssignment(t, cli, "drain done", func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("n1")) == 0 })
	if len(drained.Owned("n1")) != 0 || len(resp.Moves) != 64 || len(ownerDiff(start, drained)) != 64 {
		t.Fatalf("drain: n1 keeps %d, %d moves", len(drained.Owned("n1")), len(resp.Moves))
	}
	for _, mv := range resp.Moves {
		if mv.From != "n1" || mv.Reason != "drained" {
			t.Fatalf("drain moved %+v", mv)
		}
	}
	// Draining every node is refused, and nothing changes.
	for _, n := range []string{"n2", "n3"} {
		if _, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpDrain, Node: n}); err != nil {
			t.Fatal(err)
		}
	}
	waitAssignment(t, cli, "drains done", func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("n4")) == 256 })
	_, err = monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpDrain, Node: "n4"})
	if err == nil || !strings.Contains(err.Error(), "no live, undrained node") {
		t.Fatalf("draining the last node: %v", err)
	}
	if a := getAssignment(t, cli); len(a.Owned("n4")) != 256 {
		t.Fatalf("after refused drain, n4 owns %d", len(a.Owned("n4")))
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		r, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpUndrain, Node: n})
		if err != nil || len(r.Moves) != 0 {
			t.Fatalf("undrain %s: %d moves, %v (undrain must not move anything by itself)", n, len(r.Moves), err)
		}
	}
	// Pin: one move; unpin: none.
	r, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpPin, Bucket: "0a", Node: "n2"})
	if err != nil || len(r.Moves) != 1 || r.Moves[0].Bucket.String() != "0a" || r.Moves[0].To != "n2" {
		t.Fatalf("pin: %+v %v", r, err)
	}
	waitAssignment(t, cli, "pin done", func(a *schema.Assignment) bool { return settled(a) && a.Owners[0x0a] == "n2" })
	// A rebalance keeps the pin.
	if _, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance}); err != nil {
		t.Fatal(err)
	}
	if a, _ := waitAssignment(t, cli, "rebalance done", settled); a.Owners[0x0a] != "n2" || !countsAre(a, map[string]int{"n1": 64, "n2": 64, "n3": 64, "n4": 64}) {
		t.Fatalf("rebalance with a pin: 0a on %s, counts %v", a.Owners[0x0a], a.Counts())
	}
	r, err = monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpUnpin, Bucket: "0a"})
	if err != nil || len(r.Moves) != 0 {
		t.Fatalf("unpin: %+v %v", r, err)
	}
	// Bad requests get a clear refusal.
	if _, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: "explode"}); err == nil || !strings.Contains(err.Error(), `unknown operation "explode"`) {
		t.Fatalf("bad op: %v", err)
	}
}

func TestTwoMonitorsOnlyTheLeaderWritesAndTheOtherTakesOver(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	leases := map[string]clientv3.LeaseID{}
	for _, n := range []string{"n1", "n2", "n3"} {
		leases[n] = registerNode(t, cli, n)
	}
	// Record every assignment write and who made it.
	var mu sync.Mutex
	var writers []string
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go func() {
		for wr := range cli.Watch(wctx, layout.AssignmentKey()) {
			for _, ev := range wr.Events {
				a, err := schema.ParseAssignment(ev.Kv.Value)
				if err == nil {
					mu.Lock()
					writers = append(writers, fmt.Sprintf("v%d:%s", a.Version, updatedBy(a)))
					mu.Unlock()
				}
			}
		}
	}()

	a := startMonitor(t, c, "mon-a", nil)
	first, _ := waitAssignment(t, cli, "first assignment", func(x *schema.Assignment) bool { return len(x.Owned("")) == 0 })
	b := startMonitor(t, c, "mon-b", nil)
	_ = b
	time.Sleep(500 * time.Millisecond)
	if l, _ := monitorapi.Leader(ctxT(t), cli, layout); l != "mon-a" {
		t.Fatalf("leader = %q; want mon-a", l)
	}
	cli.Revoke(ctxT(t), leases["n1"])
	waitAssignment(t, cli, "n1 gone", func(x *schema.Assignment) bool { return x.Version == first.Version+1 })

	// The leader dies without resigning: mon-b takes over once its session expires.
	a.crash()
	ctx := ctxT(t)
	testutil.Eventually(t, 10*time.Second, "mon-b takes over", func() bool {
		l, _ := monitorapi.Leader(ctx, cli, layout)
		return l == "mon-b"
	})
	cli.Revoke(ctxT(t), leases["n2"])
	final, _ := waitAssignment(t, cli, "n2 gone", func(x *schema.Assignment) bool { return x.Version == first.Version+2 })
	if len(final.Owned("n3")) != 256 {
		t.Fatalf("n3 owns %d", len(final.Owned("n3")))
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	v := first.Version
	want := []string{fmt.Sprintf("v%d:mon-a", v), fmt.Sprintf("v%d:mon-a", v+1), fmt.Sprintf("v%d:mon-b", v+2)}
	if strings.Join(writers, ",") != strings.Join(want, ",") {
		t.Fatalf("writes = %v; want %v (only the leader writes, once per change)", writers, want)
	}
}

func TestDeposedLeaderCannotWrite(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	registerNode(t, cli, "n1")
	ctx := ctxT(t)
	w := watch.New(watch.Config{Client: cli, Layout: layout})
	w.Start()
	defer w.Stop()
	snap, err := w.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := &monitor{cli: cli, layout: layout, watcher: w, id: "old", log: zap.NewNop()}

	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	el := concurrency.NewElection(sess, layout.ElectionPrefix())
	if err := el.Campaign(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	l := &leadership{key: el.Key(), rev: el.Rev()}
	a := &schema.Assignment{Version: 1}
	a.Owners[0] = "n1"
	if _, err := m.write(ctx, l, snap, a, nil, nil); err != nil {
		t.Fatalf("the leader's write failed: %v", err)
	}
	// Deposed: its session ends and another monitor wins.
	sess.Close()
	sess2, _ := concurrency.NewSession(cli, concurrency.WithTTL(5))
	defer sess2.Close()
	el2 := concurrency.NewElection(sess2, layout.ElectionPrefix())
	if err := el2.Campaign(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	snap2, _ := w.WaitReady(ctx)
	testutil.Eventually(t, 10*time.Second, "the watcher sees the leader's write", func() bool {
		if snap2.AssignmentModRevision != snap.AssignmentModRevision {
			return true
		}
		snap2 = w.Snapshot()
		return false
	})
	b := a.Clone()
	b.Version, b.Owners[1] = 2, "n1"
	if _, err := m.write(ctx, l, snap2, b, nil, nil); !errors.Is(err, errNotLeader) {
		t.Fatalf("deposed leader's write: %v; want errNotLeader", err)
	}
	if got := getAssignment(t, cli); got.Version != 1 {
		t.Fatalf("assignment version %d after a deposed write", got.Version)
	}
	// The real leader planning on an outdated snapshot is told so (errStale),
	// which is not the same as losing leadership.
	l2 := &leadership{key: el2.Key(), rev: el2.Rev()}
	if _, err := m.write(ctx, l2, snap, b, nil, nil); !errors.Is(err, errStale) {
		t.Fatalf("write on a stale snapshot: %v; want errStale", err)
	}
	if _, err := m.write(ctx, l2, snap2, b, nil, nil); err != nil {
		t.Fatalf("the new leader's write on a fresh snapshot: %v", err)
	}
	if got := getAssignment(t, cli); got.Version != 2 {
		t.Fatalf("assignment version %d; want 2", got.Version)
	}
}

func TestCorruptAssignmentIsRepairedWithoutMoves(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2"} {
		registerNode(t, cli, n)
	}
	core, logs := observer.New(zap.InfoLevel)
	startMonitor(t, c, "mon-a", zap.New(core))
	good, _ := waitAssignment(t, cli, "first", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })

	// Corrupt it: one bad bucket entry makes the whole value invalid.
	bad := strings.Replace(string(good.Encode()), `"00":"n1"`, `"00":""`, 1)
	if _, err := cli.Put(ctxT(t), layout.AssignmentKey(), bad); err != nil {
		t.Fatal(err)
	}
	fixed, _ := waitAssignment(t, cli, "repaired", func(a *schema.Assignment) bool { return a.Version == good.Version+1 })
	if len(ownerDiff(good, fixed)) != 0 {
		t.Fatalf("repair moved %d buckets; the last good assignment needs none", len(ownerDiff(good, fixed)))
	}
	if logs.FilterMessage("the assignment in etcd is invalid; repairing it").Len() == 0 {
		t.Fatal("the repair was not logged")
	}
}

func TestFreshMonitorSalvagesCorruptAssignment(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2"} {
		registerNode(t, cli, n)
	}
	// Written before any monitor ran: 00 is broken, 01 belongs to a dead node.
	var owners [bucket.Count]string
	for b := range owners {
		owners[b] = []string{"n1", "n2"}[b%2]
	}
	a := &schema.Assignment{Version: 41, Owners: owners}
	raw := strings.Replace(string(a.Encode()), `"00":"n1"`, `"00":17`, 1)
	raw = strings.Replace(raw, `"01":"n2"`, `"01":"n9"`, 1)
	cli.Put(ctxT(t), layout.AssignmentKey(), raw)

	startMonitor(t, c, "mon-a", nil)
	fixed, _ := waitAssignment(t, cli, "repaired", func(x *schema.Assignment) bool { return x.Version == 42 })
	salvaged, _ := schema.SalvageAssignment([]byte(raw))
	diff := ownerDiff(salvaged, fixed)
	if len(diff) != 2 || diff[0] != (schema.Move{Bucket: 0, From: "", To: "n1"}) || diff[1] != (schema.Move{Bucket: 1, From: "n9", To: "n2"}) {
		t.Fatalf("repair moved %+v; want only the broken bucket 00 and n9's 01, each to the node with fewest", diff)
	}
	if d := ownerDiff(a, fixed); len(d) != 0 {
		t.Fatalf("buckets %+v left the owners the value named", d)
	}
}

func TestRequestWithNoMonitorFailsClearly(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := monitorapi.Send(ctx, cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance})
	if !errors.Is(err, monitorapi.ErrNoMonitor) || !strings.Contains(err.Error(), "no monitor is running") {
		t.Fatalf("err = %v", err)
	}
	// The unanswered request was withdrawn, so a monitor starting later does not act on it.
	resp, _ := cli.Get(ctxT(t), layout.RequestsPrefix(), clientv3.WithPrefix())
	if len(resp.Kvs) != 0 {
		t.Fatalf("%d request(s) left behind", len(resp.Kvs))
	}
}

// ownerDiff lists the buckets whose owner differs between old and new, in
// bucket order. A nil old counts as all buckets unassigned.
func ownerDiff(old, new *schema.Assignment) []schema.Move {
	var moves []schema.Move
	for b := range bucket.Count {
		var from, to string
		if old != nil {
			from = old.Owners[b]
		}
		if new != nil {
			to = new.Owners[b]
		}
		if from != to {
			moves = append(moves, schema.Move{Bucket: bucket.Bucket(b), From: from, To: to})
		}
	}
	return moves
}
