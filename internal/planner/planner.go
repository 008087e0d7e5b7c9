// Package planner decides which node owns each bucket. It is pure: the
// current assignment, the live nodes and the operator's settings go in; the
// new owners and the list of moves come out. The monitor writes the result.
//
// A base lives in a server's memory for hours, so moving its bucket is costly
// and risky: every move the planner makes is necessary.
//
//   - Reconcile (the routine run): only buckets without an eligible owner
//     move (owner gone, drained, or never assigned), each to the eligible
//     node with the fewest buckets (ties: lowest node id). A node that joins
//     receives nothing. Pinned buckets go to their pinned node.
//   - Rebalance (on request, or on every run with auto-rebalance): bucket
//     counts end up as even as pins allow (spread ≤ 1 without pins) with the
//     fewest possible moves.
//   - ByLoad (byload.go; on request, or automatically with hysteresis):
//     the moves that bring every node's measured load within a band
//     around the mean, from the hottest node to the coldest, as few as it
//     finds.
//
// Compute runs these steps, each a method of planning, in this order:
//
//  0. newPlanning: the eligible nodes (live, undrained) and how many buckets
//     each holds now. With none, the plan is the current owners and
//     ErrNoEligibleNode.
//  1. honourablePins, applyPins: a pin to an eligible node moves its bucket
//     there; any other pin is only a warning.
//  2. orphans: the buckets without an eligible owner, with the reason each
//     must move (unassigned, node gone, drained).
//  3. reconcile: each orphan to the node with the fewest buckets; or, when
//     rebalancing, rebalance: targets (as even as pins allow), each node's
//     surplus over its target (surplus) joins the orphans in a pool, and
//     each pooled bucket goes to the node furthest below its target.
//  4. The moves are sorted by bucket.
package planner

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// Reasons a bucket moves.
const (
	ReasonUnassigned = "unassigned" // it had no owner
	ReasonNodeGone   = "node_gone"  // its owner is not registered
	ReasonDrained    = "drained"    // its owner is drained
	ReasonPinned     = "pinned"     // the operator pinned it to another node
	ReasonRebalance  = "rebalance"  // moved to even out bucket counts
)

// ErrNoEligibleNode: no live, undrained node can own buckets. The planner
// then leaves the assignment as it is (never wipes it).
var ErrNoEligibleNode = errors.New("no live, undrained node to assign buckets to")

// Input is what a plan depends on.
type Input struct {
	// Current owners; nil if there is no assignment yet.
	Current *schema.Assignment
	// Live lists the registered node ids (any order).
	Live []string
	// Settings are the operator's drains and pins.
	Settings schema.Settings
	// Rebalance asks for even bucket counts, not only for repairs.
	Rebalance bool
}

// Plan is the planner's answer.
type Plan struct {
	Owners [bucket.Count]string
	Moves  []schema.Move // in bucket order, each with its Reason
	// Warnings are settings that could not be honoured (e.g. a pin to a
	// node that is not live), for the log and the operator.
	Warnings []string
}

// Counts returns how many buckets each node owns under the plan.
func (p *Plan) Counts() map[string]int { return (&schema.Assignment{Owners: p.Owners}).Counts() }

// Compute makes a plan. With no eligible node it returns the current owners
// unchanged and ErrNoEligibleNode.
func Compute(in Input) (*Plan, error) {
	pl := newPlanning(in)
	if len(pl.eligible) == 0 {
		return pl.plan, ErrNoEligibleNode
	}
	pl.honourablePins()
	pl.applyPins()
	orphans := pl.orphans()
	if in.Rebalance {
		pl.rebalance(orphans)
	} else {
		pl.reconcile(orphans)
	}
	pl.plan.sortMoves()
	return pl.plan, nil
}

// planning is one run of Compute: the input, what it implies, and the plan
// as the steps build it.
type planning struct {
	in       Input
	live     map[string]bool
	drained  map[string]bool
	eligible []string                 // live and undrained, sorted
	pinned   map[bucket.Bucket]string // the pins that can be honoured
	counts   map[string]int           // buckets per eligible node under plan.Owners
	reasons  map[bucket.Bucket]string // why each orphan or surplus bucket moves
	plan     *Plan                    // starts as the current owners
}

// newPlanning starts from the current owners and counts what each eligible
// node holds.
func newPlanning(in Input) *planning {
	pl := &planning{in: in, live: map[string]bool{}, drained: map[string]bool{},
		counts: map[string]int{}, reasons: map[bucket.Bucket]string{}, plan: &Plan{}}
	if in.Current != nil {
		pl.plan.Owners = in.Current.Owners
	}
	for _, n := range in.Live {
		pl.live[n] = true
	}
	for _, n := range in.Settings.Drained {
		pl.drained[n] = true
	}
	for n := range pl.live {
		if !pl.drained[n] {
			pl.eligible = append(pl.eligible, n)
			pl.counts[n] = 0
		}
	}
	slices.Sort(pl.eligible)
	for _, n := range pl.plan.Owners {
		if pl.isEligible(n) {
			pl.counts[n]++
		}
	}
	return pl
}

// isEligible reports whether n may own buckets: live and undrained.
func (pl *planning) isEligible(n string) bool { return n != "" && pl.live[n] && !pl.drained[n] }

// honourablePins keeps the pins to a live, undrained node; each other pin
// becomes a warning.
func (pl *planning) honourablePins() {
	pl.pinned = map[bucket.Bucket]string{}
	for _, b := range slices.Sorted(maps.Keys(pl.in.Settings.Pins)) {
		n := pl.in.Settings.Pins[b]
		switch {
		case !pl.live[n]:
			pl.warnf("bucket %s is pinned to %s, which is not registered: pin ignored", b, n)
		case pl.drained[n]:
			pl.warnf("bucket %s is pinned to %s, which is drained: pin ignored", b, n)
		default:
			pl.pinned[b] = n
		}
	}
}

func (pl *planning) warnf(format string, args ...any) {
	pl.plan.Warnings = append(pl.plan.Warnings, fmt.Sprintf(format, args...))
}

// applyPins moves each pinned bucket to its node (step 1).
func (pl *planning) applyPins() {
	for _, b := range slices.Sorted(maps.Keys(pl.pinned)) {
		if pl.plan.Owners[b] != pl.pinned[b] {
			pl.move(b, pl.pinned[b], ReasonPinned)
		}
	}
}

// orphans returns the buckets without an eligible owner, which must move
// (step 2), and records why.
func (pl *planning) orphans() []bucket.Bucket {
	var orphans []bucket.Bucket
	for b, n := range pl.plan.Owners {
		var reason string
		switch {
		case n == "":
			reason = ReasonUnassigned
		case !pl.live[n]:
			reason = ReasonNodeGone
		case pl.drained[n]:
			reason = ReasonDrained
		default:
			continue
		}
		pl.reasons[bucket.Bucket(b)] = reason
		orphans = append(orphans, bucket.Bucket(b))
	}
	return orphans
}

// reconcile moves each orphan to the eligible node with the fewest buckets
// (step 3, the routine run).
func (pl *planning) reconcile(orphans []bucket.Bucket) {
	for _, b := range orphans {
		pl.move(b, fewest(pl.eligible, pl.counts), pl.reasons[b])
	}
}

// move gives bucket b to node to, keeping the counts and listing the move.
func (pl *planning) move(b bucket.Bucket, to, reason string) {
	from := pl.plan.Owners[b]
	if pl.isEligible(from) {
		pl.counts[from]--
	}
	pl.counts[to]++
	pl.plan.Owners[b] = to
	pl.plan.Moves = append(pl.plan.Moves, schema.Move{Bucket: b, From: from, To: to, Reason: reason})
}

// rebalance (step 3 when asked to even out counts) gives each node a target
// as even as pins allow, the larger targets to the nodes that already hold
// the most, so the surplus (the buckets that must leave a node) is as small
// as it can be. The orphans and the surplus form a pool; each pooled bucket
// goes to the node furthest below its target.
func (pl *planning) rebalance(orphans []bucket.Bucket) {
	target := targets(pl.eligible, pl.counts, pl.pinCounts())
	pool := append(orphans, pl.surplus(target)...)
	slices.Sort(pool)
	for _, b := range pool {
		if pl.isEligible(pl.plan.Owners[b]) {
			pl.counts[pl.plan.Owners[b]]-- // leaves now; counted again at its new home
			pl.plan.Owners[b] = ""
		}
	}
	for _, b := range pool {
		to := mostBelowTarget(pl.eligible, pl.counts, target)
		pl.counts[to]++
		pl.plan.Owners[b] = to
		if from := pl.currentOwner(b); from != to {
			pl.plan.Moves = append(pl.plan.Moves, schema.Move{Bucket: b, From: from, To: to, Reason: pl.reasons[b]})
		}
	}
}

// pinCounts returns how many honoured pins each node has.
func (pl *planning) pinCounts() map[string]int {
	c := map[string]int{}
	for _, n := range pl.pinned {
		c[n]++
	}
	return c
}

// surplus picks, on each node above its target, as many unpinned buckets as
// it holds too many, marked ReasonRebalance. It gives up the
// highest-numbered buckets first (any choice moves the same number; this
// one is deterministic).
func (pl *planning) surplus(target map[string]int) []bucket.Bucket {
	var out []bucket.Bucket
	for _, n := range pl.eligible {
		extra := pl.counts[n] - target[n]
		for b := bucket.Count - 1; b >= 0 && extra > 0; b-- {
			_, isPinned := pl.pinned[bucket.Bucket(b)]
			if pl.plan.Owners[b] == n && !isPinned {
				out = append(out, bucket.Bucket(b))
				pl.reasons[bucket.Bucket(b)] = ReasonRebalance
				extra--
			}
		}
	}
	return out
}

// currentOwner is b's owner in the input ("" if none).
func (pl *planning) currentOwner(b bucket.Bucket) string {
	if pl.in.Current == nil {
		return ""
	}
	return pl.in.Current.Owners[b]
}

// targets returns each eligible node's bucket count after a rebalance: as
// even as pins allow. A node whose pins alone exceed the even share keeps
// exactly its pins; the rest share what is left, the +1 remainders going to
// the nodes that hold the most now (ties: lowest id).
func targets(eligible []string, counts, pins map[string]int) map[string]int {
	t := map[string]int{}
	free := slices.Clone(eligible)
	remaining := bucket.Count
	for {
		q := remaining / len(free)
		var keep []string
		fixed := false
		for _, n := range free {
			if pins[n] > q {
				t[n] = pins[n]
				remaining -= pins[n]
				fixed = true
			} else {
				keep = append(keep, n)
			}
		}
		free = keep
		if !fixed || len(free) == 0 {
			break
		}
	}
	if len(free) == 0 {
		return t
	}
	q, r := remaining/len(free), remaining%len(free)
	byLoad := slices.Clone(free)
	slices.SortStableFunc(byLoad, func(a, b string) int {
		return cmp.Or(cmp.Compare(counts[b], counts[a]), cmp.Compare(a, b))
	})
	for i, n := range byLoad {
		t[n] = q
		if i < r {
			t[n]++
		}
	}
	return t
}

// fewest returns the node with the fewest buckets (ties: lowest id).
func fewest(nodes []string, counts map[string]int) string {
	best := nodes[0]
	for _, n := range nodes[1:] {
		if counts[n] < counts[best] {
			best = n
		}
	}
	return best
}

// mostBelowTarget returns the node furthest below its target (ties: lowest id).
func mostBelowTarget(nodes []string, counts, target map[string]int) string {
	best := nodes[0]
	for _, n := range nodes[1:] {
		if target[n]-counts[n] > target[best]-counts[best] {
			best = n
		}
	}
	return best
}

func (p *Plan) sortMoves() {
	slices.SortFunc(p.Moves, func(a, b schema.Move) int { return cmp.Compare(a.Bucket, b.Bucket) })
}
