package main

import (
	"encoding/json"
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
}

// decide plans from cur (the assignment in etcd, or nil) and the snapshot:
// the planner works on the effective owners (moves in progress and queued
// counted as done), and the handoff state machine turns its targets into
// safe steps. A leaving node counts as drained. write forces a new value
// (a repair) even if nothing moves.
func (m *monitor) decide(snap *watch.Snapshot, cur *schema.Assignment, settings schema.Settings, rebalance, write bool) (*decision, error) {
	live := slices.Sorted(maps.Keys(snap.Nodes))
	planSettings := settings.Clone()
	for _, id := range live {
		if snap.Nodes[id].Leaving() && !planSettings.IsDrained(id) {
			planSettings.Drained = append(planSettings.Drained, id)
		}
	}
	var effective *schema.Assignment
	if cur != nil {
		effective = cur.Clone()
		for b := range bucket.Count {
			effective.Owners[b] = cur.Effective(bucket.Bucket(b))
		}
		effective.Moving, effective.Queued = nil, nil
	}
	plan, err := planner.Compute(planner.Input{Current: effective, Live: live, Settings: planSettings, Rebalance: rebalance})
	if err != nil {
		return nil, err
	}
	base := cur
	if base == nil {
		base = &schema.Assignment{}
	}
	reasons := map[bucket.Bucket]string{}
	for _, mv := range plan.Moves {
		reasons[mv.Bucket] = mv.Reason
	}
	released := map[bucket.Bucket]schema.Released{}
	for b, r := range snap.Released {
		released[b] = r.Released
	}
	now := time.Now()
	hold := map[bucket.Bucket]bool{}
	for b, until := range m.cooldown {
		if now.Before(until) {
			hold[b] = true
		} else {
			delete(m.cooldown, b)
		}
	}
	st := handoff.Advance(handoff.Input{
		Current: base, Live: liveSet(live), Released: released, Target: plan.Owners, Reasons: reasons,
		Hold: hold, Now: now, Limit: m.limits,
	})
	d := &decision{plan: plan, step: st}
	for _, b := range st.ConsumedReleases {
		d.deleteReleased = append(d.deleteReleased, clientv3.OpDelete(m.layout.ReleasedKey(b)))
	}
	if st.Changed() || write || cur == nil {
		d.next = st.Next
		d.next.Version = base.Version + 1
		d.next.NextEpochs(cur)
		if d.next.Extra == nil {
			d.next.Extra = map[string]json.RawMessage{}
		}
		d.next.Extra["updated_by"], _ = json.Marshal(m.id)
		d.next.Extra["updated_at"], _ = json.Marshal(now.UTC().Format(time.RFC3339))
	}
	return d, nil
}

// afterWrite records what a written decision means for later rounds: a
// bucket whose move was aborted rests for the cooldown before it is tried
// again.
func (m *monitor) afterWrite(d *decision) {
	for _, mv := range d.step.Aborted {
		if mv.Reason == handoff.ReasonTimeout {
			m.cooldown[mv.Bucket] = time.Now().Add(m.cooldownFor)
		}
	}
}

// nextWake says when a round must run even if nothing changes: the
// earliest handoff timeout of a move in progress, or the end of a
// cooldown of a bucket that waits in the queue; 0 if none.
func (m *monitor) nextWake(a *schema.Assignment) time.Duration {
	if a == nil {
		return 0
	}
	var at time.Time
	earlier := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	for _, mv := range a.Moving {
		earlier(mv.Since.Add(m.limits.Timeout + 10*time.Millisecond))
	}
	for b := range a.Queued {
		if until, ok := m.cooldown[b]; ok {
			earlier(until)
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
