package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dtablecluster/dtable-router/internal/schema"
)

// runPropagation writes o.changes owner changes, one bucket each, and for
// each polls the proxy (at most 10,000 requests, 5 s) until a request for
// that bucket is answered by the new owner: the time from the start of
// the etcd write to that answer.
func runPropagation(ctx context.Context, o *options, p *proxyProc, aw *assignWriter) ([]row, error) {
	if o.changes == 0 {
		return nil, nil
	}
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	var lat, afterAck, put []time.Duration
	var polls, stale int
	failed := 0
	for i := 0; i < o.changes; i++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		b := (13 + 97*i) % 256
		from := aw.cur.Owners[b]
		to := aw.nodes[(indexOf(aw.nodes, from)+1)%len(aw.nodes)]
		_, t0, err := aw.write(ctx, func(a *schema.Assignment) { a.Owners[b] = to })
		if err != nil {
			return nil, err
		}
		u := "http://" + p.addr + basePath(b)
		ok := false
		for attempt := 0; attempt < 10000 && time.Since(t0) < 5*time.Second; attempt++ {
			status, body, err := httpGet(ctx, hc, u)
			polls++
			if err == nil && status == 200 && body == to {
				now := time.Now()
				lat = append(lat, now.Sub(t0))
				afterAck = append(afterAck, now.Sub(aw.acked))
				put = append(put, aw.acked.Sub(t0))
				ok = true
				break
			}
			if err == nil && status == 200 && body == from {
				stale++
			}
		}
		if !ok {
			failed++
		}
	}
	res := fmt.Sprintf("etcd write → first answer from the new owner p50/p99/max **%s**; of which the etcd Put itself %s, and from its acknowledgement %s (%d polls, %d answered by the old owner meanwhile)",
		summary(lat), summary(put), summary(afterAck), polls, stale)
	if failed > 0 {
		res += fmt.Sprintf("; %d changes not seen within 5 s", failed)
	}
	return []row{{"propagation", fmt.Sprintf("%d assignment changes", o.changes), res, "(measure)"}}, nil
}
