package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/planner"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// putLoad publishes a proxy's load report (requests per second per
// bucket) under a lease of ttl seconds, as a proxy would; it returns the
// lease.
func putLoad(t *testing.T, cli *clientv3.Client, proxy string, ttl int64, requests map[bucket.Bucket]float64) clientv3.LeaseID {
	t.Helper()
	r := schema.LoadReport{Proxy: proxy, Interval: time.Second, At: time.Now(), Buckets: map[bucket.Bucket]schema.BucketLoad{}}
	for b, rps := range requests {
		r.Buckets[b] = schema.BucketLoad{Requests: rps}
	}
	lease, err := cli.Grant(ctxT(t), ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctxT(t), layout.LoadKey(proxy), string(r.Encode()), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	return lease.ID
}

// fastLoad are load settings for tests: samples every 20 ms, so a new
// report counts at once (the first sample is taken as it is).
func fastLoad(m *monitor) {
	m.loadCfg = defaultLoadSettings
	m.loadCfg.Sample = 20 * time.Millisecond
	m.loadCfg.HalfLife = 50 * time.Millisecond
}

// skewed is one request per second on every bucket, and 100 on six
// buckets of hotNode.
func skewed(a *schema.Assignment, hotNode string) (map[bucket.Bucket]float64, []bucket.Bucket) {
	load := map[bucket.Bucket]float64{}
	for b := range bucket.Count {
		load[bucket.Bucket(b)] = 1
	}
	hot := a.Owned(hotNode)[:6]
	for _, b := range hot {
		load[b] = 100
	}
	return load, hot
}

// nodeLoads is the load per node under a.
func nodeLoads(a *schema.Assignment, load map[bucket.Bucket]float64) (map[string]float64, float64) {
	per := map[string]float64{}
	total := 0.0
	for b, n := range a.Owners {
		per[n] += load[bucket.Bucket(b)]
		total += load[bucket.Bucket(b)]
	}
	return per, total / float64(len(per))
}

func changedOwners(a, b *schema.Assignment) int {
	n := 0
	for i := range a.Owners {
		if a.Owners[i] != b.Owners[i] {
			n++
		}
	}
	return n
}

// Three nodes, six hot buckets on n1 (n1 carries 680 of 856): a
// rebalance by load ends with every node within 1.10 × the mean, with the
// fewest moves (four: with three, n1 keeps three hot buckets and stays
// above the band). The dry run predicts it and changes nothing. A
// corrupt report of another proxy is left out and blocks nothing. And
// the periodic count rebalance (due here after 100 ms) does not undo it:
// the cluster is now balanced by load.
func TestRebalanceByLoadEvensASkewedLoadWithTheFewestMoves(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil, fastLoad, func(m *monitor) { m.rebalanceAfter = 100 * time.Millisecond })
	first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	startAcker(t, cli)
	load, hot := skewed(first, "n1")
	putLoad(t, cli, "caddy@p1", 60, load)
	if _, err := cli.Put(ctxT(t), layout.LoadKey("caddy@bad"), `{"proxy":"caddy@bad","interval_seconds":30,"at":"now"}`); err != nil {
		t.Fatal(err)
	}

	dry, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance, By: monitorapi.ByLoad, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Load == nil || len(dry.Moves) != 4 || !dry.Load.Within || fmt.Sprint(dry.Load.Proxies) != "[caddy@p1]" {
		t.Fatalf("dry run: %d moves, load %+v; want 4 moves within the band, from caddy@p1 only", len(dry.Moves), dry.Load)
	}
	before, mean := nodeLoads(first, load)
	if dry.Load.Before["n1"] != before["n1"] || dry.Load.Mean != round1(mean) || dry.Load.After["n1"] > 1.10*mean {
		t.Fatalf("dry run load %+v; want n1 %v before, mean %.1f", dry.Load, before["n1"], mean)
	}
	if a := getAssignment(t, cli); a.Version != first.Version {
		t.Fatalf("the dry run changed the assignment: version %d -> %d", first.Version, a.Version)
	}

	resp, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance, By: monitorapi.ByLoad})
	if err != nil || len(resp.Moves) != 4 {
		t.Fatalf("rebalance by load: %+v %v", resp, err)
	}
	for _, mv := range resp.Moves {
		if mv.Reason != "load" || mv.From != "n1" || load[mv.Bucket] != 100 {
			t.Fatalf("move %+v: want a hot bucket off n1, reason load (hot: %v)", mv, hot)
		}
	}
	done, _ := waitAssignment(t, cli, "the load moves committed", func(a *schema.Assignment) bool {
		return settled(a) && changedOwners(first, a) == 4
	})
	after, mean := nodeLoads(done, load)
	for n, l := range after {
		if l > 1.10*mean {
			t.Fatalf("node %s at %.1f, above 1.10 × mean %.1f: %v", n, l, mean, after)
		}
	}
	t.Logf("load per node before %v, after %v (mean %.1f)", before, after, mean)
	snapSettings := getSettings(t, cli)
	if !snapSettings.ByLoad() {
		t.Fatalf("settings after a rebalance by load: %+v; want balance_by load", snapSettings)
	}
	if out, _, code := runCapture("status", "-etcd", strings.Join(c.Endpoints(), ",")); code != 0 || !strings.Contains(out, "balanced by: load") {
		t.Fatalf("monitor status: exit %d\n%s", code, out)
	}
	// Counts are 84/85/87 now; with count balancing they would be evened
	// within 100 ms. Nothing moves.
	time.Sleep(time.Second)
	if a := getAssignment(t, cli); a.Version != done.Version {
		t.Fatalf("the assignment changed after the load rebalance: version %d -> %d, counts %v", done.Version, a.Version, a.Counts())
	}
}

func getSettings(t *testing.T, cli *clientv3.Client) schema.Settings {
	t.Helper()
	resp, err := cli.Get(ctxT(t), layout.SettingsKey())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("settings: %v %v", resp, err)
	}
	s, err := schema.ParseSettings(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Automatic mode: a load within the hysteresis band's upper edge (n1 at
// about 1.2 × the mean) moves nothing; a skewed one is evened into the
// band; then, with the load steady, round after round moves nothing more.
// No per-bucket cooldown here: the band alone keeps it from flapping.
func TestAutoLoadBalanceActsAboveHighAndDoesNotFlap(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		registerNode(t, cli, n)
	}
	tm := startMonitor(t, c, "mon-a", nil, fastLoad, func(m *monitor) { m.loadCfg.Cooldown = 0 })
	first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	startAcker(t, cli)
	if _, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpAutoLoadBalance, Enabled: true}); err != nil {
		t.Fatal(err)
	}
	// Mild: one bucket of n1 at 30 (n1 ≈ 1.2 × the mean): below 1.25.
	mild := map[bucket.Bucket]float64{}
	for b := range bucket.Count {
		mild[bucket.Bucket(b)] = 1
	}
	mild[first.Owned("n1")[0]] = 30
	per, mean := nodeLoads(first, mild)
	if r := per["n1"] / mean; r < 1.15 || r > 1.25 {
		t.Fatalf("test setup: n1 at %.2f × mean", r)
	}
	lease := putLoad(t, cli, "caddy@p1", 60, mild)
	time.Sleep(time.Second) // five rounds at least
	if a := getAssignment(t, cli); changedOwners(first, a) != 0 {
		t.Fatalf("a load below -load-high moved %d bucket(s)", changedOwners(first, a))
	}

	load, _ := skewed(first, "n1")
	cli.Revoke(ctxT(t), lease)
	putLoad(t, cli, "caddy@p1", 60, load)
	done, took := waitAssignment(t, cli, "automatic mode evened the load", func(a *schema.Assignment) bool {
		return settled(a) && changedOwners(first, a) > 0
	})
	after, mean := nodeLoads(done, load)
	for n, l := range after {
		if l > 1.10*mean {
			t.Fatalf("node %s at %.1f, above 1.10 × mean %.1f: %v", n, l, mean, after)
		}
	}
	if moved := changedOwners(first, done); moved != 4 {
		t.Fatalf("automatic mode moved %d buckets; 4 is the fewest", moved)
	}
	t.Logf("evened in %v: %v (mean %.1f)", took, after, mean)
	testutil.Consistently(t, 1500*time.Millisecond, "the assignment as it is under a steady load", func() bool {
		a := getAssignment(t, cli)
		if a.Version != done.Version {
			t.Logf("version %d -> %d (%d more moved)", done.Version, a.Version, changedOwners(done, a))
		}
		return a.Version == done.Version
	})
	tm.stop() // its goroutine has ended: its load state may be read here
	if tm.m.load.sampled.IsZero() {
		t.Fatal("the monitor never sampled the load")
	}
}

// After an aborted handoff, automatic mode pauses: n1 never releases, so
// the load moves off it abort and are dropped (not queued for a retry);
// the load is as skewed as before, yet nothing moves by load again during
// the pause (without it, the next round would plan the same moves at
// once: no cooldown here).
func TestAutoLoadBalancePausesAfterAnAbortedMove(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		registerNode(t, cli, n)
	}
	startMonitor(t, c, "mon-a", nil, fastLoad, func(m *monitor) {
		m.loadCfg.Cooldown, m.loadCfg.Pause = 0, time.Hour
		m.limits = handoff.Limits{MaxMoving: 16, MaxMovingPerNode: 8, Timeout: 300 * time.Millisecond}
	})
	first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	startAcker(t, cli, "n1") // n1's server never releases
	load, _ := skewed(first, "n1")
	putLoad(t, cli, "caddy@p1", 60, load)
	if _, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpAutoLoadBalance, Enabled: true}); err != nil {
		t.Fatal(err)
	}
	waitAssignment(t, cli, "load moves started", func(a *schema.Assignment) bool { return len(a.Moving) > 0 })
	// Aborted, and not queued to be tried again: a move by load is dropped.
	aborted, _ := waitAssignment(t, cli, "the load moves aborted and dropped", func(a *schema.Assignment) bool { return settled(a) })
	if changedOwners(first, aborted) != 0 {
		t.Fatalf("%d bucket(s) changed owner though n1 never released", changedOwners(first, aborted))
	}
	testutil.Consistently(t, 1500*time.Millisecond, "no move by load during the pause", func() bool {
		a := getAssignment(t, cli)
		if len(a.Moving)+len(a.Queued) > 0 {
			t.Logf("moving %v, queued %v", a.Moving, a.Queued)
		}
		return len(a.Moving)+len(a.Queued) == 0
	})
}

// A proxy that stops publishing is forgotten once its lease ends: its
// key goes, and with it its share of every bucket's load; the smoothed
// score then decays towards what the live proxies report.
func TestLoadOfAProxyIsForgottenAfterItsLease(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	tr := newLoadTracker(loadSettings{WSWeight: 1, BytesPerUnit: 1, HalfLife: 100 * time.Millisecond, Sample: time.Millisecond})
	putLoad(t, cli, "caddy@stays", 60, map[bucket.Bucket]float64{0x0c: 10})
	putLoad(t, cli, "caddy@stops", 2, map[bucket.Bucket]float64{0x0c: 30})
	log := zap.NewNop()
	if err := tr.refresh(ctxT(t), cli, layout, log, time.Now()); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(tr.proxies) != "[caddy@stays caddy@stops]" || tr.raw[0x0c] != 40 || tr.smooth[0x0c] != 40 {
		t.Fatalf("proxies %v, raw %v, smooth %v; want both, 40", tr.proxies, tr.raw[0x0c], tr.smooth[0x0c])
	}
	took := testutil.Eventually(t, 10*time.Second, "the stopped proxy's report expired with its lease", func() bool {
		if err := tr.refresh(ctxT(t), cli, layout, log, time.Now()); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(tr.proxies) == "[caddy@stays]"
	})
	if tr.raw[0x0c] != 10 || tr.smooth[0x0c] >= 40 {
		t.Fatalf("after the lease: raw %v, smooth %v; want 10 and decaying", tr.raw[0x0c], tr.smooth[0x0c])
	}
	time.Sleep(time.Second) // ten half-lives
	tr.refresh(ctxT(t), cli, layout, log, time.Now())
	if s := tr.smooth[0x0c]; s < 10 || s > 10.1 {
		t.Fatalf("smoothed score %v ten half-lives later; want ≈ 10", s)
	}
	t.Logf("forgotten %v after the first read (lease TTL 2s)", took)
}

// A corrupt load value is skipped with an error naming its key, logged
// once while it stays as it is; the valid reports still count.
func TestCorruptLoadReportIsSkippedWithAnError(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	core, logs := observer.New(zap.ErrorLevel)
	log := zap.New(core)
	putLoad(t, cli, "caddy@good", 60, map[bucket.Bucket]float64{0x01: 5})
	for key, value := range map[string]string{
		layout.LoadKey("caddy@neg"):  `{"proxy":"caddy@neg","interval_seconds":30,"at":"2026-11-21T10:00:00Z","buckets":{"01":{"requests":-3}}}`,
		layout.LoadKey("caddy@junk"): `not json`,
		layout.LoadPrefix() + "a/b":  `{}`,
	} {
		if _, err := cli.Put(ctxT(t), key, value); err != nil {
			t.Fatal(err)
		}
	}
	tr := newLoadTracker(defaultLoadSettings)
	for range 3 {
		if err := tr.refresh(context.Background(), cli, layout, log, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(tr.proxies) != "[caddy@good]" || tr.raw[0x01] != 5 {
		t.Fatalf("proxies %v, bucket 01 %v; want only caddy@good's 5", tr.proxies, tr.raw[0x01])
	}
	errs := logs.FilterMessage("invalid load report in etcd; leaving it out").All()
	if len(errs) != 3 {
		t.Fatalf("%d errors logged over three reads; want one per bad key: %v", len(errs), errs)
	}
	for _, e := range errs {
		if e.ContextMap()["key"] == "" || e.ContextMap()["error"] == "" {
			t.Fatalf("error without key or reason: %v", e.ContextMap())
		}
	}
}

// The CLI prints a rebalance by load's load per node before and after.
func TestPrintResponseShowsTheLoadTable(t *testing.T) {
	var out strings.Builder
	printResponse(&out, "rebalance", &monitorapi.Response{OK: true, DryRun: true, PreviousVersion: 7,
		Counts: map[string]int{"n1": 82, "n2": 87},
		Load: &monitorapi.LoadSummary{Before: map[string]float64{"n1": 680, "n2": 85}, After: map[string]float64{"n1": 280, "n2": 485},
			Mean: 382.5, Band: 1.1, Within: false, Proxies: []string{"caddy@p1"}}})
	for _, want := range []string{"dry run, nothing changed", "mean 382.5, goal ≤ 1.10 × mean = 420.8: NOT within",
		"NODE  LOAD_BEFORE  LOAD_AFTER  ×MEAN_AFTER", "n1    680.0        280.0       0.73", "n2    85.0         485.0       1.27"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// A move by load that another leader aborted (its memory of the abort is
// gone with it) is known by its queued entry: reason load with an
// aborted_version. This leader drops its retry too; a queued move of
// another reason, or one never aborted, stays.
func TestLoadMoveAbortedUnderAnotherLeaderIsNotRetried(t *testing.T) {
	base := &schema.Assignment{Version: 9, Queued: map[bucket.Bucket]schema.QueuedMove{
		0x01: {To: "n2", Reason: planner.ReasonLoad, AbortedVersion: 8},
		0x02: {To: "n2", Reason: planner.ReasonLoad},
		0x03: {To: "n2", Reason: "rebalance", AbortedVersion: 8},
	}}
	plan := &planner.Plan{}
	for b := range base.Owners {
		base.Owners[b], plan.Owners[b] = "n1", "n1"
	}
	for _, b := range []bucket.Bucket{0x01, 0x02, 0x03} {
		plan.Owners[b] = "n2"
		plan.Moves = append(plan.Moves, schema.Move{Bucket: b, From: "n1", To: "n2", Reason: base.Queued[b].Reason})
	}
	m := &monitor{}
	m.initLoad()
	m.dropAbortedLoadMoves(plan, base)
	if plan.Owners[0x01] != "n1" || len(plan.Moves) != 2 || plan.Moves[0].Bucket != 0x02 || plan.Moves[1].Bucket != 0x03 {
		t.Fatalf("owner of 01 %s, moves %+v; want 01's retry dropped, 02 and 03 kept", plan.Owners[0x01], plan.Moves)
	}
}
