package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/planner"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// decision is what one planning round decided: the planner's targets and
// the handoff step that moves towards them.
type decision struct {
	plan *planner.Plan
	step *handoff.Step
	next *schema.Assignment // nil: nothing to write
	// deleteReleased are the release keys the write consumes.
	deleteReleased []clientv3.Op
	// guards are what the write must compare besides the leader key and
	// the snapshot's assignment and settings: each node the step treats as
	// gone is still unregistered, each consumed release key is as in the
	// snapshot.
	guards []clientv3.Cmp
	// wake is when a round must run to see a held node's lease end (zero:
	// no such node).
	wake time.Time
	// load is the round's plan by load, if it balanced by load;
	// abortedLoad the moves by load the step aborts.
	load        *planner.LoadPlan
	abortedLoad []bucket.Bucket
}

// decide plans from cur (the assignment in etcd, or nil) and the snapshot:
// the planner works on the effective owners (moves in progress and queued
// counted as done), and the handoff state machine turns its targets into
// safe steps. A leaving node counts as drained. An owner that is not
// registered but whose lease lives (findUnregistered) is held: its
// buckets stay and it gets nothing new. write forces a new value (a
// repair) even if nothing moves.
//
// With no eligible node the error is planner.ErrNoEligibleNode and, if
// there is an assignment, the decision still advances the moves in
// progress (commit, abort; each keeps its target) and starts nothing.
//
// mode says whether the round also moves buckets by load (planByLoad):
// those moves join the planner's, with Reason "load".
func (m *monitor) decide(ctx context.Context, snap *watch.Snapshot, cur *schema.Assignment, settings schema.Settings, rebalance, write bool, mode loadMode) (*decision, error) {
	unreg, err := m.findUnregistered(ctx, snap, cur)
	if err != nil {
		return nil, err
	}
	live := slices.Sorted(maps.Keys(snap.Nodes))
	planSettings := leavingAsDrained(snap, settings)
	// Held nodes are not live to the planner, so they get nothing new; it
	// plans their buckets away, and keepHeld takes that back. (Their
	// buckets count as moved for its balance: the plan may be a little
	// uneven while a node is held.)
	plan, err := planner.Compute(planner.Input{Current: effectiveOwners(cur), Live: live, Settings: planSettings, Rebalance: rebalance})
	noEligible := errors.Is(err, planner.ErrNoEligibleNode)
	if err != nil && (!noEligible || cur == nil) {
		return nil, err
	}
	base := cur
	if base == nil {
		base = &schema.Assignment{}
	}
	now := time.Now()
	m.restoreCooldowns(base, now)
	hold := m.cooldownHolds(now)
	tg := targets{reasons: map[bucket.Bucket]string{}}
	if noEligible {
		tg.keepMoves(plan, base)
	} else if err := m.planTargets(&tg, mode, plan, base, unreg.held, hold, live, planSettings, now); err != nil {
		return nil, err
	}
	handoffLive := liveSet(live)
	for id := range unreg.held {
		handoffLive[id] = true
	}
	st := handoff.Advance(handoff.Input{
		Current: base, Live: handoffLive, Released: releasedIn(snap), Target: tg.owners, Reasons: tg.reasons,
		Hold: hold, Now: now, Limit: m.limits,
	})
	d := &decision{plan: plan, step: st, wake: unreg.wake, load: tg.load, abortedLoad: abortedLoadMoves(base, st)}
	m.consumeReleases(d, snap)
	if st.Changed() || write || cur == nil {
		m.guardAndStamp(d, snap, cur, base, now)
	}
	return d, err
}

// leavingAsDrained returns the settings to plan with: a leaving node
// counts as drained.
func leavingAsDrained(snap *watch.Snapshot, settings schema.Settings) schema.Settings {
	planSettings := settings.Clone()
	for _, id := range slices.Sorted(maps.Keys(snap.Nodes)) {
		if snap.Nodes[id].Leaving() && !planSettings.IsDrained(id) {
			planSettings.Drained = append(planSettings.Drained, id)
		}
	}
	return planSettings
}

// effectiveOwners is what the planner plans on: cur (nil: none) with the
// moves in progress and queued counted as done.
func effectiveOwners(cur *schema.Assignment) *schema.Assignment {
	if cur == nil {
		return nil
	}
	effective := cur.Clone()
	for b := range bucket.Count {
		effective.Owners[b] = cur.Effective(bucket.Bucket(b))
	}
	effective.Moving, effective.Queued = nil, nil
	return effective
}

// restoreCooldowns gives a bucket queued after an aborted handoff
// (aborted_version) the rest this monitor did not start itself: the abort
// happened under another leader, whose cooldowns were in its memory. Not
// knowing when the abort was, it rests a whole cooldown from now. Each
// abort is restored once: the entry keeps aborted_version until the move
// starts again, and must not rest forever.
func (m *monitor) restoreCooldowns(a *schema.Assignment, now time.Time) {
	for b, q := range a.Queued {
		if q.AbortedVersion == 0 || m.cooldownOf[b] >= q.AbortedVersion {
			continue
		}
		m.cooldownOf[b] = q.AbortedVersion
		if _, resting := m.cooldown[b]; !resting {
			m.cooldown[b] = now.Add(m.cooldownFor)
			m.log.Info("a handoff aborted under another leader: the bucket rests before it is tried again",
				zap.String("bucket", b.String()), zap.Int64("aborted_version", q.AbortedVersion), zap.Duration("for", m.cooldownFor))
		}
	}
}

// cooldownHolds lists the buckets that rest after an aborted handoff, and
// forgets the cooldowns that ended.
func (m *monitor) cooldownHolds(now time.Time) map[bucket.Bucket]bool {
	hold := map[bucket.Bucket]bool{}
	for b, until := range m.cooldown {
		if now.Before(until) {
			hold[b] = true
		} else {
			delete(m.cooldown, b)
		}
	}
	return hold
}

// targets are what the handoff step moves towards: an owner per bucket
// ("" none), why each bucket moves, and the plan by load if any.
type targets struct {
	owners  [bucket.Count]string
	reasons map[bucket.Bucket]string
	load    *planner.LoadPlan
}

// keepMoves: with no eligible node there is no plan; each move in progress
// keeps its target, nothing starts.
func (tg *targets) keepMoves(plan *planner.Plan, base *schema.Assignment) {
	plan.Owners, plan.Moves = base.Owners, nil
	for b, mv := range base.Moving {
		tg.owners[b] = mv.To
	}
}

// planTargets takes the plan's owners as targets, after keeping the held
// nodes' buckets, dropping the moves by load that aborted, and adding the
// moves by load of this round (mode).
func (m *monitor) planTargets(tg *targets, mode loadMode, plan *planner.Plan, base *schema.Assignment, held map[string]string,
	hold map[bucket.Bucket]bool, live []string, planSettings schema.Settings, now time.Time) error {
	keepHeld(plan, base, held, hold)
	m.dropAbortedLoadMoves(plan, base)
	lp, err := m.planByLoad(mode, plan, base, eligibleNodes(live, planSettings), planSettings, hold, now)
	if err != nil {
		return err
	}
	tg.load, tg.owners = lp, plan.Owners
	for _, mv := range plan.Moves {
		tg.reasons[mv.Bucket] = mv.Reason
	}
	return nil
}

// releasedIn returns the release acknowledgements of the snapshot.
func releasedIn(snap *watch.Snapshot) map[bucket.Bucket]schema.Released {
	released := map[bucket.Bucket]schema.Released{}
	for b, r := range snap.Released {
		released[b] = r.Released
	}
	return released
}

// consumeReleases deletes, in the decision's write, the release keys its
// step consumed, each only as the snapshot saw it: a newer one (a fresh
// release the snapshot missed) makes the write fail and plan again.
func (m *monitor) consumeReleases(d *decision, snap *watch.Snapshot) {
	for _, b := range d.step.ConsumedReleases {
		r, ok := snap.Released[b]
		if !ok {
			continue // not in the snapshot: nothing to compare, not deleted
		}
		key := m.layout.ReleasedKey(b)
		d.guards = append(d.guards, clientv3.Compare(clientv3.ModRevision(key), "=", r.ModRevision))
		d.deleteReleased = append(d.deleteReleased, clientv3.OpDelete(key))
	}
}

// guardAndStamp makes the decision write its step: guarded by the nodes it
// relies on, with the next version, the epochs, and who wrote it when.
func (m *monitor) guardAndStamp(d *decision, snap *watch.Snapshot, cur, base *schema.Assignment, now time.Time) {
	st := d.step
	// A node the step treats as gone must still be unregistered when the
	// step is written: one that registered again since the snapshot (its
	// key has a create revision) makes the write fail.
	for _, id := range st.GoneOwners() {
		d.guards = append(d.guards, clientv3.Compare(clientv3.CreateRevision(m.layout.NodeKey(id)), "=", 0))
	}
	// And a node it gives buckets to must still be registered as it was
	// in the snapshot: one that left (or left and came back) meanwhile
	// makes the write fail, and the next round plans on the news.
	for _, id := range st.Receivers() {
		if rev, ok := snap.NodeCreateRevisions[id]; ok {
			d.guards = append(d.guards, clientv3.Compare(clientv3.CreateRevision(m.layout.NodeKey(id)), "=", rev))
		}
	}
	d.next = st.Next
	d.next.Version = base.Version + 1
	d.next.NextEpochs(cur)
	if d.next.Extra == nil {
		d.next.Extra = map[string]json.RawMessage{}
	}
	d.next.Extra["updated_by"], _ = json.Marshal(m.id)
	d.next.Extra["updated_at"], _ = json.Marshal(now.UTC().Format(time.RFC3339))
}

// keepHeld takes back what plan would move off the held nodes: a bucket at
// rest on one stays (a queued one stays queued: hold), and the plan's
// owners and moves say so; each held node gets a warning. A move from a
// held node goes on as planned: its old owner may still release it, and
// the move commits only then (or aborts on the timeout).
func keepHeld(plan *planner.Plan, cur *schema.Assignment, held map[string]string, hold map[bucket.Bucket]bool) {
	if len(held) == 0 {
		return
	}
	kept := map[bucket.Bucket]bool{}
	for b := range bucket.Count {
		bk := bucket.Bucket(b)
		owner := cur.Owners[b]
		if _, ok := held[owner]; !ok {
			continue
		}
		if _, moving := cur.Moving[bk]; moving {
			continue
		}
		if _, queued := cur.Queued[bk]; queued {
			hold[bk] = true
			continue
		}
		plan.Owners[b] = owner
		kept[bk] = true
	}
	plan.Moves = slices.DeleteFunc(plan.Moves, func(mv schema.Move) bool { return kept[mv.Bucket] })
	for _, id := range slices.Sorted(maps.Keys(held)) {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("node %s is not registered but %s", id, held[id]))
	}
}

// afterWrite records what a written decision means for later rounds: a
// bucket whose move was aborted rests for the cooldown before it is tried
// again.
func (m *monitor) afterWrite(d *decision) {
	m.afterLoadWrite(d, time.Now())
	for _, mv := range d.step.Aborted {
		if mv.Reason == handoff.ReasonTimeout {
			m.cooldown[mv.Bucket] = time.Now().Add(m.cooldownFor)
			m.cooldownOf[mv.Bucket] = d.next.Version // the aborted_version it writes
		}
	}
}

// nextWake says when a round must run even if nothing changes: the
// earliest handoff timeout of a move in progress, the end of a cooldown
// of a bucket that waits in the queue, or also (when a held node's lease
// runs out; zero: none); 0 if none.
func (m *monitor) nextWake(a *schema.Assignment, also time.Time) time.Duration {
	at := also
	earlier := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	if a != nil {
		for _, mv := range a.Moving {
			earlier(mv.Since.Add(m.limits.Timeout + 10*time.Millisecond))
		}
		for b := range a.Queued {
			if until, ok := m.cooldown[b]; ok {
				earlier(until)
			}
		}
	}
	if at.IsZero() {
		return 0
	}
	return max(time.Until(at), time.Millisecond)
}

func liveSet(ids []string) map[string]bool {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// logStep logs the handoff transitions of a written decision.
func (m *monitor) logStep(d *decision) {
	st := d.step
	list := func(ms []schema.Move) []string {
		out := make([]string, 0, len(ms))
		for _, mv := range ms {
			out = append(out, mv.Bucket.String()+":"+orNone(mv.From)+"->"+mv.To+"("+mv.Reason+")")
		}
		return out
	}
	if n := len(st.Started) + len(st.Committed) + len(st.Aborted) + len(st.Retargeted); n > 0 {
		m.log.Info("handoffs", zap.Int64("version", d.next.Version),
			zap.Strings("started", list(st.Started)), zap.Strings("committed", list(st.Committed)),
			zap.Strings("aborted", list(st.Aborted)), zap.Strings("retargeted", list(st.Retargeted)),
			zap.Int("moving", len(d.next.Moving)), zap.Int("queued", len(d.next.Queued)))
	}
	for _, mv := range st.Aborted {
		if mv.Reason == handoff.ReasonTimeout {
			m.log.Warn("handoff aborted: the old owner did not release in time; the bucket stays with it",
				zap.String("bucket", mv.Bucket.String()), zap.String("owner", mv.From), zap.String("target", mv.To),
				zap.Duration("timeout", m.limits.Timeout), zap.Duration("retry_after", m.cooldownFor))
		}
	}
}

// describeHandoff fills a response with how its moves proceed.
func describeHandoff(resp *monitorapi.Response, d *decision, lim handoff.Limits) {
	st := d.step
	resp.Direct, resp.Started, resp.Queued = st.Direct, st.Started, st.Queued
	resp.Waves = waves(append(slices.Clone(st.Started), st.Queued...), lim)
	if resp.Waves > 0 {
		// A wave ends when its slowest release does (a server's save,
		// unknown here), and a release slower than the timeout aborts:
		// the timeout bounds each wave, not its typical length.
		resp.WavesWithin = (time.Duration(resp.Waves) * lim.Timeout).String()
	}
}

// waves estimates how many rounds of handoffs moves need under the limits.
func waves(moves []schema.Move, lim handoff.Limits) int {
	if len(moves) == 0 {
		return 0
	}
	w := (len(moves) + lim.MaxMoving - 1) / lim.MaxMoving
	per := map[string]int{}
	for _, mv := range moves {
		per[mv.From]++
		per[mv.To]++
	}
	for _, n := range per {
		w = max(w, (n+lim.MaxMovingPerNode-1)/lim.MaxMovingPerNode)
	}
	return w
}
