package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// ownerChanges counts every bucket's owner changes over all the assignment
// values written after from (each commit of a move is one).
type ownerChanges struct {
	mu    sync.Mutex
	last  *schema.Assignment
	moves int
}

func countOwnerChanges(t *testing.T, cli *clientv3.Client, from *schema.Assignment) *ownerChanges {
	t.Helper()
	resp, err := cli.Get(ctxT(t), layout.AssignmentKey())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read the assignment: %v", err)
	}
	if a, err := schema.ParseAssignment(resp.Kvs[0].Value); err != nil || a.Version != from.Version {
		t.Fatalf("the assignment changed before the count started: %v", err)
	}
	oc := &ownerChanges{last: from}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	wch := cli.Watch(ctx, layout.AssignmentKey(), clientv3.WithRev(resp.Kvs[0].ModRevision+1))
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				a, err := schema.ParseAssignment(ev.Kv.Value)
				if err != nil {
					continue
				}
				oc.mu.Lock()
				oc.moves += len(ownerDiff(oc.last, a))
				oc.last = a
				oc.mu.Unlock()
			}
		}
	}()
	return oc
}

// seen waits until the counter has followed the writes up to a and
// returns the moves counted.
func (oc *ownerChanges) seen(t *testing.T, a *schema.Assignment) int {
	t.Helper()
	var n int
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("the move counter reaches version %d", a.Version), func() bool {
		oc.mu.Lock()
		defer oc.mu.Unlock()
		n = oc.moves
		return oc.last.Version >= a.Version
	})
	return n
}

// minBalanceMoves is the fewest owner changes that make counts (per node,
// all of nodes eligible) even to a spread of 1: the larger shares go to
// the nodes that hold the most, and only each node's surplus moves.
func minBalanceMoves(counts map[string]int, nodes []string) int {
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b string) int { return counts[b] - counts[a] })
	moves := 0
	for i, n := range sorted {
		target := bucket.Count / len(nodes)
		if i < bucket.Count%len(nodes) {
			target++
		}
		moves += max(0, counts[n]-target)
	}
	return moves
}

// A whole-cluster restart with the monitor running: every node is gone
// (its lease ended) for a while, then they come back one after another
// within -settle of the first. The cluster ends balanced:
//   - if every lease ended at once (one revision), the assignment is left
//     as it is meanwhile and each node gets its own buckets back: nothing
//     moves; if one node stays away, only its buckets move;
//   - if the leases ended one after another, the monitor moved each gone
//     node's buckets to the ones still live, so the last one held them
//     all; once the membership is quiet for -rebalance-after the counts are
//     evened with the fewest moves.
func TestWholeClusterRestartWithARunningMonitorEndsBalanced(t *testing.T) {
	for _, tc := range []struct {
		name      string
		staggered bool // the leases end one after another, not at once
		back      []string
	}{
		{"leases end at once, every node back", false, []string{"n1", "n2", "n3"}},
		{"leases end at once, one node stays away", false, []string{"n1", "n2"}},
		{"leases end one after another, every node back", true, []string{"n1", "n2", "n3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			nodes := []string{"n1", "n2", "n3"}
			leases := registerAll(t, cli, nodes, tc.staggered)
			startMonitor(t, c, "mon-a", nil, func(m *monitor) { m.settle, m.rebalanceAfter = 2*time.Second, 2*time.Second })
			start, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			startAcker(t, cli)         // the servers that come back release what they hand off
			for i, l := range leases { // everything goes down, past the TTL
				if _, err := cli.Revoke(ctxT(t), l); err != nil {
					t.Fatal(err)
				}
				if n := nodes[i]; tc.staggered && i < len(nodes)-1 { // the monitor reacts before the next one ends
					waitAssignment(t, cli, n+"'s buckets moved", func(a *schema.Assignment) bool { return len(a.Owned(n)) == 0 })
				}
			}
			down, _ := waitAssignment(t, cli, "the last one standing owns everything", func(a *schema.Assignment) bool {
				return !tc.staggered || len(a.Owned(nodes[len(nodes)-1])) == bucket.Count && settled(a)
			})
			time.Sleep(500 * time.Millisecond) // the monitor sees no live node
			if a := getAssignment(t, cli); a.Version != down.Version {
				t.Fatalf("the assignment changed with no live node: version %d -> %d", down.Version, a.Version)
			}
			if !tc.staggered && down.Version != start.Version {
				t.Fatalf("leases ending at once moved buckets: version %d -> %d", start.Version, down.Version)
			}
			for _, n := range tc.back { // back one after another, within -settle
				registerNode(t, cli, n)
				time.Sleep(300 * time.Millisecond)
			}
			end, _ := waitAssignment(t, cli, "balanced", func(a *schema.Assignment) bool {
				for _, n := range a.Owners {
					if !slices.Contains(tc.back, n) {
						return false
					}
				}
				return settled(a) && spread(a, tc.back...) <= 1
			})
			moved := ownerDiff(down, end)
			want := minBalanceMoves(down.Counts(), tc.back) // the gone node's buckets count as surplus
			for _, n := range nodes {
				if !slices.Contains(tc.back, n) {
					want = len(down.Owned(n)) + minBalanceMoves(withoutNode(down, n), tc.back)
				}
			}
			if len(moved) != want {
				t.Fatalf("%d moves from counts %v; want %d, the fewest that even them", len(moved), down.Counts(), want)
			}
			t.Logf("%s: %d moves, counts %v", tc.name, len(moved), end.Counts())
		})
	}
}

// registerAll registers nodes, each under its own lease (own) or all under
// one lease, whose end removes their keys in one revision.
func registerAll(t *testing.T, cli *clientv3.Client, nodes []string, own bool) []clientv3.LeaseID {
	t.Helper()
	if own {
		var ls []clientv3.LeaseID
		for _, n := range nodes {
			ls = append(ls, registerNode(t, cli, n))
		}
		return ls
	}
	lease, err := cli.Grant(ctxT(t), 30)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range nodes {
		n := schema.Node{NodeID: id, NodeURL: "https://" + id + ".example.com/", LocalNodeURL: "http://127.0.0.1:9/"}
		if _, err := cli.Put(ctxT(t), layout.NodeKey(id), string(n.Encode()), clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	return []clientv3.LeaseID{lease.ID}
}

// withoutNode is a's counts with node n's buckets shared out as orphans
// would be: each to the node with the fewest.
func withoutNode(a *schema.Assignment, n string) map[string]int {
	counts := a.Counts()
	orphans := counts[n]
	delete(counts, n)
	for range orphans {
		fewest := ""
		for m, k := range counts {
			if fewest == "" || k < counts[fewest] || (k == counts[fewest] && m < fewest) {
				fewest = m
			}
		}
		counts[fewest]++
	}
	return counts
}
