package main

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

func spread(a *schema.Assignment, nodes ...string) int {
	c := a.Counts()
	lo, hi := 256, 0
	for _, n := range nodes {
		lo, hi = min(lo, c[n]), max(hi, c[n])
	}
	return hi - lo
}

// After a whole-cluster restart longer than the TTL (every registration
// gone), the first node back does not get every bucket: the monitor waits
// -settle for the others, and each gets its own buckets back (no move).
func TestColdStartGivesEachNodeItsOwnBucketsBack(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	leases := map[string]clientv3.LeaseID{}
	for _, n := range []string{"n1", "n2", "n3"} {
		leases[n] = registerNode(t, cli, n)
	}
	settle := func(m *monitor) { m.settle = 2 * time.Second }
	tm := startMonitor(t, c, "mon-a", nil, settle)
	first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	// The whole cluster goes down, monitors included, for longer than the
	// TTL: every registration is gone.
	tm.stop()
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := cli.Revoke(ctxT(t), leases[n]); err != nil {
			t.Fatal(err)
		}
	}
	startMonitor(t, c, "mon-b", nil, settle)
	time.Sleep(300 * time.Millisecond)
	registerNode(t, cli, "n1") // the first one back
	time.Sleep(500 * time.Millisecond)
	if a := getAssignment(t, cli); a.Version != first.Version {
		t.Fatalf("the first node back got buckets at once (version %d -> %d, n1 owns %d)", first.Version, a.Version, len(a.Owned("n1")))
	}
	registerNode(t, cli, "n2")
	registerNode(t, cli, "n3")
	time.Sleep(2500 * time.Millisecond) // past the settle wait
	if a := getAssignment(t, cli); a.Owners != first.Owners {
		t.Fatalf("owners changed after a cold start: %d moves", len(ownerDiff(first, a)))
	}
}

// A rolling restart with clean stops: the nodes leave and come back one
// after another; nothing is evened while the membership changes, and once
// it is quiet for -rebalance-after the counts are even again, with the
// fewest moves the restart allows: each stopping node's buckets move once
// (a clean stop hands every one off), nothing else moves meanwhile, and
// the final rebalance makes the fewest moves that even the counts.
func TestRollingRestartEndsBalanced(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	nodes := []string{"n1", "n2", "n3"}
	leases := map[string]clientv3.LeaseID{}
	for _, n := range nodes {
		leases[n] = registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil, func(m *monitor) { m.rebalanceAfter = 2 * time.Second })
	start, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	oc := countOwnerChanges(t, cli, start)
	startAcker(t, cli)
	shed := 0 // the buckets each node held when it stopped: they must move
	for _, n := range nodes {
		shed += len(getAssignment(t, cli).Owned(n))
		if _, err := cli.Revoke(ctxT(t), leases[n]); err != nil { // it stops
			t.Fatal(err)
		}
		waitAssignment(t, cli, n+"'s buckets moved", func(a *schema.Assignment) bool { return len(a.Owned(n)) == 0 && settled(a) })
		leases[n] = registerNode(t, cli, n) // and comes back, empty
		time.Sleep(300 * time.Millisecond)
		if a := getAssignment(t, cli); len(a.Owned(n)) != 0 {
			t.Fatalf("%s got buckets at once, while the restart goes on", n)
		}
	}
	beforeRebalance := getAssignment(t, cli)
	if got := oc.seen(t, beforeRebalance); got != shed {
		t.Fatalf("%d owner changes during the restart; want %d, the stopping nodes' buckets, each once", got, shed)
	}
	a, took := waitAssignment(t, cli, "balanced after the restart", func(a *schema.Assignment) bool {
		return settled(a) && spread(a, nodes...) <= 1
	})
	total := oc.seen(t, a)
	if final, least := total-shed, minBalanceMoves(beforeRebalance.Counts(), nodes); final != least {
		t.Fatalf("the final rebalance made %d owner changes from counts %v; the fewest possible is %d", final, beforeRebalance.Counts(), least)
	}
	t.Logf("balanced %v after the last node came back: %v; %d moves, %d of them handed off by the stops",
		took.Round(10*time.Millisecond), a.Counts(), total, shed)
}
