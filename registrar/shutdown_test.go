package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/contract"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// recorder stands before a stand-in server: it records every notification
// and, when refuseFence is set, answers 503 to a fence (a server that
// cannot confirm it dropped its buckets).
type recorder struct {
	next        http.Handler
	refuseFence atomic.Bool
	mu          sync.Mutex
	got         []contract.Notification
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == fakeserver.NotifyPath {
		body, _ := io.ReadAll(r.Body)
		var n contract.Notification
		if json.Unmarshal(body, &n) == nil {
			rc.mu.Lock()
			rc.got = append(rc.got, n)
			rc.mu.Unlock()
		}
		if n.Fence && rc.refuseFence.Load() {
			http.Error(w, "cannot fence", http.StatusServiceUnavailable)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	rc.next.ServeHTTP(w, r)
}

// kinds names the notifications received, in order, without repeats in a
// row: "release 0c" (a handoff's release order, the state still holding
// 0d), "release all" (a clean stop's: nothing held, everything released),
// "fence", and "state" for the rest.
func (rc *recorder) kinds() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []string
	for _, n := range rc.got {
		k := "state"
		switch {
		case n.Fence:
			k = "fence"
		case n.Heartbeat:
			continue
		case len(n.Release) > 0 && len(n.Buckets) == 0:
			k = "release all"
		case len(n.Release) > 0:
			k = "release 0c"
		}
		if len(out) == 0 || out[len(out)-1] != k {
			out = append(out, k)
		}
	}
	return out
}

// recordedSetup is linkSetup with n1 owning 0d too (so that a handoff's
// release of 0c differs from releasing everything) and a recorder in front
// of n1's stand-in server (a new URL for the registrar).
func recordedSetup(t *testing.T, cfg fakeserver.Config) (*clientv3.Client, *swappable, *recorder, *settings) {
	c, sw, _, s := linkSetup(t)
	a := &schema.Assignment{Version: 4}
	for b := range a.Owners {
		a.Owners[b] = "n2"
	}
	a.Owners[0x0c], a.Owners[0x0d] = "n1", "n1"
	a.NextEpochs(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Client(t).Put(ctx, testLayout.AssignmentKey(), string(a.Encode())); err != nil {
		t.Fatal(err)
	}
	sw.cur.Store(fakeserver.New(cfg))
	rc := &recorder{next: sw}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	s.node.LocalNodeURL = srv.URL + "/"
	s.notifyURL = srv.URL + fakeserver.NotifyPath
	return c.Client(t), sw, rc, s
}

func nodeGone(t *testing.T, cli *clientv3.Client) bool {
	_, _, ok := getNode(t, cli, "n1")
	return !ok
}

// TestFenceCommand: on a clean stop the registrar runs -fence-command with
// the node id and the reason in its environment. A command that succeeds
// confirms the fence even when the server cannot be told (it is gone), so
// the lease is revoked at once; one that fails does not, so the lease is
// left to expire.
func TestFenceCommand(t *testing.T) {
	for _, tc := range []struct {
		name      string
		exit      string
		confirmed bool
	}{
		{"a command that succeeds confirms the fence", "exit 0", true},
		{"a command that fails does not", "exit 3", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, sw, rc, s := recordedSetup(t, fakeserver.Config{Name: "n1", Strict: true})
			out := filepath.Join(t.TempDir(), "fenced")
			s.fenceCommand = `printf '%s|%s' "$DTABLE_NODE_ID" "$DTABLE_FENCE_REASON" > '` + out + `'; ` + tc.exit
			s.releaseTimeout = time.Second
			stop, logs := startObservedRegistrar(t, s)
			testutil.Eventually(t, 5*time.Second, "n1's server holds 0c", holds0c(sw))
			rc.refuseFence.Store(true) // the server cannot be told: only the command can confirm
			stop()
			got, err := os.ReadFile(out)
			if err != nil || string(got) != "n1|clean stop" {
				t.Fatalf("the fence command wrote %q (%v); want %q", got, err, "n1|clean stop")
			}
			if k := rc.kinds(); !slices.Contains(k, "fence") {
				t.Fatalf("notifications %v: want a fence message too", k)
			}
			if gone := nodeGone(t, cli); gone != tc.confirmed {
				t.Fatalf("key gone at once: %v; want %v (fence confirmed: %v)", gone, tc.confirmed, tc.confirmed)
			}
			wantLog := map[bool]string{true: "fence command done", false: "fence command failed"}[tc.confirmed]
			if logs.FilterMessage(wantLog).Len() != 1 {
				t.Fatalf("no log %q", wantLog)
			}
			if !tc.confirmed {
				testutil.Eventually(t, 10*time.Second, "the unrevoked key expires", func() bool { return nodeGone(t, cli) })
			}
		})
	}
}

// TestShutdownTimeoutMidHandoff: SIGTERM (a clean stop) while a monitor
// leads, and n1's server never answers a release. The registrar marks the
// node leaving; the "monitor" (the test) starts moving 0c away; the server
// refuses to release it until -shutdown-timeout runs out. Then the
// registrar asks it to release everything (refused too), fences it, and
// revokes the lease only if the fence was confirmed.
func TestShutdownTimeoutMidHandoff(t *testing.T) {
	for _, tc := range []struct {
		name        string
		refuseFence bool
	}{
		{"a confirmed fence: the lease is revoked", false},
		{"an unconfirmed fence: the lease is left to expire", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, sw, rc, s := recordedSetup(t, fakeserver.Config{Name: "n1", Strict: true, RefuseRelease: true})
			s.shutdownTimeout, s.releaseTimeout = 1500*time.Millisecond, time.Second
			leadAsMonitor(t, cli)
			stop, logs := startObservedRegistrar(t, s)
			testutil.Eventually(t, 5*time.Second, "n1's server holds 0c", holds0c(sw))
			moved := make(chan error, 1)
			go func() { moved <- startMoveWhenLeaving(cli) }()
			rc.refuseFence.Store(tc.refuseFence)
			began := time.Now()
			stop()
			took := time.Since(began)
			if err := <-moved; err != nil {
				t.Fatal(err)
			}
			if took < s.shutdownTimeout {
				t.Fatalf("stopped after %v, before -shutdown-timeout %v", took, s.shutdownTimeout)
			}
			if logs.FilterMessage("shutdown timeout: withdrawing with buckets still owned; they move once the server is fenced").Len() != 1 {
				t.Fatal("no shutdown-timeout warning")
			}
			ra := logs.FilterMessage("asked the server to save and unload every bucket before stopping").All()
			if len(ra) != 1 || ra[0].ContextMap()["confirmed"] != false {
				t.Fatalf("release-everything log %v; want one, not confirmed", ra)
			}
			// The handoff's release order, then the clean stop's, then the
			// fence: in this order, each perhaps repeated.
			k := rc.kinds()
			t.Logf("stopped after %v; notifications %v", took, k)
			if i := strings.Index(strings.Join(k, ","), "release 0c,release all,fence"); i < 0 {
				t.Fatalf("notifications %v; want release 0c, release all, fence in this order", k)
			}
			if resp, err := cli.Get(context.Background(), testLayout.ReleasedKey(0x0c)); err != nil || len(resp.Kvs) != 0 {
				t.Fatalf("a release acknowledgement was written for a refused release: %v %v", resp, err)
			}
			if gone := nodeGone(t, cli); gone == tc.refuseFence {
				t.Fatalf("key gone at once: %v with the fence refused: %v", gone, tc.refuseFence)
			}
			if tc.refuseFence {
				// Unconfirmed: the stand-in fences itself at its last deadline,
				// and only then does the key expire.
				testutil.Eventually(t, 10*time.Second, "the stand-in fences itself", func() bool { return len(sw.cur.Load().Held()) == 0 })
				if nodeGone(t, cli) {
					t.Fatal("the key expired before the server's own deadline")
				}
				testutil.Eventually(t, 10*time.Second, "the unrevoked key expires", func() bool { return nodeGone(t, cli) })
			} else if held := sw.cur.Load().Held(); len(held) != 0 {
				t.Fatalf("the server still holds %v after a confirmed fence", held)
			}
		})
	}
}

// leadAsMonitor makes the test the leading monitor in etcd's election, so
// the registrar hands off before stopping.
func leadAsMonitor(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := concurrency.NewElection(sess, testLayout.ElectionPrefix()).Campaign(ctx, "mon-test"); err != nil {
		t.Fatal(err)
	}
}

// startMoveWhenLeaving plays the monitor: once n1 says it is leaving, it
// starts moving 0c from n1 to n2 (version 5, the move's epoch).
func startMoveWhenLeaving(cli *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		resp, err := cli.Get(ctx, testLayout.NodeKey("n1"))
		if err != nil {
			return err
		}
		if len(resp.Kvs) > 0 {
			if n, err := schema.ParseNode("n1", resp.Kvs[0].Value); err == nil && n.Leaving() {
				break
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	resp, err := cli.Get(ctx, testLayout.AssignmentKey())
	if err != nil {
		return err
	}
	a, err := schema.ParseAssignment(resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	a.Version++
	a.Moving = map[bucket.Bucket]schema.MoveState{0x0c: {From: "n1", To: "n2", Epoch: a.Version, Since: time.Now()}}
	_, err = cli.Put(ctx, testLayout.AssignmentKey(), string(a.Encode()))
	return err
}
