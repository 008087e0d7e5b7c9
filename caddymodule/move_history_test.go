package caddymodule

import (
	"fmt"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// assignmentOf is an assignment where bucket b is on n(b%2+1), changed by fn.
func assignmentOf(version int64, fn func(a *schema.Assignment)) *schema.Assignment {
	a := &schema.Assignment{Version: version}
	for b := range a.Owners {
		a.Owners[b] = fmt.Sprintf("n%d", b%2+1)
		a.Epochs[b] = 1
	}
	if fn != nil {
		fn(a)
	}
	return a
}

func TestDiffMovesClassifiesAsTheMetricsDo(t *testing.T) {
	at := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	since := at.Add(-1500 * time.Millisecond)
	moving := func(b bucket.Bucket, from, to string) func(*schema.Assignment) {
		return func(a *schema.Assignment) {
			a.Moving = map[bucket.Bucket]schema.MoveState{b: {From: from, To: to, Epoch: 2, Since: since, Reason: "drained"}}
		}
	}
	tests := []struct {
		name       string
		prev, next *schema.Assignment
		want       []moveEvent
	}{
		{"nothing changed", assignmentOf(1, nil), assignmentOf(2, nil), nil},
		{"a move starts", assignmentOf(1, nil), assignmentOf(2, moving(0x04, "n1", "n2")),
			[]moveEvent{{At: at, Bucket: "04", Kind: moveStarted, From: "n1", To: "n2", Reason: "drained", Epoch: 2}}},
		{"it commits", assignmentOf(2, moving(0x04, "n1", "n2")), assignmentOf(3, func(a *schema.Assignment) { a.Owners[0x04], a.Epochs[0x04] = "n2", 3 }),
			[]moveEvent{{At: at, Bucket: "04", Kind: moveCommitted, From: "n1", To: "n2", Reason: "drained", Epoch: 3, TookMS: 1500}}},
		{"it aborts", assignmentOf(2, moving(0x04, "n1", "n2")), assignmentOf(3, nil),
			[]moveEvent{{At: at, Bucket: "04", Kind: moveAborted, From: "n1", To: "n2", Reason: "drained", Epoch: 2}}},
		{"it is re-targeted", assignmentOf(2, moving(0x04, "n1", "n2")), assignmentOf(3, moving(0x04, "n1", "n3")),
			[]moveEvent{{At: at, Bucket: "04", Kind: moveRetargeted, From: "n1", To: "n3", Reason: "drained", Epoch: 2}}},
		{"committed and started again", assignmentOf(2, moving(0x04, "n1", "n2")),
			assignmentOf(4, func(a *schema.Assignment) { a.Owners[0x04], a.Epochs[0x04] = "n2", 3; moving(0x04, "n2", "n1")(a) }),
			[]moveEvent{{At: at, Bucket: "04", Kind: moveCommitted, From: "n1", To: "n2", Reason: "drained", Epoch: 3, TookMS: 1500},
				{At: at, Bucket: "04", Kind: moveStarted, From: "n2", To: "n1", Reason: "drained", Epoch: 2}}},
		{"forced: a dead node's bucket", assignmentOf(1, nil), assignmentOf(2, func(a *schema.Assignment) { a.Owners[0x07], a.Epochs[0x07] = "n1", 2 }),
			[]moveEvent{{At: at, Bucket: "07", Kind: moveForced, From: "n2", To: "n1", Epoch: 2}}},
		// Snapshots that fold several writes (a re-list after a broken
		// watch): each move ended and each one started is reported.
		{"aborted and started again (another epoch)", assignmentOf(2, moving(0x04, "n1", "n2")),
			assignmentOf(5, func(a *schema.Assignment) {
				moving(0x04, "n1", "n2")(a)
				m := a.Moving[0x04]
				m.Epoch = 5
				a.Moving[0x04] = m
			}),
			[]moveEvent{{At: at, Bucket: "04", Kind: moveAborted, From: "n1", To: "n2", Reason: "drained", Epoch: 2},
				{At: at, Bucket: "04", Kind: moveStarted, From: "n1", To: "n2", Reason: "drained", Epoch: 5}}},
		{"forced, then a move starts", assignmentOf(1, nil),
			assignmentOf(3, func(a *schema.Assignment) { a.Owners[0x05], a.Epochs[0x05] = "n1", 2; moving(0x05, "n1", "n2")(a) }),
			[]moveEvent{{At: at, Bucket: "05", Kind: moveForced, From: "n2", To: "n1", Epoch: 2},
				{At: at, Bucket: "05", Kind: moveStarted, From: "n1", To: "n2", Reason: "drained", Epoch: 2}}},
		{"committed, then back with no moving phase seen", assignmentOf(2, moving(0x04, "n1", "n2")),
			assignmentOf(4, func(a *schema.Assignment) { a.Epochs[0x04] = 4 }),
			[]moveEvent{{At: at, Bucket: "04", Kind: moveCommitted, From: "n1", To: "n2", Reason: "drained", TookMS: 1500},
				{At: at, Bucket: "04", Kind: moveForced, From: "n2", To: "n1", Epoch: 4}}},
		{"a bucket assigned is not a move", assignmentOf(1, func(a *schema.Assignment) { a.Owners[0x07] = "" }), assignmentOf(2, nil), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := diffMoves(tt.prev, tt.next, at)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// The history keeps the last moveHistorySize events, newest first, and
// ignores the first assignment (the state at the start, not a move).
func TestMoveHistoryKeepsTheLastEvents(t *testing.T) {
	h := newMoveHistory()
	snap := func(a *schema.Assignment) *watch.Snapshot { s := watch.EmptySnapshot(); s.Assignment = a; return s }
	h.record(snap(nil), snap(assignmentOf(1, nil)), time.Now())
	if events, total := h.recent(); len(events) != 0 || total != 0 {
		t.Fatalf("the first assignment made events: %+v", events)
	}
	prev := assignmentOf(1, nil)
	for i := range 60 { // 60 forced moves, one per snapshot
		next := prev.Clone()
		next.Version++
		b := bucket.Bucket(i)
		next.Owners[b] = map[string]string{"n1": "n2", "n2": "n1"}[prev.Owners[b]]
		h.record(snap(prev), snap(next), time.Now())
		prev = next
	}
	events, total := h.recent()
	if total != 60 || len(events) != moveHistorySize || events[0].Bucket != bucket.Bucket(59).String() || events[moveHistorySize-1].Bucket != bucket.Bucket(10).String() {
		t.Fatalf("total %d, %d kept, newest %s, oldest %s", total, len(events), events[0].Bucket, events[len(events)-1].Bucket)
	}
}
