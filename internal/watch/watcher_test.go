package watch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

var layout, _ = schema.NewLayout("/test-cluster")

func node(id string) schema.Node {
	return schema.Node{NodeID: id, NodeURL: "https://" + id + ".example.com/", LocalNodeURL: "http://127.0.0.1:9/" + id + "/"}
}

func assignment(version int64, nodes ...string) *schema.Assignment {
	a := &schema.Assignment{Version: version}
	for b := range a.Owners {
		a.Owners[b] = nodes[b%len(nodes)]
	}
	return a
}

func put(t *testing.T, cli *clientv3.Client, key string, value []byte) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Put(ctx, key, string(value))
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func del(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}

func startWatcher(t *testing.T, cli *clientv3.Client, log *zap.Logger, hook func(int64)) *Watcher {
	t.Helper()
	w := New(Config{Client: cli, Layout: layout, Logger: log, ProgressInterval: 100 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	w.testHookAfterList = hook
	w.Start()
	t.Cleanup(w.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return w
}

// next receives the next snapshot or fails after a timeout.
func next(t *testing.T, sub *Subscription) *Snapshot {
	t.Helper()
	select {
	case s := <-sub.C:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot within 10s")
		return nil
	}
}

// waitFor receives snapshots until cond holds.
func waitFor(t *testing.T, sub *Subscription, what string, cond func(*Snapshot) bool) *Snapshot {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case s := <-sub.C:
			if cond(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
			return nil
		}
	}
}

func TestListThenEveryChangeInOrder(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/test-cluster-other/assignment", []byte("not ours")) // a sibling prefix is not read
	put(t, cli, layout.NodeKey("n1"), node("n1").Encode())
	// The list's revision is this write's: the watch starts there and must
	// not deliver it again (that would be a duplicate snapshot below).
	put(t, cli, layout.AssignmentKey(), assignment(1, "n1").Encode())

	w := startWatcher(t, cli, nil, nil)
	s := w.Snapshot()
	if len(s.Nodes) != 1 || s.Assignment == nil || s.Assignment.Version != 1 {
		t.Fatalf("initial snapshot = %+v", s)
	}
	sub := w.Subscribe()
	defer sub.Close()
	if first := next(t, sub); first != s {
		t.Fatal("a subscription does not start with the current snapshot")
	}

	// Many changes, some in one transaction: one snapshot per revision, in order.
	put(t, cli, layout.NodeKey("n2"), node("n2").Encode())
	for v := int64(2); v <= 30; v++ {
		put(t, cli, layout.AssignmentKey(), assignment(v, "n1", "n2").Encode())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	txn, err := cli.Txn(ctx).Then(
		clientv3.OpPut(layout.NodeKey("n3"), string(node("n3").Encode())),
		clientv3.OpPut(layout.AssignmentKey(), string(assignment(31, "n1", "n2", "n3").Encode())),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, layout.Root()+"requests/x", []byte("ignored: not part of the snapshot"))
	del(t, cli, layout.NodeKey("n1"))

	s = next(t, sub)
	if _, ok := s.Nodes["n2"]; !ok || s.Assignment.Version != 1 {
		t.Fatalf("expected n2 joined first, got %+v", s)
	}
	for v := int64(2); v <= 30; v++ {
		s = next(t, sub)
		if s.Assignment.Version != v {
			t.Fatalf("got version %d, want %d (a change was missed or reordered)", s.Assignment.Version, v)
		}
	}
	s = next(t, sub)
	if s.Revision != txn.Header.Revision || s.Assignment.Version != 31 || len(s.Nodes) != 3 {
		t.Fatalf("transaction not published as one snapshot: %+v", s)
	}
	s = next(t, sub)
	if _, ok := s.Nodes["n1"]; ok || len(s.Nodes) != 2 {
		t.Fatalf("n1 not removed: %+v", s.Nodes)
	}
	if o, ok := s.Owner(0); ok || o.NodeID != "" {
		t.Errorf("bucket 00 belongs to removed n1 but Owner returned %+v", o)
	}
	if o, ok := s.Owner(1); !ok || o.NodeID != "n2" {
		t.Errorf("Owner(01) = %+v, %v", o, ok)
	}
	if w.Status().Relists != 0 || !w.Status().Connected {
		t.Errorf("status = %+v", w.Status())
	}
}

func TestCorruptValuesKeepLastGoodState(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	core, logs := observer.New(zap.ErrorLevel)
	// A corrupt assignment before the watcher starts: no good state yet.
	badRev := put(t, cli, layout.AssignmentKey(), []byte(`{"version":1,"buckets":{"zz":"n1"}}`))
	w := startWatcher(t, cli, zap.New(core), nil)
	s := w.Snapshot()
	if s.Assignment != nil || s.AssignmentError == nil || s.AssignmentModRevision != badRev {
		t.Fatalf("initial corrupt assignment: %+v", s)
	}
	sub := w.Subscribe()
	defer sub.Close()
	next(t, sub)

	// Each case writes a good value (unless the key never had one), then a
	// corrupt one, which is rejected while the last good state stays, then
	// a valid one again, which clears the error. valid and rejected get the
	// mod revision of the write they wait for.
	cases := []struct {
		name         string
		key          string
		good         []byte // nil: the key never had a valid value
		corrupt, fix []byte
		valid        func(s *Snapshot, rev int64) bool // the value at rev is in the snapshot, with no error
		rejected     func(s *Snapshot, rev int64) bool // the corrupt value at rev was seen
		keptLastGood func(s *Snapshot) bool
	}{
		{
			name:    "assignment with an empty node id",
			key:     layout.AssignmentKey(),
			good:    assignment(4, "n1").Encode(),
			corrupt: []byte(`{"version":5,"buckets":{"00":""}}`),
			fix:     assignment(6, "n1").Encode(),
			valid: func(s *Snapshot, rev int64) bool {
				return s.AssignmentModRevision == rev && s.Assignment != nil && s.AssignmentError == nil
			},
			rejected: func(s *Snapshot, rev int64) bool { return s.AssignmentModRevision == rev },
			keptLastGood: func(s *Snapshot) bool {
				return s.Assignment != nil && s.Assignment.Version == 4 && strings.Contains(fmt.Sprint(s.AssignmentError), "empty node id")
			},
		},
		{
			name:         "node registration with an invalid node_url",
			key:          layout.NodeKey("n1"),
			good:         node("n1").Encode(),
			corrupt:      []byte(`{"node_id":"n1","node_url":"nope"}`),
			fix:          node("n1").Encode(),
			valid:        func(s *Snapshot, _ int64) bool { return s.Nodes["n1"] == node("n1") && s.NodeErrors["n1"] == nil },
			rejected:     func(s *Snapshot, _ int64) bool { return s.NodeErrors["n1"] != nil },
			keptLastGood: func(s *Snapshot) bool { return s.Nodes["n1"] == node("n1") },
		},
		{
			name:    "settings pinning an invalid bucket",
			key:     layout.SettingsKey(),
			good:    schema.Settings{Drained: []string{"n1"}}.Encode(),
			corrupt: []byte(`{"pins":{"zz":"n1"}}`),
			fix:     schema.Settings{Drained: []string{"n1"}}.Encode(),
			valid: func(s *Snapshot, rev int64) bool {
				return s.SettingsModRevision == rev && s.SettingsError == nil && s.Settings.IsDrained("n1")
			},
			rejected:     func(s *Snapshot, rev int64) bool { return s.SettingsModRevision == rev && s.SettingsError != nil },
			keptLastGood: func(s *Snapshot) bool { return s.Settings.IsDrained("n1") },
		},
		{
			name:     "new node that never had a valid value",
			key:      layout.NodeKey("n9"),
			corrupt:  []byte(`garbage`),
			fix:      node("n9").Encode(),
			valid:    func(s *Snapshot, _ int64) bool { return s.Nodes["n9"] == node("n9") && s.NodeErrors["n9"] == nil },
			rejected: func(s *Snapshot, _ int64) bool { return s.NodeErrors["n9"] != nil },
			keptLastGood: func(s *Snapshot) bool {
				_, listed := s.Nodes["n9"]
				return !listed
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.good != nil {
				rev := put(t, cli, tc.key, tc.good)
				waitFor(t, sub, "the good value", func(s *Snapshot) bool { return tc.valid(s, rev) })
			}
			rev := put(t, cli, tc.key, tc.corrupt)
			s := waitFor(t, sub, "the corrupt value seen", func(s *Snapshot) bool { return tc.rejected(s, rev) })
			if !tc.keptLastGood(s) {
				t.Fatalf("the corrupt value replaced the last good state: %+v", s)
			}
			// A valid value clears the error.
			rev = put(t, cli, tc.key, tc.fix)
			waitFor(t, sub, "recovered", func(s *Snapshot) bool { return tc.valid(s, rev) })
		})
	}

	// The log names the key: two corrupt assignments, one corrupt value of
	// each node, one of the settings.
	found := 0
	for _, e := range logs.All() {
		k, _ := e.ContextMap()["key"].(string)
		if k == layout.AssignmentKey() || k == layout.NodeKey("n1") || k == layout.NodeKey("n9") {
			found++
		}
	}
	if found < 4 || logs.FilterField(zap.String("key", layout.SettingsKey())).Len() != 1 {
		t.Errorf("expected 5 error logs naming the keys, got %d: %v", found, logs.All())
	}
	// A fresh watcher over a corrupt value has no assignment and says why.
	put(t, cli, layout.AssignmentKey(), []byte(`[]`))
	w2 := startWatcher(t, cli, nil, nil)
	if s := w2.Snapshot(); s.Assignment != nil || s.AssignmentError == nil {
		t.Fatalf("fresh watcher over a corrupt value: %+v", s)
	}
}

func TestNoChangeMissedAcrossCompaction(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, layout.NodeKey("n1"), node("n1").Encode())
	put(t, cli, layout.AssignmentKey(), assignment(1, "n1").Encode())

	var lists atomic.Int32
	hook := func(rev int64) {
		if lists.Add(1) != 1 {
			return
		}
		// Between the first list and the watch: change things, then compact
		// them away, so the watch from rev+1 fails with ErrCompacted.
		put(t, cli, layout.NodeKey("n2"), node("n2").Encode())
		del(t, cli, layout.NodeKey("n1"))
		last := put(t, cli, layout.AssignmentKey(), assignment(2, "n2").Encode())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := cli.Compact(ctx, last); err != nil {
			t.Errorf("compact: %v", err)
		}
	}
	w := startWatcher(t, cli, nil, hook)
	sub := w.Subscribe()
	defer sub.Close()
	s := waitFor(t, sub, "state after compaction", func(s *Snapshot) bool {
		return s.Assignment != nil && s.Assignment.Version == 2
	})
	if _, ok := s.Nodes["n1"]; ok || len(s.Nodes) != 1 {
		t.Fatalf("nodes after compaction = %v", s.Nodes)
	}
	if st := w.Status(); st.Relists < 1 || !strings.Contains(st.LastError, "compaction") {
		t.Fatalf("status = %+v; want a relist after compaction", st)
	}
	// And the watch goes on after the relist.
	put(t, cli, layout.AssignmentKey(), assignment(3, "n2").Encode())
	waitFor(t, sub, "version 3", func(s *Snapshot) bool { return s.Assignment.Version == 3 })
}

func TestNoChangeMissedAcrossEtcdRestart(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, layout.AssignmentKey(), assignment(1, "n1").Encode())
	w := startWatcher(t, cli, nil, nil)
	sub := w.Subscribe()
	defer sub.Close()
	next(t, sub)

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("watcher status: %+v", w.Status())
		}
	})

	c.Stop(0)
	testutil.Eventually(t, 10*time.Second, "the watcher reports disconnected after etcd stopped", func() bool {
		return !w.Status().Connected
	})
	if s := w.Snapshot(); s.Assignment == nil || s.Assignment.Version != 1 {
		t.Fatal("the last known state was lost during the outage")
	}
	c.Restart(0)
	for v := int64(2); v <= 10; v++ {
		put(t, cli, layout.AssignmentKey(), assignment(v, "n1").Encode())
	}
	seen := map[int64]bool{}
	waitFor(t, sub, "version 10", func(s *Snapshot) bool {
		if s.Assignment != nil {
			seen[s.Assignment.Version] = true
		}
		return s.Assignment != nil && s.Assignment.Version == 10
	})
	for v := int64(2); v <= 10; v++ {
		if !seen[v] {
			t.Errorf("version %d was not seen after the restart", v)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the watcher reports connected after the restart", func() bool {
		return w.Status().Connected
	})
}

func TestThreeMemberClusterLosesAMember(t *testing.T) {
	c := etcdtest.StartMembers(t, 3)
	cli := c.Client(t)
	w := startWatcher(t, cli, nil, nil)
	sub := w.Subscribe()
	defer sub.Close()
	next(t, sub)
	// Stop each member in turn, so whichever one the watcher is connected
	// to goes away at some point. A broken stream is followed by a fresh
	// list, which may fold several writes into one snapshot (the watcher
	// follows state, not a log), so the promise is: versions never go
	// backwards, and the last write is always seen. A failed step leaves
	// the versions out of step for the next ones, so the test stops there.
	version := int64(0)
	seen := int64(0)
	for i, m := range c.Members {
		ok := t.Run(m.Name+" stopped", func(t *testing.T) {
			c.Stop(i)
			c.WaitLeader(t)
			for range 3 {
				version++
				put(t, cli, layout.AssignmentKey(), assignment(version, "n1").Encode())
			}
			waitFor(t, sub, fmt.Sprintf("version %d", version), func(s *Snapshot) bool {
				if s.Assignment == nil {
					return false
				}
				if s.Assignment.Version < seen {
					t.Fatalf("member %d down: version went back from %d to %d", i, seen, s.Assignment.Version)
				}
				seen = s.Assignment.Version
				return seen == version
			})
		})
		if !ok {
			return
		}
		c.Restart(i) // here: Restart fails the test that started etcd
		c.WaitLeader(t)
	}
}

func TestSubscriptionDoesNotBlockWatcher(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	w := startWatcher(t, cli, nil, nil)
	slow := w.Subscribe() // never read until the end
	defer slow.Close()
	fast := w.Subscribe()
	defer fast.Close()
	next(t, fast)
	for v := int64(1); v <= 50; v++ {
		put(t, cli, layout.AssignmentKey(), assignment(v, "n1").Encode())
	}
	waitFor(t, fast, "version 50", func(s *Snapshot) bool { return s.Assignment != nil && s.Assignment.Version == 50 })
	if s := next(t, slow); s.Assignment != nil {
		t.Fatalf("slow subscriber's first snapshot should be the initial empty one")
	}
	for v := int64(1); v <= 50; v++ {
		if s := next(t, slow); s.Assignment.Version != v {
			t.Fatalf("slow subscriber got version %d, want %d", s.Assignment.Version, v)
		}
	}
}

// An idle watch stays "connected" through its own progress requests: here
// the decay window (3 × 100ms) is shorter than the server's progress
// notifications (1s in etcdtest), so only RequestProgress keeps it up.
func TestIdleWatchStaysConnected(t *testing.T) {
	c := etcdtest.Start(t)
	w := startWatcher(t, c.Client(t), nil, nil)
	// Connected once the watch stream answers; from then on, idle.
	testutil.Eventually(t, 5*time.Second, "the watch connected", func() bool { return w.Status().Connected })
	testutil.Consistently(t, 2*time.Second, "connected while idle", func() bool {
		st := w.Status()
		if !st.Connected {
			t.Logf("status %+v", st)
		}
		return st.Connected
	})
}

// A deleted assignment key does not make readers forget the assignment:
// like an invalid value, the last valid one stays, with ErrAssignmentDeleted
// and mod revision 0 (the monitor writes it back).
func TestDeletedAssignmentKeepsTheLastGoodOne(t *testing.T) {
	for _, tc := range []struct {
		name string
		// values are written one after the other, each seen by the
		// watcher, before the delete; want is the version of the last
		// valid one (0: none).
		values [][]byte
		want   int64
		// relist deletes the key while the watch stream is broken (the
		// watcher learns of it by listing again), not under its watch.
		relist bool
	}{
		{name: "deleted under the watch", values: [][]byte{assignment(7, "n1").Encode()}, want: 7},
		{name: "deleted after an invalid value: the last valid one stays",
			values: [][]byte{assignment(7, "n1").Encode(), []byte(`{"version":8,"buckets":{"zz":"n1"}}`)}, want: 7},
		{name: "deleted while the watch was broken", values: [][]byte{assignment(7, "n1").Encode()}, want: 7, relist: true},
		{name: "no valid value ever: deleted is as never written", values: [][]byte{[]byte(`[]`)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			var hook func(int64)
			if tc.relist {
				for _, v := range tc.values {
					put(t, cli, layout.AssignmentKey(), v)
				}
				hook = deleteBeforeTheWatch(t, cli, layout.AssignmentKey())
			}
			w := startWatcher(t, cli, nil, hook)
			sub := w.Subscribe()
			defer sub.Close()
			next(t, sub)
			if !tc.relist {
				for _, v := range tc.values {
					rev := put(t, cli, layout.AssignmentKey(), v)
					waitFor(t, sub, "the value written", func(s *Snapshot) bool { return s.AssignmentModRevision == rev })
				}
				del(t, cli, layout.AssignmentKey())
			}
			s := waitFor(t, sub, "the delete seen", func(s *Snapshot) bool {
				return s.AssignmentModRevision == 0 && (!tc.relist || len(s.Nodes) == 1)
			})
			if tc.relist && w.Status().Relists < 1 {
				t.Fatalf("no relist: %+v", w.Status())
			}
			if tc.want == 0 {
				if s.Assignment != nil || s.AssignmentError != nil {
					t.Fatalf("no valid value before the delete: assignment %v, error %v", s.Assignment, s.AssignmentError)
				}
				return
			}
			if s.Assignment == nil || s.Assignment.Version != tc.want || !errors.Is(s.AssignmentError, ErrAssignmentDeleted) {
				t.Fatalf("after the delete: assignment %v, error %v; want version %d kept and ErrAssignmentDeleted", s.Assignment, s.AssignmentError, tc.want)
			}
			// Written again: the error clears.
			rev := put(t, cli, layout.AssignmentKey(), assignment(tc.want+1, "n1").Encode())
			waitFor(t, sub, "written again", func(s *Snapshot) bool {
				return s.AssignmentModRevision == rev && s.AssignmentError == nil && s.Assignment.Version == tc.want+1
			})
		})
	}
}

// Each node's lease is in the snapshot: the lease of the value in Nodes
// (an invalid value under another lease keeps the last valid one's), gone
// with the key.
func TestNodeLeases(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	grant := func() clientv3.LeaseID {
		l, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		return l.ID
	}
	l1, l2 := grant(), grant()
	putLease := func(key string, value []byte, lease clientv3.LeaseID) {
		if _, err := cli.Put(ctx, key, string(value), clientv3.WithLease(lease)); err != nil {
			t.Fatal(err)
		}
	}
	putLease(layout.NodeKey("n1"), node("n1").Encode(), l1)
	w := startWatcher(t, cli, nil, nil)
	if got := w.Snapshot().NodeLeases["n1"]; got != l1 {
		t.Fatalf("listed: lease %x, want %x", got, l1)
	}
	sub := w.Subscribe()
	defer sub.Close()
	next(t, sub)
	for _, tc := range []struct {
		name  string
		do    func()
		check func(*Snapshot) bool
	}{
		{"an invalid value under another lease keeps the valid one's", func() { putLease(layout.NodeKey("n1"), []byte(`{}`), l2) },
			func(s *Snapshot) bool { return s.NodeErrors["n1"] != nil && s.NodeLeases["n1"] == l1 }},
		{"a valid value under another lease", func() { putLease(layout.NodeKey("n1"), node("n1").Encode(), l2) },
			func(s *Snapshot) bool { return s.NodeErrors["n1"] == nil && s.NodeLeases["n1"] == l2 }},
		{"a registration without a lease", func() { put(t, cli, layout.NodeKey("n2"), node("n2").Encode()) },
			func(s *Snapshot) bool { l, ok := s.NodeLeases["n2"]; return ok && l == 0 && len(s.NodeLeases) == 2 }},
		{"a node that never had a valid value has none", func() { putLease(layout.NodeKey("n3"), []byte(`{}`), l1) },
			func(s *Snapshot) bool { _, ok := s.NodeLeases["n3"]; return s.NodeErrors["n3"] != nil && !ok }},
		{"a delete removes it", func() { del(t, cli, layout.NodeKey("n1")) },
			func(s *Snapshot) bool { _, ok := s.NodeLeases["n1"]; return !ok && len(s.NodeLeases) == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.do()
			waitFor(t, sub, tc.name, tc.check)
		})
	}
}

// Connected means the watch stream is up, not only that a list answered:
// between the list and the watch's creation it is still false, and it
// turns true once the stream is created.
func TestConnectedOnlyOnceTheWatchIsUp(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	var afterList atomic.Value
	var wp atomic.Pointer[Watcher]
	hook := func(int64) {
		if w := wp.Load(); w != nil {
			afterList.Store(w.Status().Connected)
		}
	}
	w := New(Config{Client: cli, Layout: layout, Logger: zap.NewNop(), ProgressInterval: 100 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	w.testHookAfterList = hook
	wp.Store(w)
	w.Start()
	t.Cleanup(w.Stop)
	testutil.Eventually(t, 5*time.Second, "listed", func() bool { return afterList.Load() != nil })
	if got, _ := afterList.Load().(bool); got {
		t.Fatal("Connected right after the list, before the watch stream was created")
	}
	testutil.Eventually(t, 5*time.Second, "connected once the watch is up", func() bool { return w.Status().Connected })
}

// A deleted settings key keeps the last valid settings (drains and pins
// are not lost to a slip), under the watch and when it is found by a
// re-list after a broken stream.
func TestDeletedSettingsKeepTheLastGoodOnes(t *testing.T) {
	drained := schema.Settings{Drained: []string{"n1"}}
	for _, tc := range []struct {
		name   string
		relist bool
	}{{"deleted under the watch", false}, {"deleted while the watch was broken", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			put(t, cli, layout.SettingsKey(), drained.Encode())
			var hook func(int64)
			if tc.relist {
				hook = deleteBeforeTheWatch(t, cli, layout.SettingsKey())
			}
			w := startWatcher(t, cli, nil, hook)
			sub := w.Subscribe()
			defer sub.Close()
			if !tc.relist {
				waitFor(t, sub, "the settings", func(s *Snapshot) bool { return s.Settings.IsDrained("n1") && s.SettingsModRevision != 0 })
				del(t, cli, layout.SettingsKey())
			}
			s := waitFor(t, sub, "the delete seen", func(s *Snapshot) bool {
				return s.SettingsModRevision == 0 && s.SettingsError != nil && (!tc.relist || len(s.Nodes) == 1)
			})
			if !s.Settings.IsDrained("n1") || !errors.Is(s.SettingsError, ErrSettingsDeleted) {
				t.Fatalf("after the delete: settings %+v, error %v", s.Settings, s.SettingsError)
			}
			if tc.relist && w.Status().Relists < 1 {
				t.Fatalf("no relist: %+v", w.Status())
			}
		})
	}
}

// deleteBeforeTheWatch returns a list hook that, between the watcher's
// first list and its watch, deletes key and compacts it away (writing node
// n1 to have a revision to compact to), so the watch fails and the watcher
// learns of the delete by listing again.
func deleteBeforeTheWatch(t *testing.T, cli *clientv3.Client, key string) func(int64) {
	var lists atomic.Int32
	return func(int64) {
		if lists.Add(1) != 1 {
			return
		}
		del(t, cli, key)
		last := put(t, cli, layout.NodeKey("n1"), node("n1").Encode())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := cli.Compact(ctx, last); err != nil {
			t.Errorf("compact: %v", err)
		}
	}
}
