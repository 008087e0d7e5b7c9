package main

import (
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// A burst of changes while the leader is busy costs a few rounds, not one
// per change: the lead loop reconciles the latest state, not each queued
// intermediate one.
func TestLeaderReconcilesTheLatestStateNotEachQueuedOne(t *testing.T) {
	const burst = 100
	c := etcdtest.Start(t)
	cli := c.Client(t)
	lease := registerNode(t, cli, "n1")
	registerNode(t, cli, "n2")
	var mu sync.Mutex
	var steps int
	var newest int64
	slow := func(m *monitor) {
		m.interval = time.Hour // only changes start rounds
		m.testHookStep = func(s *watch.Snapshot) {
			mu.Lock()
			steps++
			if s != nil {
				newest = max(newest, s.Revision)
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond) // a busy round: changes queue meanwhile
		}
	}
	startMonitor(t, c, "mon-a", nil, slow)
	waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	mu.Lock()
	steps = 0
	mu.Unlock()

	// n1's registration changes burst times (its URL), each a new state.
	var last int64
	for i := range burst {
		n := schema.Node{NodeID: "n1", NodeURL: fmt.Sprintf("https://n1-%d.example.com/", i), LocalNodeURL: "http://127.0.0.1:9/"}
		resp, err := cli.Put(ctxT(t), layout.NodeKey("n1"), string(n.Encode()), clientv3.WithLease(lease))
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	testutil.Eventually(t, 20*time.Second, "the leader reconciled the last change", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return newest >= last
	})
	mu.Lock()
	got := steps
	mu.Unlock()
	t.Logf("%d changes, %d rounds", burst, got)
	if got > burst/4 {
		t.Fatalf("%d rounds for %d changes; want the latest state reconciled, not each queued one", got, burst)
	}
}
