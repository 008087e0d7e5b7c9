package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// Skewed traffic through the real proxy (six hot buckets, all on n1)
// reaches a real monitor through the proxy's load report, and POST
// /rebalance/?by=load on the operator site evens it out: the dry run
// predicts four moves (the fewest: n1 must shed four of its six hot
// buckets), the real one makes them, each hot bucket to a cold node,
// and every node ends within 1.10 × the mean. A bad by is a 400.
func TestRebalanceByLoadThroughTheAdminSite(t *testing.T) {
	e := setupWith(t, extraConfig{proxyBlock: "load_report 300ms caddy@lb-e2e"})
	for _, q := range []string{"by=weight", "by=", "by=load&by=count"} {
		if a := do(t, "POST", adminURL("/rebalance/?"+q), nil); a.status != 400 || !strings.Contains(a.body["error"], "by:") {
			t.Fatalf("POST /rebalance/?%s: %d %s; want 400 naming by", q, a.status, a.raw)
		}
	}
	hot := []bucket.Bucket{0x00, 0x03, 0x06, 0x09, 0x0c, 0x0f} // owner n1 (b%3+1)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	for _, b := range hot {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", bucketURL(b), nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(5 * time.Millisecond) // about the same rate per bucket
			}
		}()
	}
	ackReleases(t, ctx, e.cli)
	mon := exec.Command(buildMonitor(t), "-etcd", strings.Join(e.etcd.Endpoints(), ","), "-settle", "0s", "-interval", "200ms",
		"-load-sample", "200ms", "-load-half-life", "1s", "-handoff-timeout", "10s")
	mon.Stdout, mon.Stderr = io.Discard, io.Discard
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Process.Kill(); mon.Wait() })

	var dry, done monitorapi.Response
	testutil.Eventually(t, 20*time.Second, "a dry run by load that sees the hot buckets", func() bool {
		a := do(t, "POST", adminURL("/rebalance/?by=load&dry_run=1"), nil)
		dry = monitorapi.Response{}
		json.Unmarshal([]byte(a.raw), &dry)
		return a.status == 200 && dry.Load != nil && dry.Load.Mean > 0 && len(dry.Moves) == 4
	})
	if !dry.DryRun || !dry.Load.Within || dry.Load.Before["n1"] < 2.5*dry.Load.Mean {
		t.Fatalf("dry run: %+v", dry.Load)
	}
	t.Logf("dry run: load before %v, after %v (mean %.1f)", dry.Load.Before, dry.Load.After, dry.Load.Mean)
	time.Sleep(time.Second) // one more half-life of steady traffic
	a := do(t, "POST", adminURL("/rebalance/?by=load"), nil)
	json.Unmarshal([]byte(a.raw), &done)
	if a.status != 200 || done.DryRun || len(done.Moves) != 4 || !done.Load.Within {
		t.Fatalf("rebalance by load: %d %s", a.status, a.raw)
	}
	gained := map[string]int{}
	for _, mv := range done.Moves {
		if mv.From != "n1" || mv.Reason != "load" || !isHot(hot, mv.Bucket) {
			t.Fatalf("move %+v: want a hot bucket off n1 (reason load)", mv)
		}
		gained[mv.To]++
	}
	if gained["n2"] != 2 || gained["n3"] != 2 {
		t.Fatalf("hot buckets gained: %v; want two each for n2 and n3", gained)
	}
	testutil.Eventually(t, 20*time.Second, "the proxy routes the moved buckets to their new owners", func() bool {
		tbl, _ := e.follower().lookup(done.Moves[0].Bucket)
		for _, mv := range done.Moves {
			if tbl.routes[mv.Bucket].nodeID != mv.To || tbl.routes[mv.Bucket].moving {
				return false
			}
		}
		return true
	})
}

func isHot(hot []bucket.Bucket, b bucket.Bucket) bool {
	for _, h := range hot {
		if h == b {
			return true
		}
	}
	return false
}

// ackReleases plays the registrars of servers that release at once: for
// every move in progress it writes the old owner's acknowledgement, once.
func ackReleases(t *testing.T, ctx context.Context, cli *clientv3.Client) {
	t.Helper()
	wch := cli.Watch(ctx, layout.AssignmentKey())
	go func() {
		for range wch {
			resp, err := cli.Get(ctx, layout.AssignmentKey())
			if err != nil || len(resp.Kvs) == 0 {
				continue
			}
			a, err := schema.ParseAssignment(resp.Kvs[0].Value)
			if err != nil {
				continue
			}
			for b, m := range a.Moving {
				key := layout.ReleasedKey(b)
				cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
					Then(clientv3.OpPut(key, string(schema.Released{From: m.From, Epoch: m.Epoch}.Encode()))).Commit()
			}
		}
	}()
}
