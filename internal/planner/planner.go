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

// Changed reports whether the plan moves anything.
func (p *Plan) Changed() bool { return len(p.Moves) > 0 }

// Counts returns how many buckets each node owns under the plan.
func (p *Plan) Counts() map[string]int { return (&schema.Assignment{Owners: p.Owners}).Counts() }

// Compute makes a plan. With no eligible node it returns the current owners
// unchanged and ErrNoEligibleNode.
func Compute(in Input) (*Plan, error) {
	p := &Plan{}
	if in.Current != nil {
		p.Owners = in.Current.Owners
	}
	live := map[string]bool{}
	for _, n := range in.Live {
		live[n] = true
	}
	drained := map[string]bool{}
	for _, n := range in.Settings.Drained {
		drained[n] = true
	}
	var eligible []string
	for n := range live {
		if !drained[n] {
			eligible = append(eligible, n)
		}
	}
	slices.Sort(eligible)
	if len(eligible) == 0 {
		return p, ErrNoEligibleNode
	}
	isEligible := func(n string) bool { return n != "" && live[n] && !drained[n] }

	// Pins that can be honoured: to a live, undrained node.
	pinned := map[bucket.Bucket]string{}
	for _, b := range slices.Sorted(maps.Keys(in.Settings.Pins)) {
		n := in.Settings.Pins[b]
		switch {
		case !live[n]:
			p.Warnings = append(p.Warnings, fmt.Sprintf("bucket %s is pinned to %s, which is not registered: pin ignored", b, n))
		case drained[n]:
			p.Warnings = append(p.Warnings, fmt.Sprintf("bucket %s is pinned to %s, which is drained: pin ignored", b, n))
		default:
			pinned[b] = n
		}
	}

	counts := map[string]int{}
	for _, n := range eligible {
		counts[n] = 0
	}
	for _, n := range p.Owners {
		if isEligible(n) {
			counts[n]++
		}
	}
	move := func(b bucket.Bucket, to, reason string) {
		from := p.Owners[b]
		if isEligible(from) {
			counts[from]--
		}
		counts[to]++
		p.Owners[b] = to
		p.Moves = append(p.Moves, schema.Move{Bucket: b, From: from, To: to, Reason: reason})
	}

	// 1. Pinned buckets go to their node.
	for _, b := range slices.Sorted(maps.Keys(pinned)) {
		if p.Owners[b] != pinned[b] {
			move(b, pinned[b], ReasonPinned)
		}
	}
	// 2. Buckets without an eligible owner: these must move.
	var orphans []bucket.Bucket
	reasons := map[bucket.Bucket]string{}
	for b := range bucket.Count {
		n := p.Owners[b]
		switch {
		case n == "":
			reasons[bucket.Bucket(b)] = ReasonUnassigned
		case !live[n]:
			reasons[bucket.Bucket(b)] = ReasonNodeGone
		case drained[n]:
			reasons[bucket.Bucket(b)] = ReasonDrained
		default:
			continue
		}
		orphans = append(orphans, bucket.Bucket(b))
	}

	if !in.Rebalance {
		for _, b := range orphans {
			move(b, fewest(eligible, counts), reasons[b])
		}
		p.sortMoves()
		return p, nil
	}

	// 3. Rebalance: targets as even as pins allow, the larger targets given
	// to the nodes that already hold the most, so the surplus (the buckets
	// that must leave a node) is as small as it can be.
	pinCount := map[string]int{}
	for _, n := range pinned {
		pinCount[n]++
	}
	target := targets(eligible, counts, pinCount)
	pool := orphans
	for _, n := range eligible {
		surplus := counts[n] - target[n]
		// Give up the highest-numbered movable buckets first (any choice
		// moves the same number; this one is deterministic).
		for b := bucket.Count - 1; b >= 0 && surplus > 0; b-- {
			if p.Owners[b] == n {
				if _, isPinned := pinned[bucket.Bucket(b)]; !isPinned {
					pool = append(pool, bucket.Bucket(b))
					reasons[bucket.Bucket(b)] = ReasonRebalance
					surplus--
				}
			}
		}
	}
	slices.Sort(pool)
	for _, b := range pool {
		if isEligible(p.Owners[b]) {
			counts[p.Owners[b]]-- // leaves now; counted again at its new home
			p.Owners[b] = ""
		}
	}
	for _, b := range pool {
		to := mostBelowTarget(eligible, counts, target)
		from := ""
		if in.Current != nil {
			from = in.Current.Owners[b]
		}
		counts[to]++
		p.Owners[b] = to
		if from != to {
			p.Moves = append(p.Moves, schema.Move{Bucket: b, From: from, To: to, Reason: reasons[b]})
		}
	}
	p.sortMoves()
	return p, nil
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
