package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// waitHandoffs waits, at most wait, until none of the response's handoffs
// (started or queued) is moving or queued any more, then says how each
// ended. It reads the assignment every poll; etcd errors are retried
// until the wait ends.
func waitHandoffs(ctx context.Context, cli *clientv3.Client, layout schema.Layout, resp *monitorapi.Response, wait, poll time.Duration) *monitorapi.Outcome {
	moves := append(append([]schema.Move{}, resp.Started...), resp.Queued...)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last *schema.Assignment
	for {
		if a := readAssignment(ctx, cli, layout); a != nil {
			last = a
			if !anyInFlight(a, moves) {
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
	out := &monitorapi.Outcome{Committed: []schema.Move{}, Aborted: []schema.Move{}, Pending: []schema.Move{},
		Waited: time.Since(start).Round(100 * time.Millisecond).String()}
	for _, mv := range moves {
		switch {
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

func anyInFlight(a *schema.Assignment, moves []schema.Move) bool {
	for _, mv := range moves {
		if inFlight(a, mv) {
			return true
		}
	}
	return false
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
	}{{"aborted (the old owner did not release in time; the bucket stays)", o.Aborted}, {"still in progress", o.Pending}} {
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
