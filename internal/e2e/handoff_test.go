package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// A server cut off from etcd (its registrar's connection is cut; the
// server itself stays reachable) fences itself before its key expires;
// after the monitor reassigns its buckets, it answers nothing for them.
func TestPartitionedServerFencesBeforeItsKeyExpires(t *testing.T) {
	c := newCluster(t, options{servers: 3, monitors: 1, save: 100 * time.Millisecond})
	victim := c.servers["s2"]
	owned := c.assignment().Owned("s2")
	cutAt := time.Now()
	victim.relay.cut()

	// The server drops everything before etcd can delete its key.
	fencedAt := time.Time{}
	testutil.Eventually(t, ttl+2*time.Second, "s2 fenced", func() bool {
		if len(victim.fake.Held()) == 0 {
			fencedAt = time.Now()
			return true
		}
		return false
	})
	a := c.waitAssignment("s2's buckets reassigned", ttl+5*time.Second, func(a *schema.Assignment) bool { return len(a.Owned("s2")) == 0 })
	reassignedAt := time.Now()
	t.Logf("cut at 0: s2 fenced after %v, its buckets reassigned after %v (TTL %v)",
		fencedAt.Sub(cutAt).Round(time.Millisecond), reassignedAt.Sub(cutAt).Round(time.Millisecond), ttl)
	if !fencedAt.Before(reassignedAt) {
		t.Fatalf("s2 was still holding buckets when they were reassigned")
	}
	// Asked directly, the old server refuses every one of its old buckets.
	for _, b := range owned {
		resp, err := http.Get(victim.http.URL + "/dtables/" + uuidOf(b) + "/rows/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 421 {
			t.Fatalf("s2 answered %d for bucket %s after being fenced", resp.StatusCode, b)
		}
	}
	// And the new owners serve them (through the proxy).
	c.waitAssignment("settled", 10*time.Second, settled)
	for _, b := range owned[:10] {
		var last string
		ok := false
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !ok; time.Sleep(20 * time.Millisecond) {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(b)))
			if err != nil {
				last = err.Error()
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
			ok = resp.StatusCode == 200
		}
		if !ok {
			t.Fatalf("bucket %s not served by %s within 5s; last answer: %s; %s holds %v", b, a.Owners[b], last, a.Owners[b], c.servers[a.Owners[b]].fake.Held()[b.String()])
		}
	}
	c.checkNoOverlap()
}

// SIGKILL of a server (its registrar and the server itself): its buckets
// are served again by the others within TTL + 1 s.
func TestCrashedServerBucketsServedAgainWithinTTL(t *testing.T) {
	c := newCluster(t, options{servers: 3, monitors: 1})
	victim := c.servers["s3"]
	owned := c.assignment().Owned("s3")
	victim.reg.Kill()
	victim.http.Close()
	crashed := time.Now()
	probe := owned[0]
	go func() { // when etcd dropped the registration, for the log
		for time.Since(crashed) < ttl+5*time.Second {
			if r, err := c.cli.Get(context.Background(), layout.NodeKey("s3")); err == nil && len(r.Kvs) == 0 {
				t.Logf("s3's key gone %v after the crash", time.Since(crashed).Round(time.Millisecond))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	// Probe every 50 ms, each probe on its own: one that is stuck on the
	// dead server (the proxy retries it) must not delay the next.
	servedAt := make(chan time.Time, 1)
	probeCtx, stopProbes := context.WithTimeout(context.Background(), ttl+5*time.Second)
	defer stopProbes()
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-probeCtx.Done():
				return
			case <-tick.C:
			}
			go func() {
				req, _ := http.NewRequestWithContext(probeCtx, "GET", fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(probe)), nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode == 200 {
					select {
					case servedAt <- time.Now():
					default:
					}
				}
			}()
		}
	}()
	var served time.Time
	select {
	case served = <-servedAt:
	case <-probeCtx.Done():
		t.Fatalf("bucket %s not served again within %v of the crash", probe, ttl+5*time.Second)
	}
	stopProbes()
	took := served.Sub(crashed)
	t.Logf("bucket %s served again %v after the crash (TTL %v)", probe, took.Round(time.Millisecond), ttl)
	if took > ttl+time.Second {
		t.Errorf("served again after %v; want within TTL + 1s = %v", took, ttl+time.Second)
	}
	c.checkNoOverlap()
}

// A server that never acknowledges a release: the handoff aborts after the
// timeout and the bucket stays with it, served.
func TestUnacknowledgedHandoffAbortsAndTheBucketStaysServed(t *testing.T) {
	c := newCluster(t, options{servers: 2, monitors: 1, refuse: map[string]bool{"s1": true},
		monArgs: []string{"-handoff-timeout", "2s", "-handoff-cooldown", "1h"}})
	b := c.assignment().Owned("s1")[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := monitorapi.Send(ctx, c.cli, layout, monitorapi.Request{Op: monitorapi.OpPin, Bucket: b.String(), Node: "s2"})
	if err != nil || len(resp.Started) != 1 {
		t.Fatalf("pin: %+v %v", resp, err)
	}
	c.waitAssignment("move started", 5*time.Second, func(a *schema.Assignment) bool { _, ok := a.Moving[b]; return ok })
	a := c.waitAssignment("move aborted", 10*time.Second, func(a *schema.Assignment) bool { _, ok := a.Moving[b]; return !ok })
	if a.Owners[b] != "s1" {
		t.Fatalf("bucket %s is on %s after the abort", b, a.Owners[b])
	}
	testutil.Eventually(t, 5*time.Second, "bucket served by s1", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(b)))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && strings.Contains(string(body), `"node":"s1"`)
	})
	c.checkNoOverlap()
}

// The leading monitor killed in the middle of a rebalance: the other one
// finishes it; never two owners.
func TestLeaderKilledMidRebalance(t *testing.T) {
	c := newCluster(t, options{servers: 3, monitors: 2, save: 300 * time.Millisecond})
	// Unbalance it: s1 gets most buckets (a drain of s2 and s3, undrained).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, op := range []monitorapi.Request{{Op: monitorapi.OpDrain, Node: "s2"}, {Op: monitorapi.OpDrain, Node: "s3"}} {
		if _, err := monitorapi.Send(ctx, c.cli, layout, op); err != nil {
			t.Fatal(err)
		}
	}
	c.waitAssignment("drained", 60*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s1")) == 256 })
	for _, op := range []monitorapi.Request{{Op: monitorapi.OpUndrain, Node: "s2"}, {Op: monitorapi.OpUndrain, Node: "s3"}} {
		if _, err := monitorapi.Send(ctx, c.cli, layout, op); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := monitorapi.Send(ctx, c.cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance})
	if err != nil || len(resp.Queued) == 0 {
		t.Fatalf("rebalance: %+v %v", resp, err)
	}
	leader := c.mons[resp.Leader]
	c.waitAssignment("some moves committed", 30*time.Second, func(a *schema.Assignment) bool { return len(a.Owned("s1")) < 250 })
	leader.Kill()
	t.Logf("killed the leader %s mid-rebalance", resp.Leader)
	a := c.waitAssignment("rebalance finished by the other monitor", 60*time.Second, func(a *schema.Assignment) bool {
		return settled(a) && len(a.Owned("s1")) == 86
	})
	t.Logf("finished by %s", updatedBy(a))
	c.checkNoOverlap()
}

func updatedBy(a *schema.Assignment) string { return strings.Trim(string(a.Extra["updated_by"]), `"`) }

// handoff scenarios under load: a rebalance, a drain and a clean stop.
// Requests go on over all 256 buckets the whole time; none may fail.
func TestHandoffsUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(t *testing.T, c *cluster)
	}{
		{"rebalance", func(t *testing.T, c *cluster) {
			// s4 joins empty; a rebalance gives it its share.
			s := &server{name: "s4", fake: fakeserver.New(fakeserver.Config{Name: "s4", Strict: true, SaveDelay: 200 * time.Millisecond})}
			s.http = httptest.NewServer(s.fake)
			t.Cleanup(s.http.Close)
			s.relay = newRelay(t, strings.TrimPrefix(c.etcd.Endpoints()[0], "http://"))
			c.servers["s4"] = s
			c.startRegistrar(s)
			testutil.Eventually(t, 10*time.Second, "s4 registered", func() bool {
				r, err := c.cli.Get(context.Background(), layout.NodeKey("s4"))
				return err == nil && len(r.Kvs) == 1
			})
			c.operate(t, monitorapi.Request{Op: monitorapi.OpRebalance})
			c.waitAssignment("rebalanced", 60*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s4")) == 64 })
		}},
		{"drain", func(t *testing.T, c *cluster) {
			c.operate(t, monitorapi.Request{Op: monitorapi.OpDrain, Node: "s1"})
			c.waitAssignment("drained", 60*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s1")) == 0 })
		}},
		{"clean stop", func(t *testing.T, c *cluster) {
			s := c.servers["s2"]
			s.reg.Signal(syscall.SIGTERM)
			s.reg.Wait(t, 40*time.Second)
			a := c.assignment()
			if len(a.Owned("s2")) != 0 {
				t.Fatalf("s2 stopped still owning %d buckets", len(a.Owned("s2")))
			}
			r, err := c.cli.Get(context.Background(), layout.NodeKey("s2"))
			if err != nil || len(r.Kvs) != 0 {
				t.Fatalf("s2's key is still there after its clean stop")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, options{servers: 3, monitors: 1, save: 200 * time.Millisecond})
			l, stop := startLoad(t, 8, 200000)
			time.Sleep(500 * time.Millisecond) // load running before the change
			start := time.Now()
			tc.do(t, c)
			t.Logf("%s done in %v", tc.name, time.Since(start).Round(time.Millisecond))
			time.Sleep(500 * time.Millisecond) // and after it
			stop()
			l.report(t)
			c.reportHandoffs(t)
			c.checkNoOverlap()
		})
	}
}

func (c *cluster) operate(t *testing.T, req monitorapi.Request) *monitorapi.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := monitorapi.Send(ctx, c.cli, layout, req)
	if err != nil {
		t.Fatalf("%s: %v", req.Op, err)
	}
	t.Logf("%s: %d moves, %d started, %d queued, %d waves", req.Op, len(resp.Moves), len(resp.Started), len(resp.Queued), resp.Waves)
	return resp
}

// reportHandoffs logs how long the handoffs took, from the move's start
// (MoveState.Since) to its commit as seen in etcd, and how many buckets
// the old owners released.
func (c *cluster) reportHandoffs(t *testing.T) {
	c.handoffs.mu.Lock()
	d := slices.Clone(c.handoffs.took)
	c.handoffs.mu.Unlock()
	released := 0
	for _, s := range c.servers {
		for _, iv := range s.fake.Log() {
			if iv.Kind == "hold" && iv.How == "released" {
				released++
			}
		}
	}
	if len(d) == 0 {
		t.Logf("no handoff committed; %d buckets released", released)
		return
	}
	slices.Sort(d)
	t.Logf("%d handoffs committed (%d buckets released): p50 %v, p99 %v, max %v", len(d), released,
		d[len(d)/2].Round(time.Millisecond), d[len(d)*99/100].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
}
