package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// A request whose sender gave up (and revoked it) while the leader was
// planning is not carried out: the leader's transaction requires the
// request to be there still.
func TestWithdrawnRequestIsNotCarriedOut(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2"} {
		registerNode(t, cli, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := &schema.Assignment{Version: 1}
	for b := range a.Owners {
		a.Owners[b] = []string{"n1", "n2"}[b%2]
	}
	a.NextEpochs(nil)
	if _, err := cli.Put(ctx, layout.AssignmentKey(), string(a.Encode())); err != nil {
		t.Fatal(err)
	}
	// This test is the leader: an election key it holds, and a monitor
	// that is not running (so that nothing else handles the request).
	electionKey := layout.ElectionPrefix() + "/test"
	put, err := cli.Put(ctx, electionKey, "test")
	if err != nil {
		t.Fatal(err)
	}
	l := &leadership{key: electionKey, rev: put.Header.Revision}
	w := watch.New(watch.Config{Client: cli, Layout: layout, Logger: zap.NewNop()})
	w.Start()
	defer w.Stop()
	if _, err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	m := &monitor{cli: cli, layout: layout, watcher: w, id: "test", log: zap.NewNop(),
		limits: handoff.DefaultLimits, cooldown: map[bucket.Bucket]time.Time{}, nodeLeases: newNodeLeases()}
	go m.nodeLeases.follow(ctx, w)

	body, _ := json.Marshal(monitorapi.Request{ID: "r1", Op: monitorapi.OpDrain, Node: "n1"})
	if _, err := cli.Put(ctx, layout.RequestsPrefix()+"r1", string(body)); err != nil {
		t.Fatal(err)
	}
	got, err := cli.Get(ctx, layout.RequestsPrefix()+"r1")
	if err != nil || len(got.Kvs) != 1 {
		t.Fatal(err)
	}
	kv := got.Kvs[0]
	// The sender gives up and withdraws it, after the leader listed it.
	if _, err := cli.Delete(ctx, layout.RequestsPrefix()+"r1"); err != nil {
		t.Fatal(err)
	}
	if err := m.handleRequest(ctx, l, kv); err != nil {
		t.Fatalf("handleRequest: %v", err)
	}
	st, err := cli.Get(ctx, layout.SettingsKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Kvs) != 0 {
		t.Fatalf("a withdrawn drain was carried out: settings %s", st.Kvs[0].Value)
	}
	if r, _ := cli.Get(ctx, layout.ResponsesPrefix()+"r1"); len(r.Kvs) != 0 {
		t.Fatal("a withdrawn request was answered")
	}
	if leases, _ := cli.Leases(ctx); len(leases.Leases) != 2 { // the two nodes' only: no answer lease left behind
		t.Fatalf("%d leases: the answer's lease leaked", len(leases.Leases))
	}
}

// Deleting the settings key by hand does not undo a drain: the monitor
// writes the last valid settings back, and nothing moves onto the node.
func TestDeletedSettingsAreWrittenBack(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2"} {
		registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil, func(m *monitor) { m.rebalanceAfter = 200 * time.Millisecond })
	waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	startAcker(t, cli)
	if _, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpDrain, Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	waitAssignment(t, cli, "drained", func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("n1")) == 0 })
	if _, err := cli.Delete(ctxT(t), layout.SettingsKey()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the settings written back", func() bool {
		r, err := cli.Get(ctxT(t), layout.SettingsKey())
		if err != nil || len(r.Kvs) == 0 {
			return false
		}
		s, err := schema.ParseSettings(r.Kvs[0].Value)
		return err == nil && s.IsDrained("n1")
	})
	time.Sleep(time.Second) // past -rebalance-after: a forgotten drain would move buckets back
	if a := getAssignment(t, cli); len(a.Owned("n1")) != 0 || len(a.Moving) != 0 {
		t.Fatalf("buckets went back to the drained node: n1 owns %d, %d moving", len(a.Owned("n1")), len(a.Moving))
	}
}
