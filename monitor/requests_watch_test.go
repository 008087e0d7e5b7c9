package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// The requests watch is re-created with a back-off when it closes (as it
// does at once while etcd has no leader), not in a busy loop.
func TestRequestsWatchBacksOff(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	w := watch.New(watch.Config{Client: cli, Layout: layout})
	w.Start()
	t.Cleanup(w.Stop)
	var watches atomic.Int64
	m := &monitor{cli: cli, layout: layout, watcher: w, id: "mon-a", interval: time.Hour,
		log: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)), limits: handoff.DefaultLimits,
		testHookRequestWatch: func(context.Context) <-chan clientv3.WatchResponse {
			watches.Add(1)
			ch := make(chan clientv3.WatchResponse)
			close(ch)
			return ch
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	m.lead(ctx, &leadership{key: "/nobody", rev: 1})
	// 0, 0.2, 0.6, 1.4 s: four watches in 1.5 s.
	if n := watches.Load(); n > 5 {
		t.Fatalf("%d watches in 1.5s", n)
	}
}
