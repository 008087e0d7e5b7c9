package planner

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

func nodes(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("n%02d", i))
	}
	return out
}

func asAssignment(owners [bucket.Count]string) *schema.Assignment {
	return &schema.Assignment{Version: 1, Owners: owners}
}

func spread(counts map[string]int, eligible []string) int {
	lo, hi := bucket.Count, 0
	for _, n := range eligible {
		lo, hi = min(lo, counts[n]), max(hi, counts[n])
	}
	return hi - lo
}

func mustCompute(t *testing.T, in Input) *Plan {
	t.Helper()
	p, err := Compute(in)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFreshAssignmentIsEven(t *testing.T) {
	for n := 1; n <= 40; n++ {
		t.Run(fmt.Sprintf("%d nodes", n), func(t *testing.T) {
			live := nodes(n)
			p := mustCompute(t, Input{Live: live})
			c := p.Counts()
			for _, id := range live {
				if c[id] != bucket.Count/n && c[id] != (bucket.Count+n-1)/n {
					t.Fatalf("%s has %d buckets", id, c[id])
				}
			}
			if len(p.Moves) != bucket.Count {
				t.Fatalf("%d moves", len(p.Moves))
			}
			for _, m := range p.Moves {
				if m.Reason != ReasonUnassigned || m.From != "" {
					t.Fatalf("move %+v", m)
				}
			}
		})
	}
	t.Run("3 nodes: the extra bucket goes to the lowest id", func(t *testing.T) {
		p := mustCompute(t, Input{Live: nodes(3)})
		if c := p.Counts(); c["n01"] != 86 || c["n02"] != 85 || c["n03"] != 85 {
			t.Fatalf("%v; want 86/85/85", c)
		}
	})
}

func TestNodeGoneMovesOnlyItsBuckets(t *testing.T) {
	start := mustCompute(t, Input{Live: nodes(3)})
	p := mustCompute(t, Input{Current: asAssignment(start.Owners), Live: []string{"n01", "n03"}})
	if len(p.Moves) != 85 {
		t.Fatalf("%d moves; want the 85 buckets of n02", len(p.Moves))
	}
	for _, m := range p.Moves {
		if m.From != "n02" || m.Reason != ReasonNodeGone {
			t.Fatalf("unexpected move %+v", m)
		}
	}
	for b := range bucket.Count {
		if start.Owners[b] != "n02" && p.Owners[b] != start.Owners[b] {
			t.Fatalf("bucket %02x of a live node moved", b)
		}
	}
	if c := p.Counts(); spread(c, []string{"n01", "n03"}) > 1 {
		t.Fatalf("orphans not spread to the fewest: %v", c)
	}
}

func TestNodeJoinMovesNothingUnlessAutoRebalance(t *testing.T) {
	start := mustCompute(t, Input{Live: nodes(2)}) // 128/128; n03 joins
	cases := []struct {
		name      string
		in        Input
		wantMoves int
		wantEven  bool // spread ≤ 1 over the three nodes
	}{
		{name: "reconcile", in: Input{Current: asAssignment(start.Owners), Live: nodes(3)}, wantMoves: 0},
		{name: "auto-rebalance", in: Input{Current: asAssignment(start.Owners), Live: nodes(3),
			Settings: schema.Settings{AutoRebalance: true}, Rebalance: true}, wantMoves: 85, wantEven: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := mustCompute(t, tc.in)
			c := p.Counts()
			if len(p.Moves) != tc.wantMoves || (tc.wantEven && spread(c, nodes(3)) > 1) {
				t.Fatalf("a joining node: %v, %d moves; want %d moves, even %v", c, len(p.Moves), tc.wantMoves, tc.wantEven)
			}
		})
	}
}

func TestNoEligibleNodeLeavesAssignmentAlone(t *testing.T) {
	start := mustCompute(t, Input{Live: nodes(2)})
	cases := []struct {
		name    string
		live    []string
		drained []string
	}{
		{name: "no live node"},
		{name: "every live node drained", live: []string{"n01"}, drained: []string{"n01"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compute(Input{Current: asAssignment(start.Owners), Live: tc.live, Settings: schema.Settings{Drained: tc.drained}})
			if !errors.Is(err, ErrNoEligibleNode) || p.Owners != start.Owners || len(p.Moves) > 0 {
				t.Fatalf("err %v, owners kept %v, changed %v", err, p.Owners == start.Owners, len(p.Moves) > 0)
			}
		})
	}
}

func TestDrainMovesOnlyTheDrainedNodesBuckets(t *testing.T) {
	start := mustCompute(t, Input{Live: nodes(4)})
	p := mustCompute(t, Input{Current: asAssignment(start.Owners), Live: nodes(4), Settings: schema.Settings{Drained: []string{"n02"}}})
	if len(p.Moves) != 64 || p.Counts()["n02"] != 0 {
		t.Fatalf("drain: %d moves, n02 keeps %d", len(p.Moves), p.Counts()["n02"])
	}
	for _, m := range p.Moves {
		if m.From != "n02" || m.Reason != ReasonDrained {
			t.Fatalf("move %+v", m)
		}
	}
	// Undrain: nothing comes back by itself (stability); a rebalance evens it out.
	p2 := mustCompute(t, Input{Current: asAssignment(p.Owners), Live: nodes(4)})
	if len(p2.Moves) > 0 {
		t.Fatal("undrain moved buckets without a rebalance")
	}
	p3 := mustCompute(t, Input{Current: asAssignment(p.Owners), Live: nodes(4), Rebalance: true})
	if len(p3.Moves) != 64 || spread(p3.Counts(), nodes(4)) != 0 {
		t.Fatalf("rebalance after undrain: %d moves %v", len(p3.Moves), p3.Counts())
	}
}

func TestPins(t *testing.T) {
	start := mustCompute(t, Input{Live: nodes(3)})
	t.Run("honoured only to a live, undrained node", func(t *testing.T) {
		pins := map[bucket.Bucket]string{0x00: "n03", 0x01: "n09", 0x02: "n02"} // 00 is n01's; n09 is not live
		p := mustCompute(t, Input{Current: asAssignment(start.Owners), Live: nodes(3), Settings: schema.Settings{Pins: pins, Drained: []string{"n02"}}})
		if p.Owners[0x00] != "n03" {
			t.Fatalf("pin not honoured: 00 -> %s", p.Owners[0x00])
		}
		if p.Owners[0x02] == "n02" || len(p.Warnings) != 2 {
			t.Fatalf("pin to a drained or dead node: owner %s, warnings %q", p.Owners[0x02], p.Warnings)
		}
	})
	t.Run("rebalance keeps 200 pins on n01", func(t *testing.T) {
		heavy := map[bucket.Bucket]string{}
		for b := range 200 {
			heavy[bucket.Bucket(b)] = "n01"
		}
		r := mustCompute(t, Input{Current: asAssignment(start.Owners), Live: nodes(3), Settings: schema.Settings{Pins: heavy}, Rebalance: true})
		if c := r.Counts(); c["n01"] != 200 || c["n02"] != 28 || c["n03"] != 28 {
			t.Fatalf("%v; want 200/28/28", c)
		}
	})
}

// minimalRebalanceMoves computes, by brute force over every choice of the
// nodes that get the +1 remainders, the fewest moves that reach a spread of
// at most 1: every bucket without an eligible owner, plus each node's surplus
// over its target.
func minimalRebalanceMoves(cur [bucket.Count]string, eligible []string) int {
	counts := map[string]int{}
	orphans := 0
	for _, n := range cur {
		if slices.Contains(eligible, n) {
			counts[n]++
		} else {
			orphans++
		}
	}
	k := len(eligible)
	q, r := bucket.Count/k, bucket.Count%k
	best := -1
	for mask := 0; mask < 1<<k; mask++ {
		ones := 0
		for i := 0; i < k; i++ {
			if mask&(1<<i) != 0 {
				ones++
			}
		}
		if ones != r {
			continue
		}
		moves := orphans
		for i, n := range eligible {
			t := q
			if mask&(1<<i) != 0 {
				t++
			}
			moves += max(0, counts[n]-t)
		}
		if best < 0 || moves < best {
			best = moves
		}
	}
	return best
}

// randomCluster makes a random current assignment over a pool of node ids,
// some of them dead, with random drains and pins.
func randomCluster(rng *rand.Rand, withSettings bool) Input {
	pool := nodes(1 + rng.IntN(10))
	var live []string
	for _, n := range pool {
		if rng.IntN(4) != 0 {
			live = append(live, n)
		}
	}
	if len(live) == 0 {
		live = pool[:1]
	}
	live = append(live, nodes(12)[10+rng.IntN(2)]) // sometimes a brand-new node
	var in Input
	if rng.IntN(10) != 0 {
		var owners [bucket.Count]string
		skew := rng.IntN(len(pool))
		for b := range owners {
			switch x := rng.IntN(20); {
			case x == 0:
				owners[b] = "" // unassigned
			case x < 8:
				owners[b] = pool[skew] // a skewed load
			default:
				owners[b] = pool[rng.IntN(len(pool))]
			}
		}
		in.Current = asAssignment(owners)
	}
	rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	in.Live = live
	if withSettings {
		for _, n := range live[1:] {
			if rng.IntN(5) == 0 {
				in.Settings.Drained = append(in.Settings.Drained, n)
			}
		}
		if rng.IntN(3) == 0 {
			in.Settings.Pins = map[bucket.Bucket]string{}
			for range rng.IntN(30) {
				in.Settings.Pins[bucket.Bucket(rng.IntN(bucket.Count))] = pool[rng.IntN(len(pool))]
			}
		}
	}
	return in
}

func eligibleOf(in Input) []string {
	var e []string
	for _, n := range in.Live {
		if !in.Settings.IsDrained(n) {
			e = append(e, n)
		}
	}
	slices.Sort(e)
	return e
}

// forRandomClusters runs check on n random clusters, each a subtest named
// by its number, and stops at the first that fails.
func forRandomClusters(t *testing.T, seed1, seed2 uint64, n int, withSettings bool, check func(t *testing.T, in Input)) {
	rng := rand.New(rand.NewPCG(seed1, seed2))
	for i := range n {
		in := randomCluster(rng, withSettings)
		if !t.Run(fmt.Sprintf("case %d", i), func(t *testing.T) { check(t, in) }) {
			return
		}
	}
}

func checkCommon(t *testing.T, in Input, p *Plan) {
	t.Helper()
	eligible := eligibleOf(in)
	var cur [bucket.Count]string
	if in.Current != nil {
		cur = in.Current.Owners
	}
	// Every bucket has exactly one eligible owner.
	for b, n := range p.Owners {
		if !slices.Contains(eligible, n) {
			t.Fatalf("bucket %02x owned by %q, not an eligible node %v", b, n, eligible)
		}
	}
	// Moves are exactly the changed buckets, with the right From.
	changed := 0
	for b := range bucket.Count {
		if cur[b] != p.Owners[b] {
			changed++
		}
	}
	if changed != len(p.Moves) {
		t.Fatalf("%d buckets changed but %d moves listed", changed, len(p.Moves))
	}
	for _, m := range p.Moves {
		if m.From != cur[m.Bucket] || m.To != p.Owners[m.Bucket] || m.From == m.To {
			t.Fatalf("move %+v inconsistent", m)
		}
	}
	// Honourable pins hold.
	for b, n := range in.Settings.Pins {
		if slices.Contains(eligible, n) && p.Owners[b] != n {
			t.Fatalf("pin %s -> %s not honoured", b, n)
		}
	}
	// Same input, live nodes in another order: same output.
	again := in
	again.Live = slices.Clone(in.Live)
	slices.Reverse(again.Live)
	q, _ := Compute(again)
	if q.Owners != p.Owners || len(q.Moves) != len(p.Moves) {
		t.Fatal("not deterministic")
	}
}

func TestPropertyReconcileMovesOnlyWhatMust(t *testing.T) {
	forRandomClusters(t, 1, 2, 5000, true, func(t *testing.T, in Input) {
		p, err := Compute(in)
		if err != nil {
			t.Fatal(err)
		}
		checkCommon(t, in, p)
		eligible := eligibleOf(in)
		for _, m := range p.Moves {
			pinnedHere := in.Settings.Pins[m.Bucket] == m.To && slices.Contains(eligible, m.To)
			if slices.Contains(eligible, m.From) && !pinnedHere {
				t.Fatalf("moved bucket %s away from eligible %s without a pin (%+v)", m.Bucket, m.From, m)
			}
		}
	})
}

func TestPropertyRebalanceIsEvenWithMinimalMoves(t *testing.T) {
	forRandomClusters(t, 3, 4, 5000, false, func(t *testing.T, in Input) {
		in.Rebalance = true
		p, err := Compute(in)
		if err != nil {
			t.Fatal(err)
		}
		checkCommon(t, in, p)
		eligible := eligibleOf(in)
		if s := spread(p.Counts(), eligible); s > 1 {
			t.Fatalf("spread %d after rebalance: %v", s, p.Counts())
		}
		var cur [bucket.Count]string
		if in.Current != nil {
			cur = in.Current.Owners
		}
		if want := minimalRebalanceMoves(cur, eligible); len(p.Moves) != want {
			t.Fatalf("%d moves; the minimum is %d", len(p.Moves), want)
		}
		// Rebalancing a balanced assignment moves nothing.
		q, _ := Compute(Input{Current: asAssignment(p.Owners), Live: in.Live, Rebalance: true})
		if len(q.Moves) > 0 {
			t.Fatalf("rebalancing a balanced assignment moved %d buckets", len(q.Moves))
		}
	})
}

func TestPropertyRebalanceWithSettings(t *testing.T) {
	forRandomClusters(t, 5, 6, 3000, true, func(t *testing.T, in Input) {
		in.Rebalance = true
		p, err := Compute(in)
		if err != nil {
			t.Fatal(err)
		}
		checkCommon(t, in, p)
		// Nodes not weighed down by pins are within 1 of each other.
		pinCount := map[string]int{}
		for b, n := range in.Settings.Pins {
			if p.Owners[b] == n {
				pinCount[n]++
			}
		}
		counts := p.Counts()
		var free []string
		for _, n := range eligibleOf(in) {
			if counts[n] > pinCount[n] || pinCount[n] == 0 {
				free = append(free, n)
			}
		}
		if s := spread(counts, free); s > 1 {
			t.Fatalf("spread %d among nodes not full of pins: %v (pins %v)", s, counts, pinCount)
		}
	})
}
