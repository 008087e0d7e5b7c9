package handoff

import (
	"fmt"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

// world is a small cluster: buckets 0..3 on a, 4..7 on b, the rest unassigned.
func world() (*schema.Assignment, [bucket.Count]string) {
	a := &schema.Assignment{Version: 10}
	for b := range 8 {
		a.Owners[b] = map[bool]string{true: "a", false: "b"}[b < 4]
	}
	return a, a.Owners
}

func live(ids ...string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

func moves(ms []schema.Move) string { return fmt.Sprint(ms) }

func TestAdvance(t *testing.T) {
	lim := Limits{MaxMoving: 2, MaxMovingPerNode: 2, Timeout: time.Minute}
	for _, tc := range []struct {
		name  string
		setup func(cur *schema.Assignment, target *[bucket.Count]string, in *Input)
		check func(t *testing.T, st *Step)
	}{
		{"nothing to do", func(*schema.Assignment, *[bucket.Count]string, *Input) {}, func(t *testing.T, st *Step) {
			if st.Changed() {
				t.Fatalf("changed: %+v", st)
			}
		}},
		{"planned moves start under the throttle, the rest queue", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			target[0], target[1], target[2] = "c", "c", "c"
		}, func(t *testing.T, st *Step) {
			if len(st.Started) != 2 || len(st.Queued) != 1 || st.Next.Owners[0] != "a" || st.Next.Owners[2] != "a" {
				t.Fatalf("started %v queued %v owners %v", st.Started, st.Queued, st.Next.Owners[:3])
			}
			if m := st.Next.Moving[0]; m != (schema.MoveState{From: "a", To: "c", Epoch: 11, Since: t0, Reason: "rebalance"}) {
				t.Fatalf("moving[00] = %+v", m)
			}
			if q := st.Next.Queued[2]; q.To != "c" || !st.Changed() {
				t.Fatalf("queued[02] = %+v", q)
			}
		}},
		{"the per-node limit counts the target too", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			in.Limit.MaxMoving, in.Limit.MaxMovingPerNode = 10, 1
			target[0], target[4] = "c", "c" // a->c and b->c: c is in both
		}, func(t *testing.T, st *Step) {
			if len(st.Started) != 1 || len(st.Queued) != 1 {
				t.Fatalf("started %v queued %v", st.Started, st.Queued)
			}
		}},
		{"a bucket whose owner is gone or that is unassigned moves directly", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			in.Live = live("b", "c")
			target[0], target[9] = "c", "c"
		}, func(t *testing.T, st *Step) {
			if moves(st.Direct) != moves([]schema.Move{{Bucket: 0, From: "a", To: "c", Reason: "rebalance"}, {Bucket: 9, To: "c", Reason: "rebalance"}}) || st.Next.Owners[9] != "c" || len(st.Next.Moving) != 0 {
				t.Fatalf("direct %v moving %v", st.Direct, st.Next.Moving)
			}
			if fmt.Sprint(st.GoneOwners()) != "[a]" {
				t.Fatalf("gone owners %v; want [a] (not the unassigned bucket's empty owner)", st.GoneOwners())
			}
		}},
		{"a matching acknowledgement commits and is consumed", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{1: {From: "a", To: "c", Epoch: 9, Since: t0}}
			target[1] = "c"
			in.Released = map[bucket.Bucket]schema.Released{1: {From: "a", Epoch: 9}}
		}, func(t *testing.T, st *Step) {
			if st.Next.Owners[1] != "c" || len(st.Next.Moving) != 0 || moves(st.Committed) != moves([]schema.Move{{Bucket: 1, From: "a", To: "c", Reason: ReasonReleased}}) || fmt.Sprint(st.ConsumedReleases) != "[01]" {
				t.Fatalf("owner %s, committed %v, consumed %v", st.Next.Owners[1], st.Committed, st.ConsumedReleases)
			}
		}},
		{"an acknowledgement of another move does not commit and is consumed", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{1: {From: "a", To: "c", Epoch: 9, Since: t0}}
			target[1] = "c"
			in.Released = map[bucket.Bucket]schema.Released{1: {From: "a", Epoch: 7}, 5: {From: "b", Epoch: 3}}
		}, func(t *testing.T, st *Step) {
			if st.Next.Owners[1] != "a" || len(st.Committed) != 0 || fmt.Sprint(st.ConsumedReleases) != "[01 05]" {
				t.Fatalf("owner %s committed %v consumed %v", st.Next.Owners[1], st.Committed, st.ConsumedReleases)
			}
		}},
		{"the old owner gone mid-move commits at once", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{1: {From: "a", To: "c", Epoch: 9, Since: t0}}
			target[1], target[0], target[2], target[3] = "c", "b", "b", "b"
			in.Live = live("b", "c")
		}, func(t *testing.T, st *Step) {
			if st.Next.Owners[1] != "c" || len(st.Committed) != 1 || st.Committed[0].Reason != ReasonOwnerGone || len(st.Direct) != 3 {
				t.Fatalf("committed %v direct %v", st.Committed, st.Direct)
			}
			if fmt.Sprint(st.GoneOwners()) != "[a]" {
				t.Fatalf("gone owners %v", st.GoneOwners())
			}
		}},
		{"a new target (the old one died) re-targets the move", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{1: {From: "a", To: "c", Epoch: 9, Since: t0.Add(-time.Second)}}
			target[1] = "b"
			in.Live = live("a", "b")
		}, func(t *testing.T, st *Step) {
			m := st.Next.Moving[1]
			if m.To != "b" || m.From != "a" || m.Epoch != 9 || st.Next.Owners[1] != "a" || len(st.Retargeted) != 1 {
				t.Fatalf("moving %+v retargeted %v", m, st.Retargeted)
			}
		}},
		{"no acknowledgement in time aborts; the bucket stays and is queued, not restarted", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{1: {From: "a", To: "c", Epoch: 9, Since: t0.Add(-61 * time.Second)}}
			target[1] = "c"
		}, func(t *testing.T, st *Step) {
			if st.Next.Owners[1] != "a" || len(st.Next.Moving) != 0 || len(st.Aborted) != 1 || st.Aborted[0].Reason != ReasonTimeout || st.Next.Queued[1].To != "c" {
				t.Fatalf("owner %s moving %v aborted %v queued %v", st.Next.Owners[1], st.Next.Moving, st.Aborted, st.Next.Queued)
			}
			// The queued entry records the abort (this step's version), so
			// that a caller waiting for the move can tell.
			if q := st.Next.Queued[1]; q.AbortedVersion != 11 {
				t.Fatalf("queued[01] = %+v, want aborted_version 11", q)
			}
		}},
		{"a held bucket keeps its abort mark; one queued for a slot has none", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Queued = map[bucket.Bucket]schema.QueuedMove{1: {To: "c", AbortedVersion: 8}, 2: {To: "c"}}
			cur.Moving = map[bucket.Bucket]schema.MoveState{3: {From: "a", To: "c", Epoch: 9, Since: t0}}
			target[1], target[2], target[3] = "c", "c", "c"
			in.Hold = map[bucket.Bucket]bool{1: true}
			in.Limit.MaxMoving = 1
		}, func(t *testing.T, st *Step) {
			if q := st.Next.Queued; q[1].To != "c" || q[1].AbortedVersion != 8 || q[2].To != "c" || q[2].AbortedVersion != 0 {
				t.Fatalf("queued %+v", q)
			}
		}},
		{"a bucket that starts again after its abort loses the mark", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Queued = map[bucket.Bucket]schema.QueuedMove{1: {To: "c", AbortedVersion: 8}}
			target[1] = "c"
		}, func(t *testing.T, st *Step) {
			if len(st.Started) != 1 || len(st.Next.Queued) != 0 || st.Next.Moving[1].Epoch != 11 {
				t.Fatalf("started %v queued %v moving %v", st.Started, st.Next.Queued, st.Next.Moving)
			}
		}},
		{"a plan that keeps the bucket cancels its move", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{1: {From: "a", To: "c", Epoch: 9, Since: t0}}
		}, func(t *testing.T, st *Step) {
			if len(st.Aborted) != 1 || st.Aborted[0].Reason != ReasonCancelled || len(st.Next.Moving) != 0 || len(st.Next.Queued) != 0 {
				t.Fatalf("aborted %v", st.Aborted)
			}
		}},
		{"a commit on a release names no gone owner", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{1: {From: "a", To: "c", Epoch: 9, Since: t0}}
			target[1] = "c"
			in.Released = map[bucket.Bucket]schema.Released{1: {From: "a", Epoch: 9}}
		}, func(t *testing.T, st *Step) {
			if len(st.Committed) != 1 || len(st.GoneOwners()) != 0 {
				t.Fatalf("committed %v gone owners %v", st.Committed, st.GoneOwners())
			}
		}},
		{"with no plan (no eligible node), moves still commit, abort or commit as owner gone; the queue stays; nothing starts", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Moving = map[bucket.Bucket]schema.MoveState{
				1: {From: "a", To: "c", Epoch: 9, Since: t0},                        // released
				2: {From: "a", To: "c", Epoch: 9, Since: t0.Add(-61 * time.Second)}, // timed out
				5: {From: "b", To: "c", Epoch: 9, Since: t0},                        // b is gone
				6: {From: "b", To: "c", Epoch: 9, Since: t0},
			}
			cur.Queued = map[bucket.Bucket]schema.QueuedMove{0: {To: "c", Reason: "drained"}, 4: {To: "c", Reason: "drained"}}
			in.Released = map[bucket.Bucket]schema.Released{1: {From: "a", Epoch: 9}}
			in.Live = live("a", "c")
			*target = [bucket.Count]string{}
		}, func(t *testing.T, st *Step) {
			want := moves([]schema.Move{{Bucket: 1, From: "a", To: "c", Reason: ReasonReleased},
				{Bucket: 5, From: "b", To: "c", Reason: ReasonOwnerGone}, {Bucket: 6, From: "b", To: "c", Reason: ReasonOwnerGone}})
			if moves(st.Committed) != want || len(st.Aborted) != 1 || st.Aborted[0].Bucket != 2 || st.Aborted[0].Reason != ReasonTimeout {
				t.Fatalf("committed %v aborted %v", st.Committed, st.Aborted)
			}
			if len(st.Started)+len(st.Direct)+len(st.Retargeted) != 0 || len(st.Next.Moving) != 0 {
				t.Fatalf("started %v direct %v retargeted %v moving %v", st.Started, st.Direct, st.Retargeted, st.Next.Moving)
			}
			// The queue is as it was (04's owner b is gone, but with no plan
			// it does not move directly either).
			if len(st.Next.Queued) != 2 || st.Next.Queued[0].To != "c" || st.Next.Queued[4].Reason != "drained" || st.Next.Owners[4] != "b" {
				t.Fatalf("queued %v, owner of 04 %s", st.Next.Queued, st.Next.Owners[4])
			}
			if fmt.Sprint(st.GoneOwners()) != "[b]" {
				t.Fatalf("gone owners %v", st.GoneOwners())
			}
		}},
		{"a held bucket waits in the queue", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			target[0] = "c"
			in.Hold = map[bucket.Bucket]bool{0: true}
		}, func(t *testing.T, st *Step) {
			if len(st.Started) != 0 || st.Next.Queued[0].To != "c" {
				t.Fatalf("started %v queued %v", st.Started, st.Next.Queued)
			}
		}},
		{"a queued move keeps its reason when a later round does not know it", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Queued = map[bucket.Bucket]schema.QueuedMove{0: {To: "c", Reason: "rebalance"}}
			target[0] = "c"
			in.Hold = map[bucket.Bucket]bool{0: true}
			in.Reasons[0] = "" // the round's plan keeps the target but has no reason for it
		}, func(t *testing.T, st *Step) {
			if st.Next.Queued[0].Reason != "rebalance" || st.Changed() {
				t.Fatalf("queued %+v, changed %v", st.Next.Queued, st.Changed())
			}
		}},
		{"a queue that the plan no longer wants disappears", func(cur *schema.Assignment, target *[bucket.Count]string, in *Input) {
			cur.Queued = map[bucket.Bucket]schema.QueuedMove{0: {To: "c"}}
		}, func(t *testing.T, st *Step) {
			if len(st.Next.Queued) != 0 || !st.Changed() {
				t.Fatalf("queued %v changed %v", st.Next.Queued, st.Changed())
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur, target := world()
			in := Input{Current: cur, Live: live("a", "b", "c"), Reasons: map[bucket.Bucket]string{}, Now: t0, Limit: lim}
			tc.setup(cur, &target, &in)
			for b := range bucket.Count {
				if target[b] != cur.Owners[b] && target[b] != "" {
					if _, ok := in.Reasons[bucket.Bucket(b)]; !ok {
						in.Reasons[bucket.Bucket(b)] = "rebalance"
					}
				}
			}
			in.Target = target
			before := string(cur.Encode())
			st := Advance(in)
			if string(cur.Encode()) != before {
				t.Fatal("Advance changed its input")
			}
			st.Next.Version = cur.Version + 1
			st.Next.NextEpochs(cur)
			if err := st.Next.Validate(); err != nil {
				t.Fatalf("next assignment is invalid: %v\n%s", err, st.Next.Encode())
			}
			tc.check(t, st)
		})
	}
}

// A rebalance of 85 buckets in waves: every wave's old owners acknowledge
// at once; the limits hold in every wave, the owners end at the target,
// and no owner changes without an acknowledgement.
func TestRebalanceInWaves(t *testing.T) {
	cur := &schema.Assignment{Version: 1}
	var target [bucket.Count]string
	for b := range bucket.Count {
		cur.Owners[b] = []string{"a", "b"}[b%2]
		target[b] = cur.Owners[b]
		if b%3 == 0 && len(targetMoves(cur, target)) < 85 {
			target[b] = "c"
		}
	}
	cur.NextEpochs(nil)
	lim := DefaultLimits
	released := map[bucket.Bucket]schema.Released{}
	waves := 0
	for ; waves < 100; waves++ {
		st := Advance(Input{Current: cur, Live: live("a", "b", "c"), Released: released, Target: target, Now: t0, Limit: lim})
		if !st.Changed() {
			break
		}
		for _, mv := range st.Committed {
			if _, ok := released[mv.Bucket]; !ok {
				t.Fatalf("bucket %s committed without an acknowledgement", mv.Bucket)
			}
		}
		per := map[string]int{}
		for _, m := range st.Next.Moving {
			per[m.From]++
			per[m.To]++
		}
		if len(st.Next.Moving) > lim.MaxMoving || per["a"] > lim.MaxMovingPerNode || per["c"] > lim.MaxMovingPerNode {
			t.Fatalf("wave %d: %d moving, per node %v", waves, len(st.Next.Moving), per)
		}
		st.Next.Version = cur.Version + 1
		st.Next.NextEpochs(cur)
		if err := st.Next.Validate(); err != nil {
			t.Fatal(err)
		}
		cur = st.Next
		released = map[bucket.Bucket]schema.Released{}
		for b, m := range cur.Moving {
			released[b] = schema.Released{From: m.From, Epoch: m.Epoch}
		}
	}
	if cur.Owners != target || len(cur.Moving) != 0 || len(cur.Queued) != 0 {
		t.Fatalf("after %d waves: %d moving, %d queued, %d differ", waves, len(cur.Moving), len(cur.Queued), len(targetMoves(cur, target)))
	}
	// c takes 8 at a time: 85 moves need 11 waves of starting, and the
	// last commit one more.
	if waves != 12 {
		t.Errorf("took %d waves, want 12", waves)
	}
}

func targetMoves(a *schema.Assignment, target [bucket.Count]string) []int {
	var out []int
	for b := range bucket.Count {
		if a.Owners[b] != target[b] {
			out = append(out, b)
		}
	}
	return out
}
