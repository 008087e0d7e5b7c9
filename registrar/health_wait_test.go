package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/testutil"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// While the registrar waits for its server to be healthy, the cluster
// changes it would not look at do not pile up in its subscription: it
// keeps reading it, so only the latest state matters when it registers.
func TestHealthWaitDoesNotQueueClusterChanges(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer backend.Close()
	var sub atomic.Pointer[watch.Subscription]
	var reg atomic.Pointer[registrar]
	testHookWaitingForHealth = func(r *registrar, s *watch.Subscription) { reg.Store(r); sub.Store(s) }
	t.Cleanup(func() { testHookWaitingForHealth = nil })
	s := testSettings(c, "n1", 5*time.Second)
	s.node.LocalNodeURL = backend.URL + "/"
	s.health = healthSettings{path: "/ping/", interval: 50 * time.Millisecond, timeout: time.Second, failures: 2}
	startRegistrar(t, s)
	testutil.Eventually(t, 5*time.Second, "waiting for health", func() bool { return sub.Load() != nil })

	const changes = 50
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var last int64
	for i := range changes { // other nodes' registrations come and go
		resp, err := cli.Put(ctx, testLayout.NodeKey(fmt.Sprintf("other%d", i)), fmt.Sprintf(
			`{"node_id":"other%d","node_url":"https://o.example.com/","local_node_url":"http://127.0.0.1:9/"}`, i))
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	testutil.Eventually(t, 5*time.Second, "every change published and read", func() bool {
		s := reg.Load().watcher.Snapshot()
		return s != nil && s.Revision >= last && sub.Load().Pending() == 0
	})
	if _, _, ok := getNode(t, cli, "n1"); ok {
		t.Fatal("registered while the local server does not answer")
	}
}
