package planner

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// threeNodes owns bucket b by n(b%3+1), each with load 1.
func threeNodes() LoadInput {
	in := LoadInput{Eligible: []string{"n1", "n2", "n3"}, MaxMoves: 16, Band: 1.10}
	for b := range bucket.Count {
		in.Owners[b] = fmt.Sprintf("n%d", b%3+1)
		in.Load[b] = 1
	}
	return in
}

// Six hot buckets on n1 (load 100 each, the rest 1): n1 holds 680 of 850.
// With three moves n1 keeps three hot buckets (≥ 380 > the band's
// 311.7), so four is the minimum; four leave every node at 280-285.
func TestByLoadSkewedTakesTheFewestMoves(t *testing.T) {
	in := threeNodes()
	hot := []bucket.Bucket{0x00, 0x03, 0x06, 0x09, 0x0c, 0x0f}
	for _, b := range hot {
		in.Load[b] = 100
	}
	p := ByLoad(in)
	if len(p.Moves) != 4 || !p.Within {
		t.Fatalf("moves %v, within %v, after %v; want 4 moves within the band (cap %.1f)", p.Moves, p.Within, p.After, p.Cap)
	}
	for _, mv := range p.Moves {
		if !slices.Contains(hot, mv.Bucket) || mv.From != "n1" || mv.Reason != ReasonLoad {
			t.Fatalf("move %+v: want a hot bucket off n1, reason load", mv)
		}
	}
	if p.Before["n1"] != 680 || p.After["n1"] != 280 || p.After["n2"] != 285 || p.After["n3"] != 285 {
		t.Fatalf("before %v after %v", p.Before, p.After)
	}
}

func TestByLoadEvenLoadMovesNothing(t *testing.T) {
	p := ByLoad(threeNodes())
	if len(p.Moves) != 0 || !p.Within {
		t.Fatalf("even load: moves %v", p.Moves)
	}
	in := threeNodes()
	in.Load = [bucket.Count]float64{}
	if p := ByLoad(in); len(p.Moves) != 0 {
		t.Fatalf("no load at all: moves %v", p.Moves)
	}
}

func TestByLoadBoundedPerRound(t *testing.T) {
	in := threeNodes()
	for _, b := range []bucket.Bucket{0x00, 0x03, 0x06, 0x09, 0x0c, 0x0f} {
		in.Load[b] = 100
	}
	in.MaxMoves = 2
	p := ByLoad(in)
	if len(p.Moves) != 2 || p.Within || p.After["n1"] != 480 {
		t.Fatalf("moves %v, after %v; want 2 moves taking n1 to 480, not yet within", p.Moves, p.After)
	}
}

// Pinned or cooling buckets stay; a drained node neither receives nor
// counts; a bucket hotter than the band stays where it is rather than its
// node being stripped of many small buckets for little gain.
func TestByLoadRespectsFixedAndEligible(t *testing.T) {
	in := threeNodes()
	in.Owners[0x01] = "n4" // drained: not eligible
	in.Load[0x01] = 500
	in.Load[0x00], in.Load[0x03] = 100, 100
	in.Fixed = map[bucket.Bucket]bool{0x00: true}
	p := ByLoad(in)
	for _, mv := range p.Moves {
		if mv.Bucket == 0x00 || mv.Bucket == 0x01 || mv.To == "n4" {
			t.Fatalf("move %+v: a fixed bucket or a drained node", mv)
		}
	}
	if p.Before["n4"] != 500 {
		t.Fatalf("the drained node's load is not shown: %v", p.Before)
	}

	in = threeNodes()
	in.Load[0x00] = 1000 // alone far above the band
	if p := ByLoad(in); len(p.Moves) != 0 {
		t.Fatalf("one giant bucket: moves %v; want none (moving it or small ones gains too little)", p.Moves)
	}
}

// Property checks on random loads: at most MaxMoves, each bucket at most
// once, only to eligible nodes, never a fixed bucket, the hottest
// eligible node never hotter, and After the sum of the new owners.
func TestByLoadProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 2))
	for i := range 300 {
		nodes := 2 + rng.IntN(5)
		in := LoadInput{MaxMoves: 1 + rng.IntN(20), Band: 1 + rng.Float64()/2, Fixed: map[bucket.Bucket]bool{}}
		for n := range nodes {
			in.Eligible = append(in.Eligible, fmt.Sprintf("n%d", n))
		}
		for b := range bucket.Count {
			in.Owners[b] = in.Eligible[rng.IntN(nodes)]
			if rng.IntN(3) == 0 {
				in.Owners[b] = in.Eligible[0] // skewed towards n0
			}
			in.Load[b] = rng.ExpFloat64() * 10
			if rng.IntN(20) == 0 {
				in.Load[b] *= 30
			}
			if rng.IntN(10) == 0 {
				in.Fixed[bucket.Bucket(b)] = true
			}
		}
		p := ByLoad(in)
		if len(p.Moves) > in.MaxMoves {
			t.Fatalf("case %d: %d moves, bound %d", i, len(p.Moves), in.MaxMoves)
		}
		seen := map[bucket.Bucket]bool{}
		for _, mv := range p.Moves {
			if seen[mv.Bucket] || in.Fixed[mv.Bucket] || !slices.Contains(in.Eligible, mv.To) || mv.From != in.Owners[mv.Bucket] {
				t.Fatalf("case %d: bad move %+v", i, mv)
			}
			seen[mv.Bucket] = true
		}
		maxOf := func(m map[string]float64) float64 {
			x := 0.0
			for _, n := range in.Eligible {
				x = max(x, m[n])
			}
			return x
		}
		if maxOf(p.After) > maxOf(p.Before)+1e-9 {
			t.Fatalf("case %d: the hottest node got hotter: %v -> %v", i, p.Before, p.After)
		}
		want := nodeLoads(p.Owners, in.Load)
		for _, n := range in.Eligible {
			if d := want[n] - p.After[n]; d > 1e-6 || d < -1e-6 {
				t.Fatalf("case %d: After[%s] = %v, owners say %v", i, n, p.After[n], want[n])
			}
		}
	}
}
