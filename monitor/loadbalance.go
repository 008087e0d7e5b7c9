package main

import (
	"context"
	"errors"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/handoff"
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
//
// A retry queued by another leader (its memory is gone) is known by the
// queued entry: reason load with an aborted_version.
func (m *monitor) dropAbortedLoadMoves(plan *planner.Plan, base *schema.Assignment) {
	for b, q := range base.Queued {
		if q.Reason == planner.ReasonLoad && q.AbortedVersion > m.loadAborted[b] {
			m.loadAborted[b] = q.AbortedVersion
		}
	}
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
