package caddymodule

import (
	"sync"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// moveHistorySize bounds the moves the status page lists: enough for a
// few waves of a rebalance, small enough to send with every state event.
const moveHistorySize = 50

// Kinds of move events, classified as the handoff metrics classify owner
// changes (handoffOutcomes), plus the start of a move.
const (
	moveStarted    = "started"    // the bucket began handing off
	moveRetargeted = "retargeted" // a move in progress got another target (its target died)
	moveCommitted  = "committed"  // the owner changed after a moving phase
	moveAborted    = "aborted"    // the moving phase ended, same owner
	moveForced     = "forced"     // the owner changed without a moving phase this proxy saw (e.g. a dead node's bucket)
)

// moveEvent is one change to a bucket's ownership that this proxy saw
// between two snapshots.
type moveEvent struct {
	At     time.Time `json:"at"` // when this proxy saw it
	Bucket string    `json:"bucket"`
	Kind   string    `json:"kind"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason,omitempty"` // MoveState.Reason; empty for a forced move (the assignment says none)
	Epoch  int64     `json:"epoch,omitempty"`  // the move's epoch; for a commit, the bucket's new epoch
	// TookMS is, for a commit, the time from the move's start (the
	// monitor's clock) to the commit seen here.
	TookMS int64 `json:"took_ms,omitempty"`
}

// moveHistory keeps the last moveHistorySize move events a follower saw
// since it started. It lives in memory: another proxy, or this one after
// a restart, has its own.
type moveHistory struct {
	since time.Time // when the follower started: the history covers what came after

	mu    sync.Mutex
	ring  [moveHistorySize]moveEvent
	next  int    // where the next event goes
	total uint64 // events recorded since start; changes whenever the history does
}

func newMoveHistory() *moveHistory { return &moveHistory{since: time.Now()} }

// record adds the moves between two consecutive snapshots. A first
// assignment (prev has none) is not a move: it is the state at the start.
func (h *moveHistory) record(prev, next *watch.Snapshot, at time.Time) {
	if prev == nil || next == nil || prev.Assignment == nil || next.Assignment == nil {
		return
	}
	events := diffMoves(prev.Assignment, next.Assignment, at)
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range events {
		h.ring[h.next] = e
		h.next = (h.next + 1) % moveHistorySize
		h.total++
	}
}

// recent returns the kept events, newest first, and the count of events
// recorded since start (a change marker).
func (h *moveHistory) recent() ([]moveEvent, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := int(min(h.total, moveHistorySize))
	out := make([]moveEvent, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, h.ring[(h.next-i+moveHistorySize)%moveHistorySize])
	}
	return out, h.total
}

// diffMoves lists, in bucket order, what changed in the buckets' moves
// and owners from prev to next. The two need not be consecutive versions
// (a re-list after a broken watch folds several writes into one
// snapshot), so a bucket may have ended one move and started another in
// between: a move is the same only while its epoch and the owner are (a
// re-target keeps both). A bucket that left its owner and came back between the two with no
// move in either is not seen.
func diffMoves(prev, next *schema.Assignment, at time.Time) []moveEvent {
	var out []moveEvent
	for i := range bucket.Count {
		b := bucket.Bucket(i)
		pm, wasMoving := prev.Moving[b]
		nm, isMoving := next.Moving[b]
		po, no := prev.Owners[b], next.Owners[b]
		ev := func(kind, from, to, reason string, epoch int64) moveEvent {
			return moveEvent{At: at, Bucket: b.String(), Kind: kind, From: from, To: to, Reason: reason, Epoch: epoch}
		}
		// The move seen before ended if it is gone, or if another stands
		// in its place: another epoch, or an owner that changed (only a
		// commit changes a moving bucket's owner).
		ended := wasMoving && (!isMoving || nm.Epoch != pm.Epoch || po != no)
		// How the move seen before ended, or how the owner changed
		// without one (no assignment yet, or a bucket (un)assigned, is no
		// handoff).
		if po != "" && no != "" {
			switch {
			case ended && po != no:
				e := ev(moveCommitted, po, no, pm.Reason, next.Epochs[b])
				e.TookMS = took(pm, at)
				out = append(out, e)
			case ended && next.Epochs[b] != prev.Epochs[b]:
				// Committed, then back to the old owner with no moving
				// phase seen.
				e := ev(moveCommitted, pm.From, pm.To, pm.Reason, 0)
				e.TookMS = took(pm, at)
				out = append(out, e, ev(moveForced, pm.To, no, "", next.Epochs[b]))
			case ended:
				out = append(out, ev(moveAborted, pm.From, pm.To, pm.Reason, pm.Epoch))
			case !wasMoving && po != no:
				out = append(out, ev(moveForced, po, no, "", next.Epochs[b]))
			}
		}
		switch {
		case isMoving && (!wasMoving || ended):
			out = append(out, ev(moveStarted, nm.From, nm.To, nm.Reason, nm.Epoch))
		case isMoving && (pm.To != nm.To || pm.From != nm.From):
			out = append(out, ev(moveRetargeted, nm.From, nm.To, nm.Reason, nm.Epoch))
		}
	}
	return out
}

// took is how long a move committed at at took, from its start (0 if the
// assignment does not say when it started).
func took(m schema.MoveState, at time.Time) int64 {
	if m.Since.IsZero() {
		return 0
	}
	return max(0, at.Sub(m.Since).Milliseconds())
}
