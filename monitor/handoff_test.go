package main

import (
	"context"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// acker plays the registrars of nodes that release at once: it watches
// the assignment and acknowledges every move in progress whose old owner
// is not in silent.
type acker struct {
	mu     sync.Mutex
	silent map[string]bool
	acked  int
}

func startAcker(t *testing.T, cli *clientv3.Client, silent ...string) *acker {
	t.Helper()
	a := &acker{silent: map[string]bool{}}
	for _, n := range silent {
		a.silent[n] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	wch := cli.Watch(ctx, layout.AssignmentKey())
	ack := func(value []byte, modRev int64) {
		asg, err := schema.ParseAssignment(value)
		if err != nil {
			return
		}
		for b, m := range asg.Moving {
			a.mu.Lock()
			skip := a.silent[m.From]
			a.mu.Unlock()
			if skip {
				continue
			}
			key := layout.ReleasedKey(b)
			// Once per move: only if no acknowledgement is there and the
			// move is still in progress (the assignment is as read).
			txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
				clientv3.Compare(clientv3.ModRevision(layout.AssignmentKey()), "=", modRev)).
				Then(clientv3.OpPut(key, string(schema.Released{From: m.From, Epoch: m.Epoch}.Encode()))).Commit()
			if err == nil && txn.Succeeded {
				a.mu.Lock()
				a.acked++
				a.mu.Unlock()
			}
		}
	}
	latest := func() {
		if resp, err := cli.Get(ctx, layout.AssignmentKey()); err == nil && len(resp.Kvs) > 0 {
			ack(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
		}
	}
	latest()
	go func() {
		// Like a registrar, act on the latest assignment, not on each
		// event: an old event's moves may have committed already.
		for range wch {
			latest()
		}
	}()
	return a
}

func (a *acker) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acked
}

// settled: no move in progress or queued.
func settled(a *schema.Assignment) bool { return len(a.Moving) == 0 && len(a.Queued) == 0 }

func TestHandoffAbortsWithoutReleaseAndKeepsTheBucket(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2"} {
		registerNode(t, cli, n)
	}
	limits := func(m *monitor) {
		m.limits = handoff.Limits{MaxMoving: 16, MaxMovingPerNode: 8, Timeout: 500 * time.Millisecond}
		m.cooldownFor = time.Hour
	}
	monA := startMonitor(t, c, "mon-a", nil, limits)
	first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	startAcker(t, cli, "n1") // n1's server never releases

	resp, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpPin, Bucket: first.Owned("n1")[0].String(), Node: "n2"})
	if err != nil || len(resp.Started) != 1 {
		t.Fatalf("pin: %+v %v", resp, err)
	}
	b := resp.Started[0].Bucket
	moving, _ := waitAssignment(t, cli, "move started", func(a *schema.Assignment) bool { _, ok := a.Moving[b]; return ok })
	if moving.Owners[b] != "n1" {
		t.Fatalf("owner changed before any release: %s", moving.Owners[b])
	}
	aborted, took := waitAssignment(t, cli, "move aborted", func(a *schema.Assignment) bool { _, ok := a.Moving[b]; return !ok })
	t.Logf("aborted after %v", took)
	if aborted.Owners[b] != "n1" || aborted.Epochs[b] != first.Epochs[b] || aborted.Queued[b].To != "n2" {
		t.Fatalf("after abort: owner %s epoch %d (was %d), queued %+v", aborted.Owners[b], aborted.Epochs[b], first.Epochs[b], aborted.Queued[b])
	}
	// The cooldown keeps it from starting again.
	time.Sleep(time.Second)
	if a := getAssignment(t, cli); len(a.Moving) != 0 || a.Owners[b] != "n1" {
		t.Fatalf("restarted during the cooldown: moving %v", a.Moving)
	}

	// A new leader did not see the abort, but the queued entry's
	// aborted_version tells it: the bucket rests under it too.
	monA.stop()
	logs, observed := observer.New(zap.InfoLevel)
	startMonitor(t, c, "mon-b", zap.New(logs), limits)
	testutil.Eventually(t, 10*time.Second, "mon-b restores the cooldown", func() bool {
		return observed.FilterMessage("a handoff aborted under another leader: the bucket rests before it is tried again").Len() == 1
	})
	testutil.Consistently(t, time.Second, "the bucket rests under the new leader", func() bool {
		a := getAssignment(t, cli)
		return len(a.Moving) == 0 && a.Owners[b] == "n1" && a.Queued[b].AbortedVersion == aborted.Version
	})
}

func TestHandoffCommitsAtOnceWhenTheOldOwnerDies(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	leases := map[string]clientv3.LeaseID{}
	for _, n := range []string{"n1", "n2"} {
		leases[n] = registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil)
	first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	var b bucket.Bucket = first.Owned("n1")[0]
	if _, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpPin, Bucket: b.String(), Node: "n2"}); err != nil {
		t.Fatal(err)
	}
	waitAssignment(t, cli, "move started", func(a *schema.Assignment) bool { _, ok := a.Moving[b]; return ok })
	if _, err := cli.Revoke(ctxT(t), leases["n1"]); err != nil { // n1 dies (it fenced itself)
		t.Fatal(err)
	}
	done, _ := waitAssignment(t, cli, "n1's buckets moved", func(a *schema.Assignment) bool { return len(a.Owned("n1")) == 0 })
	if done.Owners[b] != "n2" || !settled(done) || done.Epochs[b] != done.Version {
		t.Fatalf("owner %s, moving %v, epoch %d of version %d", done.Owners[b], done.Moving, done.Epochs[b], done.Version)
	}
}

func TestHandoffRetargetsWhenTheTargetDies(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	leases := map[string]clientv3.LeaseID{}
	for _, n := range []string{"n1", "n2", "n3"} {
		leases[n] = registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil)
	waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	ack := startAcker(t, cli, "n1") // n1 holds on while its target dies
	if _, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpDrain, Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	started, _ := waitAssignment(t, cli, "moves started", func(a *schema.Assignment) bool { return len(a.Moving) > 0 })
	if _, err := cli.Revoke(ctxT(t), leases["n2"]); err != nil {
		t.Fatal(err)
	}
	re, _ := waitAssignment(t, cli, "re-targeted", func(a *schema.Assignment) bool {
		for _, m := range a.Moving {
			if m.To == "n2" {
				return false
			}
		}
		return len(a.Owned("n2")) == 0
	})
	for b, m := range re.Moving {
		if m.From != "n1" || m.To != "n3" || re.Owners[b] != "n1" {
			t.Fatalf("bucket %s: %+v owner %s", b, m, re.Owners[b])
		}
		if old, ok := started.Moving[b]; ok && old.Epoch != m.Epoch {
			t.Fatalf("bucket %s: re-targeting changed the epoch %d -> %d", b, old.Epoch, m.Epoch)
		}
	}
	// n1 releases now: every bucket ends on n3.
	ack.mu.Lock()
	ack.silent = map[string]bool{}
	ack.mu.Unlock()
	// The acker only reacts to assignment writes; ack what is moving now.
	now := getAssignment(t, cli)
	for b, m := range now.Moving {
		cli.Put(ctxT(t), layout.ReleasedKey(b), string(schema.Released{From: m.From, Epoch: m.Epoch}.Encode()))
	}
	end, _ := waitAssignment(t, cli, "drain finished", func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("n1")) == 0 })
	if !countsAre(end, map[string]int{"n3": 256}) {
		t.Fatalf("counts %v", end.Counts())
	}
}
