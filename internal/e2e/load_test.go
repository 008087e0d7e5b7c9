package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// Skewed traffic through the proxy (six hot buckets, all on s1) shows up
// in the proxy's load report; `monitor rebalance -by load` (the real CLI,
// waiting for its handoffs) moves four of them, the fewest that bring
// every server within 1.10 × the mean, through real handoffs: no request
// fails, no bucket is on two servers at once.
func TestSkewedTrafficIsEvenedByRebalanceByLoad(t *testing.T) {
	c := newCluster(t, options{servers: 3, monitors: 1, save: 50 * time.Millisecond,
		monArgs:    []string{"-load-sample", "200ms", "-load-half-life", "1s"},
		proxyBlock: "load_report 300ms caddy@e2e"})
	a := c.assignment()
	hot := a.Owned("s1")[:6]
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent, failed atomic.Int64
	client := &http.Client{Timeout: 30 * time.Second}
	for _, b := range hot {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				sent.Add(1)
				resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/dtables/%s/rows/", proxyPort, uuidOf(b)))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	defer func() { stop(); wg.Wait() }()

	cli := func(args ...string) (string, int) {
		cmd := exec.Command(monitorBin, append([]string{args[0], "-etcd", strings.Join(c.etcd.Endpoints(), ","), "-json"}, args[1:]...)...)
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return string(out), code
	}
	var dry monitorapi.Response
	testutil.Eventually(t, 20*time.Second, "a dry run by load that sees the hot buckets", func() bool {
		out, code := cli("rebalance", "-by", "load", "-dry-run")
		dry = monitorapi.Response{}
		json.Unmarshal([]byte(out), &dry)
		return code == 0 && dry.Load != nil && len(dry.Moves) == 4
	})
	t.Logf("dry run: load before %v, after %v (mean %.1f, within %v)", dry.Load.Before, dry.Load.After, dry.Load.Mean, dry.Load.Within)

	out, code := cli("rebalance", "-by", "load", "-wait", "60s")
	var done monitorapi.Response
	if err := json.Unmarshal([]byte(out), &done); err != nil || code != 0 {
		t.Fatalf("monitor rebalance -by load: exit %d: %s", code, out)
	}
	if len(done.Moves) != 4 || !done.Load.Within || done.Outcome == nil || len(done.Outcome.Committed) != 4 {
		t.Fatalf("rebalance by load: %d moves, load %+v, outcome %+v; want 4 committed, within the band", len(done.Moves), done.Load, done.Outcome)
	}
	isHot := map[bucket.Bucket]bool{}
	for _, b := range hot {
		isHot[b] = true
	}
	for _, mv := range done.Moves {
		if !isHot[mv.Bucket] || mv.From != "s1" || mv.Reason != "load" {
			t.Fatalf("move %+v: want a hot bucket off s1 (reason load)", mv)
		}
	}
	after := c.assignment()
	perNode := map[string]int{}
	for _, b := range hot {
		perNode[after.Owners[b]]++
	}
	if perNode["s1"] != 2 || perNode["s2"] != 2 || perNode["s3"] != 2 {
		t.Fatalf("hot buckets per server after: %v; want two each", perNode)
	}
	time.Sleep(500 * time.Millisecond) // traffic to the moved buckets on their new servers
	stop()
	wg.Wait()
	t.Logf("traffic: %d requests, %d failed", sent.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed", failed.Load(), sent.Load())
	}
	c.checkNoOverlap()
}
