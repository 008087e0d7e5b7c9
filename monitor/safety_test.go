package main

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// registerNodeTTL registers a node under a new lease of ttl seconds that
// nobody keeps alive.
func registerNodeTTL(t *testing.T, cli *clientv3.Client, id string, ttl int64) clientv3.LeaseID {
	t.Helper()
	lease, err := cli.Grant(ctxT(t), ttl)
	if err != nil {
		t.Fatal(err)
	}
	putNode(t, cli, id, lease.ID, "")
	return lease.ID
}

// putNode (re)writes a node's registration under lease, as its registrar
// would.
func putNode(t *testing.T, cli *clientv3.Client, id string, lease clientv3.LeaseID, state string) {
	t.Helper()
	n := schema.Node{NodeID: id, NodeURL: "https://" + id + ".example.com/", LocalNodeURL: "http://127.0.0.1:9/", State: state}
	if _, err := cli.Put(ctxT(t), layout.NodeKey(id), string(n.Encode()), clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
}

func deleteKey(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	if _, err := cli.Delete(ctxT(t), key); err != nil {
		t.Fatal(err)
	}
}

// pinAndWait pins bucket b to node and waits until its handoff started.
func pinAndWait(t *testing.T, cli *clientv3.Client, b bucket.Bucket, node string) schema.MoveState {
	t.Helper()
	if _, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpPin, Bucket: b.String(), Node: node}); err != nil {
		t.Fatal(err)
	}
	a, _ := waitAssignment(t, cli, "move started", func(a *schema.Assignment) bool { _, ok := a.Moving[b]; return ok })
	return a.Moving[b]
}

// S1: a node key deleted by hand while its lease lives does not mean the
// server fenced itself: its buckets stay until the lease is gone.
func TestUnregisteredNodeWithLiveLeaseKeepsItsBuckets(t *testing.T) {
	const warning = "registration deleted by hand while its lease lives: not moving its buckets until the lease expires"
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, c *etcdtest.Etcd, cli *clientv3.Client, log *zap.Logger, logs *observer.ObservedLogs)
	}{
		{"deleted by hand, then back under the same lease: nothing moves", func(t *testing.T, c *etcdtest.Etcd, cli *clientv3.Client, log *zap.Logger, logs *observer.ObservedLogs) {
			l1 := registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			startMonitor(t, c, "mon-a", log)
			first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			deleteKey(t, cli, layout.NodeKey("n1"))
			time.Sleep(time.Second) // several rounds
			if a := getAssignment(t, cli); a.Version != first.Version {
				t.Fatalf("buckets moved off a node whose lease lives: version %d, %d moved", a.Version, len(ownerDiff(first, a)))
			}
			if logs.FilterMessage(warning).FilterField(zap.String("key", layout.NodeKey("n1"))).Len() != 1 {
				t.Fatalf("want one warning naming the key, got %v", logs.FilterMessage(warning).All())
			}
			putNode(t, cli, "n1", l1, "") // the registrar writes it again
			time.Sleep(500 * time.Millisecond)
			if a := getAssignment(t, cli); a.Version != first.Version {
				t.Fatalf("version %d after the node came back", a.Version)
			}
		}},
		{"a node that dies meanwhile: its buckets go to registered nodes only", func(t *testing.T, c *etcdtest.Etcd, cli *clientv3.Client, log *zap.Logger, logs *observer.ObservedLogs) {
			registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			l3 := registerNode(t, cli, "n3")
			startMonitor(t, c, "mon-a", nil)
			first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			deleteKey(t, cli, layout.NodeKey("n1"))
			time.Sleep(500 * time.Millisecond)
			if _, err := cli.Revoke(ctxT(t), l3); err != nil {
				t.Fatal(err)
			}
			a, _ := waitAssignment(t, cli, "n3's buckets moved", func(a *schema.Assignment) bool { return len(a.Owned("n3")) == 0 })
			for _, mv := range ownerDiff(first, a) {
				if mv.From != "n3" || mv.To != "n2" {
					t.Fatalf("move %+v: only n3's buckets may move, and only to the registered n2", mv)
				}
			}
		}},
		{"a move from it is not committed as owner gone; it commits on its release", func(t *testing.T, c *etcdtest.Etcd, cli *clientv3.Client, log *zap.Logger, logs *observer.ObservedLogs) {
			l1 := registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			startMonitor(t, c, "mon-a", nil)
			first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			b := first.Owned("n1")[0]
			mv := pinAndWait(t, cli, b, "n2")
			deleteKey(t, cli, layout.NodeKey("n1"))
			time.Sleep(time.Second)
			if a := getAssignment(t, cli); a.Owners[b] != "n1" || a.Moving[b] != mv {
				t.Fatalf("the move from a node whose lease lives changed: owner %s, moving %+v", a.Owners[b], a.Moving[b])
			}
			// Its registrar acknowledges the release, under its lease.
			if _, err := cli.Put(ctxT(t), layout.ReleasedKey(b), string(schema.Released{From: "n1", Epoch: mv.Epoch}.Encode()), clientv3.WithLease(l1)); err != nil {
				t.Fatal(err)
			}
			done, _ := waitAssignment(t, cli, "committed", func(a *schema.Assignment) bool { _, moving := a.Moving[b]; return !moving })
			if done.Owners[b] != "n2" || len(done.Owned("n1")) != len(first.Owned("n1"))-1 {
				t.Fatalf("owner %s; n1 owns %d (was %d)", done.Owners[b], len(done.Owned("n1")), len(first.Owned("n1")))
			}
		}},
		{"a key with an invalid value owns buckets: they stay, and the rest goes on", func(t *testing.T, c *etcdtest.Etcd, cli *clientv3.Client, log *zap.Logger, logs *observer.ObservedLogs) {
			l1 := registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			l3 := registerNode(t, cli, "n3")
			a := startMonitor(t, c, "mon-a", nil)
			first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			a.stop()
			// A monitor that never saw n1's valid registration.
			if _, err := cli.Put(ctxT(t), layout.NodeKey("n1"), `{"node_id":"n1"}`, clientv3.WithLease(l1)); err != nil {
				t.Fatal(err)
			}
			startMonitor(t, c, "mon-b", log)
			time.Sleep(time.Second)
			if a := getAssignment(t, cli); a.Version != first.Version {
				t.Fatalf("buckets moved off a node whose key exists: %d", len(ownerDiff(first, a)))
			}
			// Other changes are still written (a round that wanted to
			// move n1's buckets would fail on its key every time).
			if _, err := cli.Revoke(ctxT(t), l3); err != nil {
				t.Fatal(err)
			}
			end, _ := waitAssignment(t, cli, "n3's buckets moved", func(a *schema.Assignment) bool { return len(a.Owned("n3")) == 0 })
			for _, mv := range ownerDiff(first, end) {
				if mv.From != "n3" || mv.To != "n2" {
					t.Fatalf("move %+v: only n3's buckets may move, and only to n2", mv)
				}
			}
			if logs.FilterField(zap.String("key", layout.NodeKey("n1"))).FilterMessageSnippet("invalid registration").Len() == 0 {
				t.Fatal("no warning names n1's key")
			}
		}},
		{"the lease then expires: the buckets move when it runs out, with nothing else happening", func(t *testing.T, c *etcdtest.Etcd, cli *clientv3.Client, log *zap.Logger, logs *observer.ObservedLogs) {
			const ttl = 3
			granted := time.Now()
			registerNodeTTL(t, cli, "n1", ttl)
			registerNode(t, cli, "n2")
			// No periodic round: only a wake at the lease's end can see it.
			startMonitor(t, c, "mon-a", nil, func(m *monitor) { m.interval = time.Hour })
			first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			deleteKey(t, cli, layout.NodeKey("n1"))
			time.Sleep(time.Second)
			if a := getAssignment(t, cli); a.Version != first.Version {
				t.Fatalf("moved before the lease ended: %d buckets", len(ownerDiff(first, a)))
			}
			waitAssignment(t, cli, "n1's buckets moved", func(a *schema.Assignment) bool { return len(a.Owned("n1")) == 0 })
			// The lease counts as ended when etcd says less than a second
			// is left (its TTL is 0): the server fenced itself before that.
			if took := time.Since(granted); took < (ttl-1)*time.Second || took > (ttl+3)*time.Second {
				t.Fatalf("moved %v after the %ds lease was granted", took, ttl)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			log, logs := observed(t)
			tc.run(t, c, c.Client(t), log, logs)
		})
	}
}

// observed returns a logger that records info and up (logs) and writes
// warnings and up to the test's log.
func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	return zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core())), logs
}

// S3: a decision that treats a node as gone is not written once it has
// registered again.
func TestDecisionOnAGoneNodeFailsWhenItRegisteredAgain(t *testing.T) {
	for _, tc := range []struct {
		name string
		// moving: n1's first bucket is moving to n2 (committed as owner
		// gone), else every n1 bucket is at rest (moved directly).
		moving bool
	}{
		{"direct moves of its buckets", false},
		{"a move from it committed as owner gone", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			l1 := registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			d := startDirect(t, c)
			a := twoNodeAssignment(5)
			if tc.moving {
				a.Moving = map[bucket.Bucket]schema.MoveState{0: {From: "n1", To: "n2", Epoch: 5, Since: time.Now()}}
			}
			putAssignment(t, cli, a)
			d.snapshotWhere(t, "the assignment", func(s *watch.Snapshot) bool { return s.Assignment != nil && len(s.Nodes) == 2 })
			if _, err := cli.Revoke(ctxT(t), l1); err != nil {
				t.Fatal(err)
			}
			gone := d.snapshotWhere(t, "n1 gone", func(s *watch.Snapshot) bool { _, ok := s.Nodes["n1"]; return !ok })
			// n1 registers again, under a new lease, after the round looked
			// at the leases (its book stops here) and before it writes.
			d.stopBook()
			registerNode(t, cli, "n1")
			_, err := d.m.reconcile(ctxT(t), d.l, gone)
			if !errors.Is(err, errStale) {
				got := getAssignment(t, cli)
				t.Fatalf("reconcile on the snapshot where n1 is gone: %v; want errStale; version %d, %d buckets moved", err, got.Version, len(ownerDiff(a, got)))
			}
			if got := getAssignment(t, cli); got.Version != a.Version {
				t.Fatalf("written although n1 registered again: version %d, diff %v", got.Version, ownerDiff(a, got))
			}
			// Planned again on the newer state: nothing of n1's moves.
			fresh := d.snapshotWhere(t, "n1 back", func(s *watch.Snapshot) bool { _, ok := s.Nodes["n1"]; return ok })
			d.m.nodeLeases.record(fresh)
			if _, err := d.m.reconcile(ctxT(t), d.l, fresh); err != nil {
				t.Fatal(err)
			}
			if got := getAssignment(t, cli); len(ownerDiff(a, got)) != 0 {
				t.Fatalf("moved %v", ownerDiff(a, got))
			}
		})
	}
}

// L4: a release key is deleted only as the round saw it: a fresh
// acknowledgement written after the snapshot survives.
func TestFreshAcknowledgementIsNotDeletedAsStale(t *testing.T) {
	for _, tc := range []struct {
		name string
		// change: the round also writes an assignment change (an
		// unassigned bucket), not only the stale key's delete.
		change bool
	}{
		{"a round that only deletes stale keys", false},
		{"a round that also writes the assignment", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			d := startDirect(t, c)
			a := twoNodeAssignment(5)
			// 0a moves n1 -> n2 at epoch 5; an acknowledgement of an
			// earlier, aborted move (epoch 4) is still there.
			a.Moving = map[bucket.Bucket]schema.MoveState{0x0a: {From: "n1", To: "n2", Epoch: 5, Since: time.Now()}}
			if tc.change {
				a.Owners[0xff], a.Epochs[0xff] = "", 0
			}
			putAssignment(t, cli, a)
			stale := schema.Released{From: "n1", Epoch: 4}
			put(t, cli, layout.ReleasedKey(0x0a), stale.Encode())
			snap := d.snapshotWhere(t, "the stale acknowledgement", func(s *watch.Snapshot) bool {
				return s.Assignment != nil && s.Released[0x0a].Released == stale
			})
			// n1's registrar acknowledges the move in progress, after the
			// snapshot the round plans on.
			fresh := schema.Released{From: "n1", Epoch: 5}
			put(t, cli, layout.ReleasedKey(0x0a), fresh.Encode())
			_, err := d.m.reconcile(ctxT(t), d.l, snap)
			if !errors.Is(err, errStale) {
				t.Fatalf("reconcile: %v; want errStale", err)
			}
			resp, err := cli.Get(ctxT(t), layout.ReleasedKey(0x0a))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != string(fresh.Encode()) {
				t.Fatalf("the fresh acknowledgement was deleted: %v", resp.Kvs)
			}
			// The next round sees it and commits.
			now := d.snapshotWhere(t, "the fresh acknowledgement", func(s *watch.Snapshot) bool { return s.Released[0x0a].Released == fresh })
			if _, err := d.m.reconcile(ctxT(t), d.l, now); err != nil {
				t.Fatal(err)
			}
			if got := getAssignment(t, cli); got.Owners[0x0a] != "n2" || len(got.Moving) != 0 {
				t.Fatalf("not committed: owner %s moving %v", got.Owners[0x0a], got.Moving)
			}
		})
	}
}

// L5: with no eligible node (all drained or leaving), moves in progress
// still commit or abort.
func TestMovesAdvanceWithNoEligibleNode(t *testing.T) {
	for _, tc := range []struct {
		name string
		// then acts once no node is eligible; want is the bucket's owner
		// at the end.
		then func(t *testing.T, cli *clientv3.Client, b bucket.Bucket, mv schema.MoveState, l1 clientv3.LeaseID)
		want string
	}{
		{"the old owner releases: committed", func(t *testing.T, cli *clientv3.Client, b bucket.Bucket, mv schema.MoveState, l1 clientv3.LeaseID) {
			if _, err := cli.Put(ctxT(t), layout.ReleasedKey(b), string(schema.Released{From: "n1", Epoch: mv.Epoch}.Encode()), clientv3.WithLease(l1)); err != nil {
				t.Fatal(err)
			}
		}, "n2"},
		{"no release in time: aborted", func(*testing.T, *clientv3.Client, bucket.Bucket, schema.MoveState, clientv3.LeaseID) {}, "n1"},
		{"the old owner is gone: committed", func(t *testing.T, cli *clientv3.Client, b bucket.Bucket, mv schema.MoveState, l1 clientv3.LeaseID) {
			if _, err := cli.Revoke(ctxT(t), l1); err != nil {
				t.Fatal(err)
			}
		}, "n2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			l1 := registerNode(t, cli, "n1")
			l2 := registerNode(t, cli, "n2")
			startMonitor(t, c, "mon-a", nil, func(m *monitor) {
				m.limits = handoff.Limits{MaxMoving: 16, MaxMovingPerNode: 8, Timeout: 3 * time.Second}
				m.cooldownFor = time.Hour
			})
			first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			b := first.Owned("n1")[0]
			mv := pinAndWait(t, cli, b, "n2")
			// Both nodes start leaving at once: no node is eligible.
			leaving := func(id string, lease clientv3.LeaseID) clientv3.Op {
				n := schema.Node{NodeID: id, NodeURL: "https://" + id + ".example.com/", LocalNodeURL: "http://127.0.0.1:9/", State: schema.NodeLeaving}
				return clientv3.OpPut(layout.NodeKey(id), string(n.Encode()), clientv3.WithLease(lease))
			}
			if _, err := cli.Txn(ctxT(t)).Then(leaving("n1", l1), leaving("n2", l2)).Commit(); err != nil {
				t.Fatal(err)
			}
			tc.then(t, cli, b, mv, l1)
			end, _ := waitAssignment(t, cli, "the move ended", func(a *schema.Assignment) bool { _, moving := a.Moving[b]; return !moving })
			if end.Owners[b] != tc.want || len(end.Moving) != 0 || len(end.Queued) > 1 {
				t.Fatalf("owner %s (want %s), moving %v, queued %v", end.Owners[b], tc.want, end.Moving, end.Queued)
			}
			// Nothing else moved.
			for _, d := range ownerDiff(first, end) {
				if d.Bucket != b {
					t.Fatalf("bucket %s moved: %+v", d.Bucket, d)
				}
			}
		})
	}
}

// direct drives a monitor's rounds by hand, as the leader.
type direct struct {
	m        *monitor
	l        *leadership
	w        *watch.Watcher
	stopBook func() // the lease book stops following the watcher
}

func startDirect(t *testing.T, c *etcdtest.Etcd) *direct {
	t.Helper()
	cli := c.Client(t)
	w := watch.New(watch.Config{Client: cli, Layout: layout})
	w.Start()
	t.Cleanup(w.Stop)
	m := &monitor{cli: cli, layout: layout, watcher: w, id: "mon-d", log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		limits: handoff.DefaultLimits, cooldown: map[bucket.Bucket]time.Time{}, nodeLeases: newNodeLeases()}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		m.nodeLeases.follow(ctx, w)
	}()
	stop := func() {
		cancel()
		<-followed
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	el := concurrency.NewElection(sess, layout.ElectionPrefix())
	if err := el.Campaign(ctxT(t), m.id); err != nil {
		t.Fatal(err)
	}
	return &direct{m: m, l: &leadership{key: el.Key(), rev: el.Rev()}, w: w, stopBook: stop}
}

// snapshotWhere waits for the watcher's snapshot to satisfy cond.
func (d *direct) snapshotWhere(t *testing.T, what string, cond func(*watch.Snapshot) bool) *watch.Snapshot {
	t.Helper()
	var s *watch.Snapshot
	testutil.Eventually(t, 10*time.Second, what, func() bool {
		s = d.w.Snapshot()
		return s != nil && cond(s)
	})
	return s
}

// twoNodeAssignment: buckets alternate n1, n2.
func twoNodeAssignment(version int64) *schema.Assignment {
	a := &schema.Assignment{Version: version}
	for b := range a.Owners {
		a.Owners[b] = []string{"n1", "n2"}[b%2]
	}
	a.NextEpochs(nil)
	return a
}

func putAssignment(t *testing.T, cli *clientv3.Client, a *schema.Assignment) {
	t.Helper()
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	put(t, cli, layout.AssignmentKey(), a.Encode())
}

func put(t *testing.T, cli *clientv3.Client, key string, value []byte) {
	t.Helper()
	if _, err := cli.Put(ctxT(t), key, string(value)); err != nil {
		t.Fatal(err)
	}
}

// A decision that gives buckets to a node is written only while that node
// is registered as the snapshot saw it: if it left meanwhile (its key is
// gone, or was written again under a new lease), the write fails and the
// next round plans on the news.
func TestDecisionFailsWhenAReceiverLeftMeanwhile(t *testing.T) {
	for _, tc := range []struct {
		name      string
		comesBack bool // the receiver registers again at once (a new key)
	}{
		{"the receiver left", false},
		{"the receiver left and came back", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			l1 := registerNode(t, cli, "n1")
			l2 := registerNode(t, cli, "n2")
			d := startDirect(t, c)
			a := twoNodeAssignment(5)
			putAssignment(t, cli, a)
			d.snapshotWhere(t, "the assignment", func(s *watch.Snapshot) bool { return s.Assignment != nil && len(s.Nodes) == 2 })
			if _, err := cli.Revoke(ctxT(t), l1); err != nil { // n1's buckets go to n2
				t.Fatal(err)
			}
			gone := d.snapshotWhere(t, "n1 gone", func(s *watch.Snapshot) bool { _, ok := s.Nodes["n1"]; return !ok })
			d.stopBook()
			if _, err := cli.Revoke(ctxT(t), l2); err != nil { // and n2 leaves before the write
				t.Fatal(err)
			}
			if tc.comesBack {
				registerNode(t, cli, "n2")
			}
			if _, err := d.m.reconcile(ctxT(t), d.l, gone); !errors.Is(err, errStale) {
				got := getAssignment(t, cli)
				t.Fatalf("reconcile gave n1's buckets to n2 after n2 left: %v; version %d -> %d", err, a.Version, got.Version)
			}
			if got := getAssignment(t, cli); got.Version != a.Version {
				t.Fatalf("written: version %d", got.Version)
			}
		})
	}
}
