package watch

import (
	"context"
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

	put(t, cli, layout.NodeKey("n1"), node("n1").Encode())
	put(t, cli, layout.AssignmentKey(), assignment(4, "n1").Encode())
	waitFor(t, sub, "valid assignment", func(s *Snapshot) bool { return s.Assignment != nil && s.AssignmentError == nil })

	corruptRev := put(t, cli, layout.AssignmentKey(), []byte(`{"version":5,"buckets":{"00":""}}`))
	s = waitFor(t, sub, "corrupt assignment seen", func(s *Snapshot) bool { return s.AssignmentModRevision == corruptRev })
	if s.Assignment == nil || s.Assignment.Version != 4 || !strings.Contains(fmt.Sprint(s.AssignmentError), "empty node id") {
		t.Fatalf("corrupt value replaced the last good assignment: %+v", s)
	}
	put(t, cli, layout.NodeKey("n1"), []byte(`{"node_id":"n1","node_url":"nope"}`))
	s = waitFor(t, sub, "corrupt node seen", func(s *Snapshot) bool { return s.NodeErrors["n1"] != nil })
	if s.Nodes["n1"] != node("n1") {
		t.Fatalf("corrupt node value replaced the last good one: %+v", s.Nodes)
	}
	settings := schema.Settings{Drained: []string{"n1"}}
	put(t, cli, layout.SettingsKey(), settings.Encode())
	waitFor(t, sub, "settings", func(s *Snapshot) bool { return s.Settings.IsDrained("n1") })
	put(t, cli, layout.SettingsKey(), []byte(`{"pins":{"zz":"n1"}}`))
	s = waitFor(t, sub, "corrupt settings", func(s *Snapshot) bool { return s.SettingsError != nil })
	if !s.Settings.IsDrained("n1") {
		t.Fatal("corrupt settings replaced the last good ones")
	}
	put(t, cli, layout.NodeKey("n9"), []byte(`garbage`))
	s = waitFor(t, sub, "corrupt new node", func(s *Snapshot) bool { return s.NodeErrors["n9"] != nil })
	if _, ok := s.Nodes["n9"]; ok {
		t.Fatal("a node that never had a valid value is listed")
	}
	// The log names the key.
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
	// A valid value clears the error.
	put(t, cli, layout.AssignmentKey(), assignment(6, "n1").Encode())
	waitFor(t, sub, "recovered", func(s *Snapshot) bool {
		return s.Assignment.Version == 6 && s.AssignmentError == nil
	})
	// The corrupt value also survives a re-list with the last good state kept.
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

	c.Stop(0)
	deadline := time.Now().Add(10 * time.Second)
	for w.Status().Connected {
		if time.Now().After(deadline) {
			t.Fatal("watcher still reports connected 10s after etcd stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	deadline = time.Now().Add(10 * time.Second)
	for !w.Status().Connected {
		if time.Now().After(deadline) {
			t.Fatalf("not connected after restart: %+v", w.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestThreeMemberClusterLosesAMember(t *testing.T) {
	c := etcdtest.StartMembers(t, 3)
	cli := c.Client(t)
	w := startWatcher(t, cli, nil, nil)
	sub := w.Subscribe()
	defer sub.Close()
	next(t, sub)
	// Stop each member in turn, so whichever one the watcher is connected
	// to goes away at some point; every change is still seen in order.
	version := int64(0)
	for i := range c.Members {
		c.Stop(i)
		c.WaitLeader(t)
		for range 3 {
			version++
			put(t, cli, layout.AssignmentKey(), assignment(version, "n1").Encode())
		}
		want := version
		for v := want - 2; v <= want; v++ {
			s := waitFor(t, sub, fmt.Sprintf("version %d", v), func(s *Snapshot) bool { return s.Assignment != nil })
			if s.Assignment.Version != v {
				t.Fatalf("member %d down: got version %d, want %d", i, s.Assignment.Version, v)
			}
		}
		c.Restart(i)
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
	for i := 0; i < 20; i++ {
		time.Sleep(100 * time.Millisecond)
		if st := w.Status(); !st.Connected {
			t.Fatalf("idle watcher reported disconnected after %dms: %+v", (i+1)*100, st)
		}
	}
}
