package planner

import (
	"cmp"
	"slices"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// ReasonLoad: moved to even out the load the proxies measure.
const ReasonLoad = "load"

// MinGainFraction is the least a load move must lower the hotter of its
// two nodes, as a fraction of the mean node load: a move costs a
// server's save and reload of the bucket's bases, so shuffling tiny
// buckets for a tiny gain is not worth it (a node that holds one bucket
// hotter than the band is left with it rather than stripped of all its
// small ones).
const MinGainFraction = 0.02

// LoadInput is what a plan by load depends on.
type LoadInput struct {
	// Owners are the effective owners (moves in progress and queued
	// counted as done).
	Owners [bucket.Count]string
	// Load is each bucket's load score (≥ 0).
	Load [bucket.Count]float64
	// Eligible are the nodes that may receive buckets and whose load is
	// balanced: live, undrained, not leaving, not held. Buckets of other
	// owners neither move nor count towards the mean.
	Eligible []string
	// Fixed buckets must not move: pinned, in cooldown, moving or queued.
	Fixed map[bucket.Bucket]bool
	// MaxMoves bounds the moves of one plan (≥ 1).
	MaxMoves int
	// Band is the goal: every eligible node at most Band × the mean
	// (e.g. 1.10).
	Band float64
}

// LoadPlan is a plan by load.
type LoadPlan struct {
	Owners [bucket.Count]string
	Moves  []schema.Move // in bucket order, Reason "load"
	// Before and After are the load per node (every owner, eligible or
	// not) before and after the moves; Mean is the mean over the
	// eligible nodes (the same before and after: load moves with its
	// bucket); Cap is Band × Mean.
	Before, After map[string]float64
	Mean, Cap     float64
	// Within says whether every eligible node ends at most Cap.
	Within bool
}

// ByLoad plans the bucket moves that bring every eligible node's load
// within Band × the mean, with as few moves as it can find, at most
// MaxMoves. It is greedy, from the hottest node to the coldest: each
// step moves one bucket off the hottest node (ties: lowest id) to the
// coldest (ties: lowest id), the largest bucket that leaves the coldest
// within the band; if none does, the bucket that best lowers the hotter
// of the two. A step must lower the hottest node by at least
// MinGainFraction × mean, and no bucket moves twice. So the hottest
// node's load never rises, and every step strictly lowers it: a few hot
// buckets on one node take one move each, the fewest possible.
func ByLoad(in LoadInput) *LoadPlan {
	p := &LoadPlan{Owners: in.Owners, Before: nodeLoads(in.Owners, in.Load), Within: true}
	eligible := map[string]bool{}
	total := 0.0
	for _, n := range in.Eligible {
		eligible[n] = true
	}
	for b, n := range in.Owners {
		if eligible[n] {
			total += in.Load[b]
		}
	}
	loads := map[string]float64{}
	for _, n := range in.Eligible {
		loads[n] = p.Before[n]
	}
	if len(in.Eligible) > 0 {
		p.Mean = total / float64(len(in.Eligible))
	}
	p.Cap = in.Band * p.Mean
	nodes := slices.Sorted(slices.Values(in.Eligible))
	moved := map[bucket.Bucket]bool{}
	minGain := MinGainFraction * p.Mean
	for len(p.Moves) < in.MaxMoves && len(nodes) >= 2 && p.Mean > 0 {
		hot, cold := extremes(nodes, loads)
		if loads[hot] <= p.Cap {
			break
		}
		b, ok := pickLoadMove(p, in, hot, cold, loads, moved, minGain)
		if !ok {
			break
		}
		x := in.Load[b]
		loads[hot] -= x
		loads[cold] += x
		p.Owners[b] = cold
		moved[b] = true
		p.Moves = append(p.Moves, schema.Move{Bucket: b, From: hot, To: cold, Reason: ReasonLoad})
	}
	for _, n := range nodes {
		if loads[n] > p.Cap {
			p.Within = false
		}
	}
	slices.SortFunc(p.Moves, func(a, b schema.Move) int { return cmp.Compare(a.Bucket, b.Bucket) })
	p.After = nodeLoads(p.Owners, in.Load)
	for _, n := range nodes {
		p.Before[n] += 0 // an eligible node without load is listed too
		p.After[n] += 0
	}
	return p
}

// pickLoadMove chooses the bucket to move from hot to cold (see ByLoad).
func pickLoadMove(p *LoadPlan, in LoadInput, hot, cold string, loads map[string]float64,
	moved map[bucket.Bucket]bool, minGain float64) (bucket.Bucket, bool) {
	h, c := loads[hot], loads[cold]
	var fit, best bucket.Bucket
	haveFit, haveBest := false, false
	bestMax := h
	for i := range bucket.Count {
		b := bucket.Bucket(i)
		x := in.Load[b]
		if p.Owners[b] != hot || x <= 0 || in.Fixed[b] || moved[b] {
			continue
		}
		newMax := max(h-x, c+x)
		if h-newMax < minGain {
			continue // too little gain (or none: the cold node would end as hot)
		}
		if c+x <= p.Cap && (!haveFit || x > in.Load[fit]) {
			fit, haveFit = b, true
		}
		if newMax < bestMax {
			best, bestMax, haveBest = b, newMax, true
		}
	}
	if haveFit {
		return fit, true
	}
	return best, haveBest
}

// extremes returns the hottest and the coldest node (ties: lowest id).
func extremes(nodes []string, loads map[string]float64) (hot, cold string) {
	hot, cold = nodes[0], nodes[0]
	for _, n := range nodes[1:] {
		if loads[n] > loads[hot] {
			hot = n
		}
		if loads[n] < loads[cold] {
			cold = n
		}
	}
	return hot, cold
}

// nodeLoads sums the bucket loads per owner.
func nodeLoads(owners [bucket.Count]string, load [bucket.Count]float64) map[string]float64 {
	out := map[string]float64{}
	for b, n := range owners {
		if n != "" {
			out[n] += load[b]
		}
	}
	return out
}
