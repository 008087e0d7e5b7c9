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

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// A server cut off from etcd (its registrar's connection is cut; the
// server itself stays reachable) fences itself before etcd deletes its
// key; after the monitor reassigns its buckets, it answers nothing for
// them, and the new owners serve them. Under load over all buckets.
func TestPartitionedServerFencesBeforeItsKeyExpires(t *testing.T) {
	c := newCluster(t, options{servers: 3, monitors: 1, save: saveDelay})
	victim := c.servers["s2"]
	owned := c.assignment().Owned("s2")
	if len(owned) == 0 {
		t.Fatal("s2 owns no bucket before the cut: nothing to check")
	}
	keys := c.recordKeys()
	l, stop := startLoad(t, 8, 200000)
	time.Sleep(500 * time.Millisecond) // load running before the cut
	cutAt := time.Now()
	victim.relay.cut()

	var gone keyEvent
	testutil.Eventually(t, ttl+3*time.Second, "etcd deleted s2's key", func() bool {
		var ok bool
		gone, ok = keys.deletion(layout.NodeKey("s2"))
		return ok
	})
	fencedAt := firstFence(victim.fake.Log(), cutAt)
	if fencedAt.IsZero() {
		t.Fatalf("s2's log has no fence after the cut; it holds %d buckets", len(victim.fake.Held()))
	}
	t.Logf("cut at 0: s2 fenced after %v, etcd deleted its key after %v (TTL %v): fenced %v before",
		fencedAt.Sub(cutAt).Round(time.Millisecond), gone.at.Sub(cutAt).Round(time.Millisecond), ttl, gone.at.Sub(fencedAt).Round(time.Millisecond))
	if !fencedAt.Before(gone.at) {
		t.Fatalf("s2 fenced at %v, after etcd deleted its key at %v", stamp(fencedAt), stamp(gone.at))
	}
	a := c.waitAssignment("s2's buckets reassigned", 10*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s2")) == 0 })
	// Asked directly, the old server refuses every one of its old buckets.
	for _, b := range owned {
		if code := get(t, victim.http.URL, b); code != 421 {
			t.Fatalf("s2 answered %d for bucket %s after being fenced", code, b)
		}
	}
	// The new owners serve every one of them, through the proxy.
	servedByOwner(t, a, owned, 10*time.Second)
	time.Sleep(500 * time.Millisecond) // load after the reassignment
	stop()
	l.reportExcept(t, owned)
	// And by its own log, s2 served nothing after it fenced.
	for _, iv := range victim.fake.Log() {
		if iv.Kind == "serve" && iv.Bucket != "" && iv.Start.After(fencedAt) {
			t.Fatalf("s2 served bucket %s at %v, after its fence at %v", iv.Bucket, stamp(iv.Start), stamp(fencedAt))
		}
	}
	c.checkNoOverlap()
}

// firstFence is when a server's log says it fenced, after since (zero:
// it did not).
func firstFence(log []fakeserver.Interval, since time.Time) time.Time {
	for _, iv := range log {
		if iv.Kind == "fence" && iv.Start.After(since) {
			return iv.Start
		}
	}
	return time.Time{}
}

func stamp(t time.Time) string { return t.Format("15:04:05.000") }

// get asks a server directly for bucket b and returns the status.
func get(t *testing.T, url string, b bucket.Bucket) int {
	t.Helper()
	resp, err := http.Get(url + "/dtables/" + uuidOf(b) + "/rows/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// servedByOwner waits until a request for each bucket through the proxy
// is answered 200 by the owner a names.
func servedByOwner(t *testing.T, a *schema.Assignment, buckets []bucket.Bucket, d time.Duration) {
	t.Helper()
	left := slices.Clone(buckets)
	last := map[bucket.Bucket]string{}
	defer func() { // runs on the timeout's Fatal too
		if len(left) > 0 {
			t.Logf("%d not served by their owner; %s (owner %s) last answered %s", len(left), left[0], a.Owners[left[0]], last[left[0]])
		}
	}()
	testutil.Eventually(t, d, "every bucket served by its new owner through the proxy", func() bool {
		left = slices.DeleteFunc(left, func(b bucket.Bucket) bool {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(b)))
			if err != nil {
				last[b] = err.Error()
				return false
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last[b] = fmt.Sprintf("%d %s", resp.StatusCode, body)
			return resp.StatusCode == 200 && strings.Contains(string(body), `"node":"`+a.Owners[b]+`"`)
		})
		return len(left) == 0
	})
}

// SIGKILL of a server (its registrar and the server itself), under load:
// every bucket it owned is served again by another server within TTL + 1 s
// of the kill, and within 1 s of etcd deleting its key (the router's own
// share: the monitor's reassignment and the proxy's routing), by the
// servers' own logs. Requests for the other servers' buckets never fail;
// those for the dead server's buckets may, until then.
func TestCrashedServerBucketsServedAgainWithinTTL(t *testing.T) {
	c := newCluster(t, options{servers: 3, monitors: 1, save: saveDelay})
	victim := c.servers["s3"]
	owned := c.assignment().Owned("s3")
	if len(owned) == 0 {
		t.Fatal("s3 owns no bucket before the crash: nothing to check")
	}
	keys := c.recordKeys()
	l, stop := startLoad(t, 8, 200000)
	time.Sleep(500 * time.Millisecond) // load running before the crash
	killedAt := time.Now()
	victim.reg.Kill()
	victim.http.Close()
	// Besides the load, one prober per dead bucket keeps a request for it
	// in the proxy at all times, so each is served as soon as it can be.
	stopProbes := probe(owned, ttl+5*time.Second)
	defer stopProbes()
	var servedAt map[bucket.Bucket]time.Time
	testutil.Eventually(t, ttl+5*time.Second, "every bucket of s3 served by another server", func() bool {
		servedAt = firstServedElsewhere(c, "s3", owned, killedAt)
		return len(servedAt) == len(owned)
	})
	stopProbes()
	time.Sleep(500 * time.Millisecond) // load after the reassignment
	stop()
	// When etcd expired the lease: a late bucket after a late expiry is
	// etcd's delay (its lessor checks every 500 ms), not the router's. The
	// key's deletion precedes any reassignment, so the watch has it by now
	// but for its own lag.
	var gone keyEvent
	testutil.Eventually(t, 2*time.Second, "etcd deleted s3's key (as the watch saw it)", func() bool {
		var ok bool
		gone, ok = keys.deletion(layout.NodeKey("s3"))
		return ok
	})
	keyGone := gone.at.Sub(killedAt).Round(time.Millisecond)
	t.Logf("etcd deleted s3's key %v after the kill (TTL %v)", keyGone, ttl)
	var took, routerTook []time.Duration
	for _, b := range owned {
		d, r := servedAt[b].Sub(killedAt), servedAt[b].Sub(gone.at)
		took, routerTook = append(took, d), append(routerTook, r)
		if d > ttl+time.Second {
			t.Errorf("bucket %s served again %v after the kill (etcd deleted the key after %v, the router took %v of it); want within TTL + 1s = %v", b, d.Round(time.Millisecond), keyGone, r.Round(time.Millisecond), ttl+time.Second)
		}
		if r >= time.Second {
			t.Errorf("bucket %s served again %v after etcd deleted s3's key: the router's share; want under 1s", b, r.Round(time.Millisecond))
		}
	}
	t.Logf("all %d buckets of s3 served again after the kill: %s", len(owned), spread(took))
	t.Logf("of which the router's share (after etcd deleted the key): %s", spread(routerTook))
	l.reportExcept(t, owned)
	c.checkNoOverlap()
}

// probe keeps one request for each bucket in flight through the proxy
// (each given up after a second, so a request stuck on a dead server
// never delays the next by much) until the returned stop is called or d
// passes.
func probe(buckets []bucket.Bucket, d time.Duration) (stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	done := make(chan struct{})
	var n int
	for _, b := range buckets {
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			for ctx.Err() == nil {
				rctx, rcancel := context.WithTimeout(ctx, time.Second)
				req, _ := http.NewRequestWithContext(rctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(b)), nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				} else {
					time.Sleep(10 * time.Millisecond)
				}
				rcancel()
			}
		}()
	}
	return func() {
		cancel()
		for ; n > 0; n-- {
			<-done
		}
	}
}

// firstServedElsewhere returns, per bucket, when a server other than gone
// first started serving a request for it after since (by the servers'
// logs); buckets not served yet are left out.
func firstServedElsewhere(c *cluster, gone string, buckets []bucket.Bucket, since time.Time) map[bucket.Bucket]time.Time {
	want := map[string]bucket.Bucket{}
	for _, b := range buckets {
		want[b.String()] = b
	}
	out := map[bucket.Bucket]time.Time{}
	for name, s := range c.servers {
		if name == gone {
			continue
		}
		for _, iv := range s.fake.Log() {
			b, ok := want[iv.Bucket]
			if !ok || iv.Kind != "serve" || !iv.Start.After(since) {
				continue
			}
			if first, seen := out[b]; !seen || iv.Start.Before(first) {
				out[b] = iv.Start
			}
		}
	}
	return out
}

// spread summarizes durations: count, p50, p99, max.
func spread(d []time.Duration) string {
	if len(d) == 0 {
		return "none"
	}
	d = slices.Clone(d)
	slices.Sort(d)
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return fmt.Sprintf("%d: p50 %v, p99 %v, max %v", len(d), r(d[len(d)/2]), r(d[len(d)*99/100]), r(d[len(d)-1]))
}

// A server that never acknowledges a release, under load: the handoff
// lasts the whole -handoff-timeout and aborts; the bucket keeps its owner
// and epoch. Meanwhile the proxy holds the bucket's requests (handoff_wait,
// 5 s, outlasts the 2 s timeout), and on the abort sends them to the old
// owner: none fails (README, "Handoffs").
func TestUnacknowledgedHandoffAbortsAndTheBucketStaysServed(t *testing.T) {
	const timeout = 2 * time.Second
	c := newCluster(t, options{servers: 2, monitors: 1, save: saveDelay, refuse: map[string]bool{"s1": true},
		monArgs: []string{"-handoff-timeout", timeout.String(), "-handoff-cooldown", "1h"}})
	before := c.assignment()
	b := before.Owned("s1")[0]
	keys := c.recordKeys()
	l, stop := startLoad(t, 8, 200000)
	time.Sleep(500 * time.Millisecond) // load running before the move
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := monitorapi.Send(ctx, c.cli, layout, monitorapi.Request{Op: monitorapi.OpPin, Bucket: b.String(), Node: "s2"})
	if err != nil || len(resp.Started) != 1 {
		t.Fatalf("pin: %+v %v", resp, err)
	}
	var started, ended keyEvent
	var since time.Time // when the monitor started the move (MoveState.Since)
	var after *schema.Assignment
	testutil.Eventually(t, timeout+5*time.Second, "the move started and ended", func() bool {
		as, evs := keys.assignments()
		started, ended = keyEvent{}, keyEvent{}
		for i, a := range as {
			_, moving := a.Moving[b]
			switch {
			case moving && started.rev == 0:
				started, since = evs[i], a.Moving[b].Since
			case !moving && started.rev != 0:
				ended, after = evs[i], a
				return true
			}
		}
		return false
	})
	took := ended.at.Sub(since) // the monitor times the move from Since
	t.Logf("bucket %s moving for %v (timeout %v); the watch saw it start %v after Since", b, took.Round(time.Millisecond), timeout, started.at.Sub(since).Round(time.Millisecond))
	if took < timeout {
		t.Errorf("the move ended after %v, before the %v timeout", took, timeout)
	}
	if after.Owners[b] != "s1" || after.Epochs[b] != before.Epochs[b] {
		t.Fatalf("bucket %s is on %s at epoch %d after the abort; want s1 at %d", b, after.Owners[b], after.Epochs[b], before.Epochs[b])
	}
	// The monitor logs the abort after its write returns, and the line
	// comes through a pipe: it may trail the write we saw.
	testutil.Eventually(t, 2*time.Second, "the monitor logged the abort of "+b.String()+" for the timeout", func() bool {
		return loggedAbort(c.mons["mon-a"].Output(), b)
	})
	time.Sleep(500 * time.Millisecond) // load after the abort
	stop()
	l.report(t)
	held := time.Duration(l.slowest[b].Load())
	t.Logf("the longest request for %s took %v: held while it moved", b, held.Round(time.Millisecond))
	if held < timeout-500*time.Millisecond {
		t.Errorf("no request for %s was held through the move (longest %v)", b, held)
	}
	// By s1's log: nothing served while the move was on (held by the
	// proxy; 300 ms of slack for the watches), served after the abort.
	during, afterwards := 0, 0
	for _, iv := range c.servers["s1"].fake.Log() {
		switch {
		case iv.Kind != "serve" || iv.Bucket != b.String():
		case iv.Start.After(started.at.Add(300*time.Millisecond)) && iv.Start.Before(ended.at.Add(-300*time.Millisecond)):
			during++
		case iv.Start.After(ended.at):
			afterwards++
		}
	}
	if during > 0 || afterwards == 0 {
		t.Errorf("s1 served %s %d times during the move (want 0: held) and %d after it (want some)", b, during, afterwards)
	}
	for _, iv := range c.servers["s2"].fake.Log() {
		if iv.Bucket == b.String() {
			t.Fatalf("s2 %s bucket %s at %v, though the move was aborted", iv.Kind, b, stamp(iv.Start))
		}
	}
	c.checkNoOverlap()
}

// loggedAbort tells whether a monitor's output has the warning of an
// abort for the timeout that names bucket b.
func loggedAbort(out string, b bucket.Bucket) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "handoff aborted: the old owner did not release in time") && strings.Contains(line, `"`+b.String()+`"`) {
			return true
		}
	}
	return false
}

// The leading monitor killed while handoffs are in flight, under load: the
// other monitor takes over, writes the assignment, and every move in flight
// at the kill commits or aborts; no bucket is ever held or served by two
// servers (holds and requests, by the servers' logs).
func TestLeaderKilledMidRebalance(t *testing.T) {
	c := newCluster(t, options{servers: 3, monitors: 2, save: saveDelay})
	// Unbalance it: s1 gets every bucket (a drain of s2 and s3, undrained).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, op := range []monitorapi.Request{{Op: monitorapi.OpDrain, Node: "s2"}, {Op: monitorapi.OpDrain, Node: "s3"}} {
		if _, err := monitorapi.Send(ctx, c.cli, layout, op); err != nil {
			t.Fatal(err)
		}
	}
	c.waitAssignment("drained", 60*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s1")) == 256 })
	// The load starts now (the drain is only the setup), and makes every
	// bucket dirty before the rebalance.
	l, stop := startLoad(t, 8, 200000)
	time.Sleep(500 * time.Millisecond)
	for _, op := range []monitorapi.Request{{Op: monitorapi.OpUndrain, Node: "s2"}, {Op: monitorapi.OpUndrain, Node: "s3"}} {
		if _, err := monitorapi.Send(ctx, c.cli, layout, op); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := monitorapi.Send(ctx, c.cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance})
	if err != nil || len(resp.Queued) == 0 {
		t.Fatalf("rebalance: %+v %v", resp, err)
	}
	leader, other := resp.Leader, ""
	for name := range c.mons {
		if name != leader {
			other = name
		}
	}
	c.waitAssignment("some moves committed", 30*time.Second, func(a *schema.Assignment) bool { return len(a.Owned("s1")) < 250 })
	keys := c.recordKeys()
	c.mons[leader].Kill()
	c.mons[leader].Wait(t, 5*time.Second)
	t.Logf("killed the leader %s", leader)
	a := c.waitAssignment("rebalance finished by the other monitor", 60*time.Second, func(a *schema.Assignment) bool {
		return settled(a) && len(a.Owned("s1")) == 86
	})
	// The key log, once it has the final assignment, from the assignment at
	// its start on. A write the killed leader sent before the kill may still
	// commit after it; none may come after the other monitor's first write
	// (the other cannot lead before the leader's session, 2 s, ends).
	var as []*schema.Assignment
	var revs []int64
	testutil.Eventually(t, 5*time.Second, "the key log has the final assignment", func() bool {
		got, evs := keys.assignments()
		as, revs = nil, nil
		if start, err := schema.ParseAssignment(keys.start.value); err == nil {
			as, revs = append(as, start), append(revs, keys.start.rev)
		}
		for i, w := range got {
			as, revs = append(as, w), append(revs, evs[i].rev)
		}
		return len(as) > 0 && as[len(as)-1].Version >= a.Version
	})
	lastByLeader, firstByOther := -1, -1
	for i, w := range as {
		switch updatedBy(w) {
		case leader:
			lastByLeader = i
		case other:
			if firstByOther < 0 {
				firstByOther = i
			}
		}
	}
	if lastByLeader < 0 || firstByOther < 0 {
		t.Fatalf("in %d assignments from the kill on: last by the killed leader %s at %d, first by %s at %d; want both", len(as), leader, lastByLeader, other, firstByOther)
	}
	if lastByLeader > firstByOther {
		t.Fatalf("the killed leader %s wrote version %d (revision %d) after %s's first write, version %d (revision %d)",
			leader, as[lastByLeader].Version, revs[lastByLeader], other, as[firstByOther].Version, revs[firstByOther])
	}
	// The state at the kill: the killed leader's last write.
	atKill := as[lastByLeader]
	if len(atKill.Moving) == 0 {
		t.Fatalf("no move in flight in the killed leader's last write (version %d)", atKill.Version)
	}
	t.Logf("the killed leader's last write (version %d, revision %d) had %d moves in flight and %d queued; %s's first write is version %d (revision %d)",
		atKill.Version, revs[lastByLeader], len(atKill.Moving), len(atKill.Queued), other, as[firstByOther].Version, revs[firstByOther])
	committed, aborted := 0, 0
	for b := range atKill.Moving {
		if a.Owners[b] == atKill.Owners[b] {
			aborted++
		} else {
			committed++
		}
	}
	t.Logf("%s took over; of the %d moves in flight at the kill, %d committed, %d aborted", other, len(atKill.Moving), committed, aborted)
	time.Sleep(500 * time.Millisecond) // load after it
	stop()
	l.report(t)
	c.checkNoOverlap()
}

func updatedBy(a *schema.Assignment) string { return strings.Trim(string(a.Extra["updated_by"]), `"`) }

// Handoff scenarios under load: a rebalance, a drain and a clean stop.
// Requests (GET and POST) go on over all 256 buckets the whole time; none
// may fail, no bucket may be on two servers at once, and every planned
// move is a handoff whose duration is reported.
func TestHandoffsUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name string
		// do makes the change and returns how many moves it planned.
		do func(t *testing.T, c *cluster) int
	}{
		{"rebalance", func(t *testing.T, c *cluster) int {
			// s4 joins empty; a rebalance gives it its share.
			s := &server{name: "s4", fake: fakeserver.New(fakeserver.Config{Name: "s4", Strict: true, SaveDelay: saveDelay})}
			s.http = httptest.NewServer(s.fake)
			t.Cleanup(s.http.Close)
			s.relay = newRelay(t, strings.TrimPrefix(c.etcd.Endpoints()[0], "http://"))
			c.servers["s4"] = s
			c.startRegistrar(s)
			testutil.Eventually(t, 10*time.Second, "s4 registered", func() bool {
				r, err := c.cli.Get(context.Background(), layout.NodeKey("s4"))
				return err == nil && len(r.Kvs) == 1
			})
			resp := c.operate(t, monitorapi.Request{Op: monitorapi.OpRebalance})
			c.waitAssignment("rebalanced", 60*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s4")) == 64 })
			return len(resp.Moves)
		}},
		{"drain", func(t *testing.T, c *cluster) int {
			resp := c.operate(t, monitorapi.Request{Op: monitorapi.OpDrain, Node: "s1"})
			c.waitAssignment("drained", 60*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s1")) == 0 })
			return len(resp.Moves)
		}},
		{"clean stop", func(t *testing.T, c *cluster) int {
			owned := c.assignment().Owned("s2")
			keys := c.recordKeys()
			s := c.servers["s2"]
			s.reg.Signal(syscall.SIGTERM)
			code := s.reg.Wait(t, 40*time.Second)
			checkCleanStop(t, c, keys, "s2", owned, code, time.Now())
			return len(owned)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, options{servers: 3, monitors: 1, save: saveDelay})
			l, stop := startLoad(t, 8, 200000)
			time.Sleep(500 * time.Millisecond) // load running before the change
			start := time.Now()
			planned := tc.do(t, c)
			t.Logf("%s done in %v", tc.name, time.Since(start).Round(time.Millisecond))
			time.Sleep(500 * time.Millisecond) // and after it
			stop()
			l.report(t)
			c.checkHandoffs(t, planned)
			c.checkNoOverlap()
		})
	}
}

// checkCleanStop checks a node's clean stop by etcd's history and its
// server's log: the node was marked leaving, every bucket it owned was
// released by its server (saved, none fenced or dropped) and committed
// elsewhere, and only then was its lease revoked (the key's delete comes
// after the last assignment that gave a bucket of it away, and no later
// than 500 ms after its registrar exited with code 0: an expired lease,
// TTL after the last keepalive, cannot pass for a revoke). code and exited
// are the registrar's exit code and when it was seen to exit.
func checkCleanStop(t *testing.T, c *cluster, keys *keyLog, node string, owned []bucket.Bucket, code int, exited time.Time) {
	t.Helper()
	if code != 0 {
		t.Errorf("%s's registrar exited with code %d on SIGTERM; want 0", node, code)
	}
	var gone keyEvent
	testutil.Eventually(t, 5*time.Second, node+"'s key deleted", func() bool {
		var ok bool
		gone, ok = keys.deletion(layout.NodeKey(node))
		return ok
	})
	leaving := false
	for _, ev := range keys.of(layout.NodeKey(node)) {
		leaving = leaving || strings.Contains(string(ev.value), `"leaving"`)
	}
	if !leaving {
		t.Errorf("%s was never marked leaving", node)
	}
	var lastLeft int64 // the revision at which the node's last bucket left it
	as, evs := keys.assignments()
	for i, a := range as {
		if len(a.Owned(node)) == 0 {
			lastLeft = evs[i].rev
			break
		}
	}
	t.Logf("%s's last bucket left it at revision %d; its key was deleted at revision %d", node, lastLeft, gone.rev)
	if lastLeft == 0 || gone.rev <= lastLeft {
		t.Errorf("%s's lease was revoked (revision %d) before its last bucket left it (revision %d)", node, gone.rev, lastLeft)
	}
	t.Logf("%s's key was deleted %v after its registrar exited", node, gone.at.Sub(exited).Round(time.Millisecond))
	if gone.at.After(exited.Add(500 * time.Millisecond)) {
		t.Errorf("%s's key was deleted %v after its registrar exited (TTL %v): expired, not revoked", node, gone.at.Sub(exited).Round(time.Millisecond), ttl)
	}
	released := map[string]bool{}
	for _, iv := range c.servers[node].fake.Log() {
		if iv.Kind != "hold" {
			continue
		}
		if iv.How != "released" {
			t.Errorf("%s's hold of %s ended %q, not released", node, iv.Bucket, iv.How)
		}
		released[iv.Bucket] = true
	}
	for _, b := range owned {
		if !released[b.String()] {
			t.Errorf("%s never released bucket %s", node, b)
		}
	}
	if len(released) != len(owned) {
		t.Errorf("%s released %d buckets; it owned %d", node, len(released), len(owned))
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

// checkHandoffs checks that every planned move was a handoff whose
// duration was recorded (from the move's start, MoveState.Since, to its
// commit as seen in etcd), and released by the old owner's server, and
// reports the durations and how many releases had dirty bases to save.
func (c *cluster) checkHandoffs(t *testing.T, planned int) {
	t.Helper()
	c.handoffs.mu.Lock()
	took := slices.Clone(c.handoffs.took)
	c.handoffs.mu.Unlock()
	released, saved := 0, 0
	for _, s := range c.servers {
		for _, iv := range s.fake.Log() {
			if iv.Kind == "hold" && iv.How == "released" {
				released++
				if iv.Saved > 0 {
					saved++
				}
			}
		}
	}
	t.Logf("%d moves planned; handoffs committed %s; %d buckets released, %d of them saved dirty bases (%v each)",
		planned, spread(took), released, saved, saveDelay)
	if len(took) != planned || released != planned {
		t.Errorf("%d moves planned, but %d handoff durations recorded and %d buckets released", planned, len(took), released)
	}
	if saved == 0 {
		t.Errorf("no release had a dirty base to save: the load wrote nothing")
	}
}
