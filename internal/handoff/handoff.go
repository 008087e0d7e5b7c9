// Package handoff turns the planner's target owners into safe steps: the
// monitor's state machine for moving a bucket from one live server to
// another (docs/server-contract.md). It is pure, like the planner: the
// current assignment, the live nodes, the release acknowledgements in etcd,
// the target owners and the clock go in; the next assignment and what
// happened come out. The monitor writes the result in one fenced
// transaction.
//
// A bucket's life:
//
//	STABLE(a) -> MOVING(a->b)  when the target differs and a is live (throttled; else QUEUED)
//	MOVING(a->b) -> STABLE(b)  on a release acknowledgement {from a, epoch} (commit)
//	MOVING(a->b) -> STABLE(b)  when a is gone: its lease ended, and it fenced itself before that
//	MOVING(a->b) -> MOVING(a->c) when the target changes (b died, or the plan changed)
//	MOVING(a->b) -> STABLE(a)  after the timeout while a lives, or when the plan wants a again (abort);
//	                           after the timeout the bucket is QUEUED(b) with aborted_version set (this
//	                           step's version) while it rests, so a caller waiting for the move sees it ended
//	STABLE(a) -> STABLE(b)     at once when a is gone or the bucket is unassigned (nobody to hand off)
//
// "Gone" means not in Input.Live. Only a node whose lease ended is gone: a
// server fences itself before its lease can expire, and its registrar
// fences it before revoking the lease. A node key deleted by hand while its
// lease lives is not: the caller keeps such a node in Live (and out of the
// targets), and the writer makes sure every node the step treats as gone
// (Step.GoneOwners) is still unregistered when the step is written.
package handoff

import (
	"maps"
	"slices"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// Limits bound the handoffs in flight.
type Limits struct {
	// MaxMoving is the most moves in progress in the cluster, and
	// MaxMovingPerNode the most per node as source or target.
	MaxMoving, MaxMovingPerNode int
	// Timeout is how long an old owner that is still live may take to
	// release a bucket before the move is aborted.
	Timeout time.Duration
}

// DefaultLimits: 16 moves in the cluster and 8 per node at a time, and
// 60 s to release. A rebalance that gives a new third node its 85 buckets
// takes 11 waves (8 at a time into that node), each about as long as the
// slowest save of the wave.
var DefaultLimits = Limits{MaxMoving: 16, MaxMovingPerNode: 8, Timeout: 60 * time.Second}

// Input is what a step depends on.
type Input struct {
	// Current is the assignment in etcd (not nil).
	Current *schema.Assignment
	// Live holds the nodes that may still serve: the registered ones and
	// those whose key is gone while their lease lives. A bucket's owner or
	// a move's source that is not here is gone (it fenced itself): its
	// buckets move at once.
	Live map[string]bool
	// Released holds the release acknowledgements in etcd.
	Released map[bucket.Bucket]schema.Released
	// Target is the planner's owner for every bucket, planned on the
	// effective owners (Assignment.Effective), with the reason of each
	// bucket whose target differs from its effective owner. "" means no
	// plan for the bucket (no eligible node): a move in progress keeps
	// its target, a queued move stays queued, nothing new starts.
	Target  [bucket.Count]string
	Reasons map[bucket.Bucket]string
	// Hold lists buckets that must not start a move now (e.g. a cooldown
	// after an aborted move); they stay queued.
	Hold  map[bucket.Bucket]bool
	Now   time.Time
	Limit Limits
}

// Step is the outcome: the next assignment (its Version still Current's:
// the writer sets the version and the epochs) and the transitions.
type Step struct {
	Next *schema.Assignment
	// Committed moves went to their target on a release acknowledgement
	// (Reason "released") or because the old owner is gone ("owner_gone").
	Committed []schema.Move
	// Direct moves had no live owner to hand off from.
	Direct []schema.Move
	// Started moves began a handoff; Queued ones wait for a slot.
	Started []schema.Move
	Queued  []schema.Move
	// Retargeted moves got a new target; Aborted ones stay with their
	// owner (Reason "timeout" or "cancelled").
	Retargeted []schema.Move
	Aborted    []schema.Move
	// ConsumedReleases are the release keys to delete in the same write:
	// those of committed moves and stale ones that match no move.
	ConsumedReleases []bucket.Bucket

	prevQueued map[bucket.Bucket]schema.QueuedMove
}

// Changed reports whether the step changes the assignment.
func (s *Step) Changed() bool {
	return len(s.Committed)+len(s.Direct)+len(s.Started)+len(s.Retargeted)+len(s.Aborted) > 0 ||
		!maps.Equal(s.Next.Queued, s.prevQueued)
}

// Reasons for transitions that the planner does not name.
const (
	ReasonReleased  = "released"   // committed on the old owner's acknowledgement
	ReasonOwnerGone = "owner_gone" // committed because the old owner is gone
	ReasonTimeout   = "timeout"    // aborted: no acknowledgement in time
	ReasonCancelled = "cancelled"  // aborted: the plan keeps the bucket where it is
)

// Advance computes one step: first the moves in progress (commit,
// re-target or abort), then the buckets at rest whose target differs
// (move directly, start a handoff or queue it).
func Advance(in Input) *Step {
	next := in.Current.Clone()
	next.Moving, next.Queued = maps.Clone(in.Current.Moving), nil
	a := &advance{in: in, cur: in.Current, next: next,
		st: &Step{Next: next, prevQueued: in.Current.Queued}, aborted: map[bucket.Bucket]bool{}}
	for _, b := range sortedKeys(a.cur.Moving) {
		a.advanceMoving(b)
	}
	a.consumeStaleReleases()
	a.countLoad()
	for b := range bucket.Count {
		a.startAtRest(bucket.Bucket(b))
	}
	if len(next.Moving) == 0 {
		next.Moving = nil
	}
	return a.st
}

// advance is one Advance in the making.
type advance struct {
	in   Input
	cur  *schema.Assignment
	next *schema.Assignment
	st   *Step
	// aborted holds the moves aborted in this step: they are not started
	// again in the same step.
	aborted map[bucket.Bucket]bool
	// load counts the moves in progress per node, as source or target.
	load map[string]int
}

// advanceMoving commits, re-targets or aborts the move of bucket b, or
// leaves it as it is.
func (a *advance) advanceMoving(b bucket.Bucket) {
	m := a.cur.Moving[b]
	target := a.in.Target[b]
	mv := schema.Move{Bucket: b, From: m.From, To: m.To}
	if target == m.From && a.in.Live[m.From] {
		mv.Reason = ReasonCancelled
		a.abort(mv)
		return
	}
	if target == "" || target == m.From {
		target = m.To // no plan for it (no eligible node): keep the move's target
	}
	r, acked := a.in.Released[b]
	switch {
	case acked && r.Matches(m):
		mv.To, mv.Reason = target, ReasonReleased
		a.st.commit(mv)
		a.st.ConsumedReleases = append(a.st.ConsumedReleases, b)
	case !a.in.Live[m.From]:
		mv.To, mv.Reason = target, ReasonOwnerGone
		a.st.commit(mv)
	case a.in.Now.Sub(m.Since) > a.in.Limit.Timeout:
		mv.Reason = ReasonTimeout
		a.abort(mv)
	case target != m.To:
		m.To = target
		a.next.Moving[b] = m
		mv.To, mv.Reason = target, "retarget"
		a.st.Retargeted = append(a.st.Retargeted, mv)
	}
}

func (a *advance) abort(mv schema.Move) {
	delete(a.next.Moving, mv.Bucket)
	a.st.Aborted = append(a.st.Aborted, mv)
	a.aborted[mv.Bucket] = true
}

// consumeStaleReleases consumes the release keys that match no move in
// progress (an aborted move's late acknowledgement).
func (a *advance) consumeStaleReleases() {
	for _, b := range sortedKeys(a.in.Released) {
		if m, ok := a.cur.Moving[b]; !ok || !a.in.Released[b].Matches(m) {
			a.st.ConsumedReleases = append(a.st.ConsumedReleases, b)
		}
	}
}

// countLoad counts the moves still in progress per node, for the throttle.
func (a *advance) countLoad() {
	a.load = map[string]int{}
	for _, m := range a.next.Moving {
		a.load[m.From]++
		a.load[m.To]++
	}
}

// startAtRest moves bucket b, if it rests and its target differs: directly
// (no live owner), by starting a handoff, or by queueing it (held, aborted
// just now, or no slot under the throttle).
func (a *advance) startAtRest(b bucket.Bucket) {
	if _, moving := a.next.Moving[b]; moving {
		return
	}
	owner, target := a.next.Owners[b], a.in.Target[b]
	if target == "" {
		if q, ok := a.cur.Queued[b]; ok { // no plan for it: it waits as it was
			a.setQueued(b, q)
		}
		return
	}
	if target == owner {
		return
	}
	mv := schema.Move{Bucket: b, From: owner, To: target, Reason: a.in.Reasons[b]}
	if q, ok := a.cur.Queued[b]; ok && q.To == target && mv.Reason == "" {
		// Planned earlier (e.g. by a rebalance request); a routine round
		// that keeps the plan does not know why, the queue does.
		mv.Reason = q.Reason
	}
	if owner == "" || !a.in.Live[owner] {
		a.next.Owners[b] = target
		a.st.Direct = append(a.st.Direct, mv)
		return
	}
	lim := a.in.Limit
	if a.in.Hold[b] || a.aborted[b] || len(a.next.Moving) >= lim.MaxMoving ||
		a.load[owner] >= lim.MaxMovingPerNode || a.load[target] >= lim.MaxMovingPerNode {
		a.setQueued(b, schema.QueuedMove{To: target, Reason: mv.Reason, AbortedVersion: a.abortedVersion(b)})
		a.st.Queued = append(a.st.Queued, mv)
		return
	}
	if a.next.Moving == nil {
		a.next.Moving = map[bucket.Bucket]schema.MoveState{}
	}
	// The move's epoch is the version this step will be written as.
	a.next.Moving[b] = schema.MoveState{From: owner, To: target, Epoch: a.cur.Version + 1, Since: a.in.Now, Reason: mv.Reason}
	a.load[owner]++
	a.load[target]++
	a.st.Started = append(a.st.Started, mv)
}

// abortedVersion is the version that aborted b's last handoff for want of
// a release, for b's queued entry: this step's if it aborts it now, else
// the one b was queued with (0: none). A new handoff of b drops it.
func (a *advance) abortedVersion(b bucket.Bucket) int64 {
	for _, mv := range a.st.Aborted {
		if mv.Bucket == b && mv.Reason == ReasonTimeout {
			return a.cur.Version + 1
		}
	}
	return a.cur.Queued[b].AbortedVersion
}

func (a *advance) setQueued(b bucket.Bucket, q schema.QueuedMove) {
	if a.next.Queued == nil {
		a.next.Queued = map[bucket.Bucket]schema.QueuedMove{}
	}
	a.next.Queued[b] = q
}

// GoneOwners lists, sorted, the nodes the step treats as gone: the old
// owners of its direct moves and of its moves committed because the owner
// is gone. The writer must make sure each is still unregistered.
func (s *Step) GoneOwners() []string {
	gone := map[string]bool{}
	for _, mv := range s.Direct {
		if mv.From != "" {
			gone[mv.From] = true
		}
	}
	for _, mv := range s.Committed {
		if mv.Reason == ReasonOwnerGone {
			gone[mv.From] = true
		}
	}
	return slices.Sorted(maps.Keys(gone))
}

// Receivers lists the nodes a step gives buckets to (direct moves,
// commits, started and re-targeted moves), in order.
func (s *Step) Receivers() []string {
	to := map[string]bool{}
	for _, ms := range [][]schema.Move{s.Direct, s.Committed, s.Started, s.Retargeted} {
		for _, mv := range ms {
			if mv.To != "" {
				to[mv.To] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(to))
}

func (st *Step) commit(mv schema.Move) {
	st.Next.Owners[mv.Bucket] = mv.To
	delete(st.Next.Moving, mv.Bucket)
	st.Committed = append(st.Committed, mv)
}

func sortedKeys[V any](m map[bucket.Bucket]V) []bucket.Bucket {
	return slices.Sorted(maps.Keys(m))
}
