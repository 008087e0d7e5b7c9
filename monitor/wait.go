package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// waitHandoffs waits, at most wait, until each of the response's handoffs
// (started or queued) has committed or aborted, then says how each ended.
// It reads the assignment every poll; etcd errors are retried until the
// wait ends.
func waitHandoffs(ctx context.Context, cli *clientv3.Client, layout schema.Layout, resp *monitorapi.Response, wait, poll time.Duration) *monitorapi.Outcome {
	hw := newHandoffWatch(resp)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last *schema.Assignment
	for {
		if a := readAssignment(ctx, cli, layout); a != nil {
			last = a
			if !hw.observe(a) {
				break
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(poll):
			continue
		}
		break
	}
	return hw.outcome(last, time.Since(start))
}

// handoffWatch follows the handoffs of a response through the assignments
// read while waiting.
//
// A move that times out is aborted, yet its bucket usually stays queued:
// it rests for the monitor's -handoff-cooldown, then is tried again. So a
// bucket that is queued again after the response, with its old owner, is
// an aborted move: its queued entry names the version that aborted it
// (aborted_version, newer than the response's), or, should the wait miss
// that entry (a cooldown of 0 restarts the move at once), the bucket is
// moving again with a newer epoch than the move seen before.
type handoffWatch struct {
	moves []schema.Move
	// since is the response's version: an abort recorded after it is one
	// of its moves'.
	since int64
	// epochs holds each move's epoch as last seen moving (a started move's
	// is the response's version).
	epochs map[bucket.Bucket]int64
	// aborted holds the moves seen aborted: that is final, even if the
	// monitor retries a move after its cooldown.
	aborted map[bucket.Bucket]bool
}

func newHandoffWatch(resp *monitorapi.Response) *handoffWatch {
	hw := &handoffWatch{moves: append(append([]schema.Move{}, resp.Started...), resp.Queued...), since: resp.Version,
		epochs: map[bucket.Bucket]int64{}, aborted: map[bucket.Bucket]bool{}}
	for _, mv := range resp.Started {
		hw.epochs[mv.Bucket] = resp.Version
	}
	return hw
}

// observe takes in an assignment read while waiting and reports whether
// any move is still in flight.
func (hw *handoffWatch) observe(a *schema.Assignment) bool {
	inFlight := false
	for _, mv := range hw.moves {
		if hw.aborted[mv.Bucket] {
			continue
		}
		b := mv.Bucket
		if m, moving := a.Moving[b]; moving {
			if seen, ok := hw.epochs[b]; ok && m.From == mv.From && m.Epoch != seen {
				hw.aborted[b] = true // tried again: the move seen before aborted
				continue
			}
			hw.epochs[b] = m.Epoch
			inFlight = true
			continue
		}
		if q, queued := a.Queued[b]; queued {
			if a.Owners[b] == mv.From && q.AbortedVersion > hw.since {
				hw.aborted[b] = true
				continue
			}
			inFlight = true
		}
	}
	return inFlight
}

// outcome sorts the moves by how they ended, as last seen (nil: nothing
// read).
func (hw *handoffWatch) outcome(last *schema.Assignment, waited time.Duration) *monitorapi.Outcome {
	out := &monitorapi.Outcome{Committed: []schema.Move{}, Aborted: []schema.Move{}, Pending: []schema.Move{},
		Waited: waited.Round(100 * time.Millisecond).String()}
	for _, mv := range hw.moves {
		switch {
		case hw.aborted[mv.Bucket]:
			out.Aborted = append(out.Aborted, mv)
		case last == nil || inFlight(last, mv):
			out.Pending = append(out.Pending, mv)
		case last.Owners[mv.Bucket] == mv.To:
			out.Committed = append(out.Committed, mv)
		case last.Owners[mv.Bucket] == mv.From:
			out.Aborted = append(out.Aborted, mv)
		default:
			out.Elsewhere = append(out.Elsewhere, mv)
		}
	}
	return out
}

func readAssignment(ctx context.Context, cli *clientv3.Client, layout schema.Layout) *schema.Assignment {
	resp, err := cli.Get(ctx, layout.AssignmentKey())
	if err != nil || len(resp.Kvs) == 0 {
		return nil
	}
	a, err := schema.ParseAssignment(resp.Kvs[0].Value)
	if err != nil {
		return nil
	}
	return a
}

func inFlight(a *schema.Assignment, mv schema.Move) bool {
	_, moving := a.Moving[mv.Bucket]
	_, queued := a.Queued[mv.Bucket]
	return moving || queued
}

// printOutcome prints how the handoffs ended.
func printOutcome(w io.Writer, o *monitorapi.Outcome) {
	fmt.Fprintf(w, "handoffs after %s: %d committed, %d aborted, %d still in progress", o.Waited, len(o.Committed), len(o.Aborted), len(o.Pending))
	if len(o.Elsewhere) > 0 {
		fmt.Fprintf(w, ", %d moved elsewhere by a later plan", len(o.Elsewhere))
	}
	fmt.Fprintln(w)
	for _, group := range []struct {
		what  string
		moves []schema.Move
	}{{"aborted (the old owner did not release in time, or a later plan kept the bucket; it stays where it was, and a move still planned is tried again after the monitor's -handoff-cooldown)", o.Aborted}, {"still in progress", o.Pending}} {
		if len(group.moves) == 0 {
			continue
		}
		names := make([]string, 0, len(group.moves))
		for _, mv := range group.moves {
			names = append(names, fmt.Sprintf("%s:%s->%s", mv.Bucket, mv.From, mv.To))
		}
		fmt.Fprintf(w, "  %s: %s\n", group.what, strings.Join(names, " "))
	}
}
