package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// closeTimes waits (at most timeout) until every client in moved is
// closed, and returns per client the time from swap and from write to
// its close, and how many stayed open.
func closeTimes(moved []*wsClient, swap, write time.Time, timeout time.Duration) (fromSwap, fromWrite []time.Duration, open int) {
	deadline := time.After(timeout)
	for _, c := range moved {
		select {
		case <-c.done:
		case <-deadline:
		}
	}
	for _, c := range moved {
		at := c.closedAt.Load()
		if at == 0 {
			open++
			continue
		}
		t := time.Unix(0, at)
		fromSwap = append(fromSwap, t.Sub(swap))
		fromWrite = append(fromWrite, t.Sub(write))
	}
	return fromSwap, fromWrite, open
}

// runMoves moves buckets under the open streams: o.moves single-bucket
// planned moves (the write that starts the move closes the bucket's
// streams; the commit follows), then every bucket of one node given to
// the other nodes in one write (as for a dead node). Every other stream
// must stay open.
func runMoves(ctx context.Context, o *options, p *proxyProc, aw *assignWriter, clients []*wsClient) ([]row, error) {
	byBucket := map[int][]*wsClient{}
	for _, c := range clients {
		byBucket[c.bucket] = append(byBucket[c.bucket], c)
	}
	movedSet := map[int]bool{}
	var single, singleWrite []time.Duration
	var singleSpread time.Duration // the largest spread of one move's closes
	var rows []row
	notClosed := 0
	for k := 0; k < o.moves && k < 64; k++ {
		b := (7 + 37*k) % 256
		from := aw.cur.Owners[b]
		to := aw.nodes[(indexOf(aw.nodes, from)+1)%len(aw.nodes)]
		movedSet[b] = true
		v, t0, err := aw.write(ctx, func(a *schema.Assignment) {
			if a.Moving == nil {
				a.Moving = map[bucket.Bucket]schema.MoveState{}
			}
			a.Moving[bucket.Bucket(b)] = schema.MoveState{From: from, To: to, Epoch: a.Version, Since: time.Now().UTC(), Reason: "benchmark"}
		})
		if err != nil {
			return rows, err
		}
		swap, ok := p.waitTable(v, 10*time.Second)
		if !ok {
			return rows, fmt.Errorf("the proxy logged no routing table %d", v)
		}
		fs, fw, open := closeTimes(byBucket[b], swap, t0, 5*time.Second)
		singleSpread = max(singleSpread, spreadOf(fw))
		single, singleWrite = append(single, fs...), append(singleWrite, fw...)
		notClosed += open
		// Commit: the new owner takes the bucket.
		v, _, err = aw.write(ctx, func(a *schema.Assignment) {
			a.Owners[b] = to
			delete(a.Moving, bucket.Bucket(b))
		})
		if err != nil {
			return rows, err
		}
		if _, ok := p.waitTable(v, 10*time.Second); !ok {
			return rows, fmt.Errorf("the proxy logged no routing table %d", v)
		}
	}
	others := func() int {
		n := 0
		for _, c := range clients {
			if !movedSet[c.bucket] && c.closedAt.Load() != 0 {
				n++
			}
		}
		return n
	}
	// The swap is after the write began and before the log line, so
	// write → closed bounds swap → closed from above, log line → closed
	// from below (it may be negative: the line follows the closes). As
	// every close of a move follows its swap, the spread between the
	// move's first and last close bounds its slowest one from below too.
	goal := func(upper, lower []time.Duration, spread time.Duration, open, other int) string {
		s := "moved closed ≤ 10 ms after the swap, 0 others closed: "
		if open > 0 || other > 0 || len(upper) == 0 {
			return s + "**not met**"
		}
		if percentile(upper, 100) <= 10*time.Millisecond {
			return s + "**met**"
		}
		if max(percentile(lower, 100), spread) > 10*time.Millisecond {
			return s + fmt.Sprintf("**not met** (one move's closes spread over %s)", fmtDur(spread))
		}
		return s + "not shown (the upper bound exceeds 10 ms, the lower does not)"
	}
	result := func(lower, upper []time.Duration, open, other int) string {
		return fmt.Sprintf("etcd write → closed p50/p99/max %s (upper bound of swap → closed); proxy's table-updated log line → closed %s (lower bound); %d moved streams not closed; %d other streams closed",
			summary(upper), summary(lower), open, other)
	}
	if o.moves > 0 {
		other := others()
		rows = append(rows, row{"WS close on a move", fmt.Sprintf("%d single-bucket planned moves (%d streams)", min(o.moves, 64), len(single)+notClosed),
			result(single, singleWrite, notClosed, other), goal(singleWrite, single, singleSpread, notClosed, other)})
	}
	// A whole node: its buckets go to the others in one write. A bucket
	// that moved to it above had its streams closed then: only the open
	// ones count.
	victim := aw.nodes[len(aw.nodes)-1]
	var moved []*wsClient
	var owned []int
	for b, n := range aw.cur.Owners {
		if n == victim {
			owned = append(owned, b)
			movedSet[b] = true
			for _, c := range byBucket[b] {
				if c.closedAt.Load() == 0 {
					moved = append(moved, c)
				}
			}
		}
	}
	var profDone chan struct{}
	if o.profileDir != "" { // a CPU profile of the proxy across the whole node's move
		profDone = make(chan struct{})
		go func() {
			defer close(profDone)
			saveProfile(ctx, p.admin, "/debug/pprof/profile?seconds=2", o.profileDir, "cpu-node-move.pb.gz")
		}()
		time.Sleep(200 * time.Millisecond)
	}
	v, t0, err := aw.write(ctx, func(a *schema.Assignment) {
		for i, b := range owned {
			a.Owners[b] = aw.nodes[i%(len(aw.nodes)-1)]
		}
	})
	if err != nil {
		return rows, err
	}
	swap, ok := p.waitTable(v, 10*time.Second)
	if !ok {
		return rows, fmt.Errorf("the proxy logged no routing table %d", v)
	}
	fs, fw, open := closeTimes(moved, swap, t0, 10*time.Second)
	time.Sleep(500 * time.Millisecond) // any wrongly closed stream would show by now
	if profDone != nil {
		<-profDone
	}
	other := others()
	rows = append(rows, row{"WS close on a move", fmt.Sprintf("a whole node's %d buckets in one write (%d streams)", len(owned), len(moved)),
		result(fs, fw, open, other), goal(fw, fs, spreadOf(fw), open, other)})
	return rows, nil
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// spreadOf is the time between the first and the last of one move's
// closes (ds are close times less one write time).
func spreadOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	lo, hi := ds[0], ds[0]
	for _, d := range ds {
		lo, hi = min(lo, d), max(hi, d)
	}
	return hi - lo
}
