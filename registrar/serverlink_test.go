package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// swappable serves through whichever stand-in server is current, so a
// test can "restart" the server behind one URL.
type swappable struct {
	cur atomic.Pointer[fakeserver.Server]
}

func (s *swappable) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.cur.Load().ServeHTTP(w, r) }

// linkSetup: etcd, an assignment giving n1 bucket 0c (and n2 the rest), a
// strict stand-in server for n1 and its registrar speaking protocol 2.
func linkSetup(t *testing.T) (*etcdtest.Etcd, *swappable, *httptest.Server, *settings) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	a := &schema.Assignment{Version: 4}
	for b := range a.Owners {
		a.Owners[b] = "n2"
	}
	a.Owners[0x0c] = "n1"
	a.NextEpochs(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, testLayout.AssignmentKey(), string(a.Encode())); err != nil {
		t.Fatal(err)
	}
	sw := &swappable{}
	sw.cur.Store(fakeserver.New(fakeserver.Config{Name: "n1", Strict: true, SaveDelay: 200 * time.Millisecond}))
	srv := httptest.NewServer(sw)
	t.Cleanup(srv.Close)
	s := testSettings(c, "n1", 3*time.Second)
	s.node.LocalNodeURL = srv.URL + "/"
	s.notifyURL = srv.URL + fakeserver.NotifyPath
	return c, sw, srv, s
}

func holds0c(sw *swappable) func() bool {
	return func() bool { _, ok := sw.cur.Load().Held()["0c"]; return ok }
}

func TestServerLink(t *testing.T) {
	t.Run("the server holds what the assignment gives, once the lease is confirmed", func(t *testing.T) {
		_, sw, _, s := linkSetup(t)
		startRegistrar(t, s)
		testutil.Eventually(t, 5*time.Second, "n1's server holds 0c", holds0c(sw))
		if held := sw.cur.Load().Held(); len(held) != 1 || held["0c"] != 4 {
			t.Fatalf("held %v, want only 0c at epoch 4", held)
		}
	})
	t.Run("a restarted server gets its state back", func(t *testing.T) {
		_, sw, _, s := linkSetup(t)
		startRegistrar(t, s)
		testutil.Eventually(t, 5*time.Second, "n1's server holds 0c", holds0c(sw))
		sw.cur.Store(fakeserver.New(fakeserver.Config{Name: "n1", Strict: true})) // the server restarts empty
		took := testutil.Eventually(t, 5*time.Second, "the restarted server holds 0c again", holds0c(sw))
		t.Logf("state sent again %v after the restart", took)
	})
	t.Run("after an etcd outage shorter than the TTL the fenced server gets its buckets back", func(t *testing.T) {
		c, sw, _, s := linkSetup(t)
		startRegistrar(t, s)
		testutil.Eventually(t, 5*time.Second, "n1's server holds 0c", holds0c(sw))
		c.Stop(0)
		testutil.Eventually(t, 5*time.Second, "fenced while etcd is away", func() bool { return !holds0c(sw)() })
		c.Restart(0)
		testutil.Eventually(t, 15*time.Second, "0c held again", holds0c(sw))
	})
	t.Run("a clean stop with nothing to hand off to saves everything before the fence", func(t *testing.T) {
		c, sw, srv, s := linkSetup(t)
		cli := c.Client(t)
		stop := startRegistrar(t, s)
		testutil.Eventually(t, 5*time.Second, "n1's server holds 0c", holds0c(sw))
		resp, err := http.Post(srv.URL+"/dtables/0c264e76-0e5a-4d1b-9c1e-3b0f7a1c2d3e/rows/", "text/plain", nil) // a write: 0c is dirty
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("write: %v %v", resp, err)
		}
		resp.Body.Close()
		stop() // no monitor runs: no handoff
		var ended string
		for _, iv := range sw.cur.Load().Log() {
			if iv.Kind == "hold" && iv.Bucket == "0c" {
				ended = iv.How
			}
		}
		if ended != "released" {
			t.Fatalf("0c's hold ended %q; want released (saved) before the fence", ended)
		}
		if _, _, ok := getNode(t, cli, "n1"); ok {
			t.Fatal("the key is still there after a confirmed fence")
		}
	})
	t.Run("an unconfirmed fence does not revoke the lease: it expires after the TTL", func(t *testing.T) {
		c, _, srv, s := linkSetup(t)
		cli := c.Client(t)
		s.releaseTimeout = time.Second
		stop := startRegistrar(t, s)
		testutil.Eventually(t, 5*time.Second, "registered", func() bool { _, _, ok := getNode(t, cli, "n1"); return ok })
		srv.Close() // the server is gone: it cannot confirm
		stopped := time.Now()
		stop()
		if _, _, ok := getNode(t, cli, "n1"); !ok {
			t.Fatal("the lease was revoked without a confirmed fence")
		}
		testutil.Eventually(t, 10*time.Second, "the key expires", func() bool { _, _, ok := getNode(t, cli, "n1"); return !ok })
		t.Logf("key expired %v after the stop (TTL %v)", time.Since(stopped).Round(time.Millisecond), s.ttl)
	})
}
