package watch

import (
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// The proxies' load reports (<prefix>/load/<id>) change every interval
// and are no part of the routing state: a watcher publishes no snapshot
// for them, so they wake neither the proxies' routing nor the monitor's
// planning, and a corrupt one is not the watcher's to report. The next
// real change is the next snapshot.
func TestLoadReportsPublishNoSnapshot(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, layout.NodeKey("n1"), node("n1").Encode())
	w := startWatcher(t, cli, nil, nil)
	sub := w.Subscribe()
	defer sub.Close()
	first := next(t, sub)
	r := schema.LoadReport{Proxy: "caddy@p1", Interval: time.Second, At: time.Now()}
	for range 5 {
		put(t, cli, layout.LoadKey("caddy@p1"), r.Encode())
	}
	put(t, cli, layout.LoadKey("caddy@bad"), []byte("not json"))
	del(t, cli, layout.LoadKey("caddy@p1"))
	rev := put(t, cli, layout.AssignmentKey(), assignment(1, "n1").Encode())
	s := next(t, sub)
	if s.Revision != rev || s.Assignment == nil || s.Assignment.Version != 1 {
		t.Fatalf("the snapshot after the load reports is at revision %d (assignment %v); want the assignment's write at %d, "+
			"with no snapshot for the load reports between it and revision %d", s.Revision, s.Assignment, rev, first.Revision)
	}
}
