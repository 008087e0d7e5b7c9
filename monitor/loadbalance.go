package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/planner"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// loadMode says whether a planning round also balances by load.
type loadMode int

const (
	loadOff       loadMode = iota
	loadRequested          // rebalance -by load: aim at the band now
	loadAuto               // automatic mode: only above -load-high, with cooldowns and pauses
)

// errNoLoadReports: a rebalance by load with nothing to balance by.
var errNoLoadReports = errors.New("no load reports in etcd: no proxy publishes its load (load_report), so there is nothing to balance by")

// initLoad sets up the load balancing state with the default settings
// where none were given (a monitor built by a test).
func (m *monitor) initLoad() {
	if m.loadCfg == (loadSettings{}) {
		m.loadCfg = defaultLoadSettings
	}
	if m.load == nil {
		m.load = newLoadTracker(m.loadCfg)
	}
	if m.loadCooldown == nil {
		m.loadCooldown = map[bucket.Bucket]time.Time{}
	}
	if m.loadAborted == nil {
		m.loadAborted = map[bucket.Bucket]int64{}
	}
}

// sampleLoad reads the proxies' reports if a sample is due, or at once
// with force (an operator's request plans on the latest reports). A
// failure is logged and the last scores stay: load balancing waits,
// nothing else does.
func (m *monitor) sampleLoad(ctx context.Context, now time.Time, force bool) {
	m.initLoad()
	if !force && !m.load.due(now) {
		return
	}
	if err := m.load.refresh(ctx, m.cli, m.layout, m.log, now); err != nil {
		m.log.Warn("could not read the load reports; keeping the last scores", zap.Error(err))
	}
}

// planByLoad adds to plan the moves that even out the load (mode says
// how), and returns the load plan; nil when the round makes none. plan
// holds the round's other targets (repairs, pins, drains); base is the
// assignment in etcd; eligible the nodes that may hold buckets; hold the
// buckets that rest after an aborted handoff.
func (m *monitor) planByLoad(mode loadMode, plan *planner.Plan, base *schema.Assignment, eligible []string,
	settings schema.Settings, hold map[bucket.Bucket]bool, now time.Time) (*planner.LoadPlan, error) {
	if mode == loadOff {
		return nil, nil
	}
	m.initLoad()
	if m.load.sampled.IsZero() || len(m.load.proxies) == 0 {
		if mode == loadRequested {
			return nil, errNoLoadReports
		}
		return nil, nil
	}
	if mode == loadAuto && (now.Before(m.loadPauseUntil) || len(base.Moving)+len(base.Queued) > 0) {
		// After an aborted move, or while moves are under way (their
		// outcome changes the picture), automatic mode waits.
		return nil, nil
	}
	fixed := map[bucket.Bucket]bool{}
	for b := range settings.Pins {
		fixed[b] = true
	}
	for b := range hold {
		fixed[b] = true
	}
	for b := range base.Moving {
		fixed[b] = true
	}
	for b := range base.Queued {
		fixed[b] = true
	}
	for _, mv := range plan.Moves {
		fixed[mv.Bucket] = true // it moves anyway, for another reason
	}
	if mode == loadAuto {
		for b, until := range m.loadCooldown {
			if now.Before(until) {
				fixed[b] = true
			} else {
				delete(m.loadCooldown, b)
			}
		}
	}
	lp := planner.ByLoad(planner.LoadInput{Owners: plan.Owners, Load: m.load.smooth, Eligible: eligible,
		Fixed: fixed, MaxMoves: m.loadCfg.MaxMoves, Band: m.loadCfg.Low})
	if mode == loadAuto {
		hottest := 0.0
		for _, n := range eligible {
			hottest = max(hottest, lp.Before[n])
		}
		// Hysteresis: act only above High × mean; then go down to Low.
		if lp.Mean < m.loadCfg.MinMean || hottest <= m.loadCfg.High*lp.Mean {
			return nil, nil
		}
	}
	for _, mv := range lp.Moves {
		plan.Owners[mv.Bucket] = mv.To
		plan.Moves = append(plan.Moves, mv)
	}
	slices.SortFunc(plan.Moves, func(a, b schema.Move) int { return int(a.Bucket) - int(b.Bucket) })
	return lp, nil
}

// eligibleNodes are the live nodes that may hold buckets under settings
// (whose Drained includes the leaving nodes).
func eligibleNodes(live []string, settings schema.Settings) []string {
	var out []string
	for _, n := range live {
		if !settings.IsDrained(n) {
			out = append(out, n)
		}
	}
	return out
}

// abortedLoadMoves lists the moves by load that step aborts.
func abortedLoadMoves(base *schema.Assignment, st *handoff.Step) []bucket.Bucket {
	var out []bucket.Bucket
	for _, mv := range st.Aborted {
		if base.Moving[mv.Bucket].Reason == planner.ReasonLoad {
			out = append(out, mv.Bucket)
		}
	}
	return out
}

// dropAbortedLoadMoves takes back, in plan, the retry of every move by
// load that was aborted: the handoff machine queues an aborted move to be
// tried again after -handoff-cooldown, but a move by load is worth no
// insistence: its bucket stays with its owner (the queue entry goes), and
// a later round by load plans afresh.
//
// Each such bucket is remembered with the version that queued the retry:
// a round planned on an older assignment (the watcher a little behind
// our own write) neither drops nor forgets it.
func (m *monitor) dropAbortedLoadMoves(plan *planner.Plan, base *schema.Assignment) {
	for b, version := range m.loadAborted {
		if base.Version < version {
			continue
		}
		if _, queued := base.Queued[b]; !queued {
			delete(m.loadAborted, b) // dropped already
			continue
		}
		plan.Owners[b] = base.Owners[b]
		plan.Moves = slices.DeleteFunc(plan.Moves, func(mv schema.Move) bool { return mv.Bucket == b })
	}
}

// afterLoadWrite records what a written decision means for load
// balancing: each bucket moved by load rests for the cooldown, an aborted
// move by load is not retried, and any aborted move pauses automatic
// mode.
func (m *monitor) afterLoadWrite(d *decision, now time.Time) {
	m.initLoad()
	for _, b := range d.abortedLoad {
		m.loadAborted[b] = d.next.Version
	}
	if d.load != nil {
		for _, mv := range d.load.Moves {
			m.loadCooldown[mv.Bucket] = now.Add(m.loadCfg.Cooldown)
		}
	}
	if len(d.step.Aborted) > 0 && m.loadCfg.Pause > 0 {
		m.loadPauseUntil = now.Add(m.loadCfg.Pause)
	}
}

// logLoad logs a round's moves by load with the predicted loads.
func (m *monitor) logLoad(d *decision, auto bool) {
	if d.load == nil || len(d.load.Moves) == 0 {
		return
	}
	moved := make([]string, 0, len(d.load.Moves))
	for _, mv := range d.load.Moves {
		moved = append(moved, fmt.Sprintf("%s:%s->%s(%.1f)", mv.Bucket, mv.From, mv.To, m.load.smooth[mv.Bucket]))
	}
	m.log.Info("moving buckets by load", zap.Bool("automatic", auto), zap.Strings("moved", moved),
		zap.Any("load_before", roundLoads(d.load.Before)), zap.Any("load_after", roundLoads(d.load.After)),
		zap.Float64("mean", round1(d.load.Mean)), zap.Bool("within_band", d.load.Within), zap.Strings("proxies", m.load.proxies))
}

// describeLoad fills a response with a load plan's before and after.
func (m *monitor) describeLoad(resp *monitorapi.Response, lp *planner.LoadPlan) {
	if lp == nil {
		return
	}
	resp.Load = &monitorapi.LoadSummary{Before: roundLoads(lp.Before), After: roundLoads(lp.After), Mean: round1(lp.Mean),
		Band: m.loadCfg.Low, Within: lp.Within, Proxies: slices.Clone(m.load.proxies)}
}

func roundLoads(l map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(l))
	for _, n := range slices.Sorted(maps.Keys(l)) {
		out[n] = round1(l[n])
	}
	return out
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

// printLoad prints a rebalance by load's load per node before and after.
func printLoad(w io.Writer, l *monitorapi.LoadSummary) {
	if l == nil {
		return
	}
	within := "within"
	if !l.Within {
		within = "NOT within (as close as the bound on moves and the bucket sizes allow)"
	}
	fmt.Fprintf(w, "load (smoothed score, summed over %d proxy report(s)): mean %.1f, goal ≤ %.2f × mean = %.1f: %s\n",
		len(l.Proxies), l.Mean, l.Band, l.Band*l.Mean, within)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tLOAD_BEFORE\tLOAD_AFTER\t×MEAN_AFTER")
	for _, n := range slices.Sorted(maps.Keys(l.Before)) {
		ratio := 0.0
		if l.Mean > 0 {
			ratio = l.After[n] / l.Mean
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.2f\n", n, l.Before[n], l.After[n], ratio)
	}
	tw.Flush()
}

// printBalanceMode adds to `monitor status` what "balanced" means now.
func printBalanceMode(w io.Writer, s schema.Settings) {
	by, auto := "bucket counts", "off"
	if s.ByLoad() {
		by = "load (bucket counts are not evened)"
	}
	if s.AutoLoadBalance {
		auto = "on"
		if !s.ByLoad() {
			auto = "on, but idle while balanced by bucket counts"
		}
	}
	fmt.Fprintf(w, "balanced by: %s; auto-load-balance: %s\n", by, auto)
}
