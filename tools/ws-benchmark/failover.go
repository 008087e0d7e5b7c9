package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

const failoverPrefix = "/ws-benchmark-failover"

// failoverCluster is the real thing on loopback: strict stand-in servers
// (in this process), a registrar process per server, a monitor process,
// and a Caddy with dtable_bucket_proxy.
type failoverCluster struct {
	dir     string
	etcdURL string
	cli     *clientv3.Client
	layout  schema.Layout
	servers map[string]*http.Server
	regs    map[string]*exec.Cmd
	procs   []*exec.Cmd
	proxy   *proxyProc
	hc      *http.Client
}

func (fc *failoverCluster) startProc(name, bin string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(fc.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	fc.procs = append(fc.procs, cmd)
	return cmd, nil
}

func (fc *failoverCluster) stop() {
	if fc.proxy != nil {
		fc.proxy.stop()
	}
	for _, c := range fc.procs {
		if c.ProcessState == nil {
			c.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, c := range fc.procs {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
	for _, s := range fc.servers {
		s.Close()
	}
}

// assignment reads the current assignment from etcd.
func (fc *failoverCluster) assignment(ctx context.Context) (*schema.Assignment, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := fc.cli.Get(cctx, fc.layout.AssignmentKey())
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	return schema.ParseAssignment(resp.Kvs[0].Value)
}

// served asks the proxy for a base in bucket b and returns the node that
// answered (fakeserver's JSON "node"), or "" with the status.
func (fc *failoverCluster) served(ctx context.Context, b int) (string, int) {
	status, body, err := httpGet(ctx, fc.hc, "http://"+fc.proxy.addr+basePath(b))
	if err != nil || status != 200 {
		return "", status
	}
	var ans struct {
		Node string `json:"node"`
	}
	json.Unmarshal([]byte(body), &ans)
	return ans.Node, status
}

// waitServedElsewhere polls every bucket in buckets until each is answered
// by a node other than gone, at most timeout; it returns per bucket the
// time from t0 until then, and how many never were.
func (fc *failoverCluster) waitServedElsewhere(ctx context.Context, buckets []int, gone string, t0 time.Time, timeout time.Duration) ([]time.Duration, int) {
	left := map[int]bool{}
	for _, b := range buckets {
		left[b] = true
	}
	var ds []time.Duration
	deadline := t0.Add(timeout)
	for len(left) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		for _, b := range buckets {
			if !left[b] {
				continue
			}
			if node, _ := fc.served(ctx, b); node != "" && node != gone {
				ds = append(ds, time.Since(t0))
				delete(left, b)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return ds, len(left)
}

// load sends requests for the given buckets through the proxy from
// workers goroutines until stop is closed (each at most 100,000
// requests), and returns their latencies and how many were not 200.
func (fc *failoverCluster) load(ctx context.Context, buckets []int, workers int, stop <-chan struct{}) func() ([]time.Duration, int) {
	var mu sync.Mutex
	var lat []time.Duration
	bad := 0
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				b := buckets[(w+i*workers)%len(buckets)]
				t := time.Now()
				node, _ := fc.served(ctx, b)
				d := time.Since(t)
				mu.Lock()
				lat = append(lat, d)
				if node == "" {
					bad++
				}
				mu.Unlock()
			}
		}(w)
	}
	return func() ([]time.Duration, int) {
		wg.Wait()
		return lat, bad
	}
}

func (fc *failoverCluster) metrics(ctx context.Context) string {
	_, text, _ := httpGet(ctx, fc.hc, "http://"+fc.proxy.admin+"/metrics")
	return text
}

// runFailover measures a clean stop and a crash with real registrar and
// monitor processes.
func runFailover(ctx context.Context, o *options, dir string, cli *clientv3.Client, etcdURL string) ([]row, error) {
	fc := &failoverCluster{dir: filepath.Join(dir, "failover"), etcdURL: etcdURL, cli: cli, servers: map[string]*http.Server{},
		regs: map[string]*exec.Cmd{}, hc: newHTTPClient()}
	os.MkdirAll(fc.dir, 0o755)
	fc.layout, _ = schema.NewLayout(failoverPrefix)
	defer fc.stop()
	bins := map[string]string{}
	for _, prog := range []string{"registrar", "monitor"} {
		bin := filepath.Join(fc.dir, prog)
		if out, err := exec.Command("go", "build", "-o", bin, "./"+prog).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build ./%s (run from the repository root): %v\n%s", prog, err, out)
		}
		bins[prog] = bin
	}
	const nodes = 4
	var names []string
	for i := 1; i <= nodes; i++ {
		name := fmt.Sprintf("f%d", i)
		names = append(names, name)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		srv := &http.Server{Handler: fakeserver.New(fakeserver.Config{Name: name, Strict: true, SaveDelay: 50 * time.Millisecond})}
		go srv.Serve(l)
		fc.servers[name] = srv
		local := "http://" + l.Addr().String() + "/"
		reg, err := fc.startProc("registrar-"+name, bins["registrar"], "-etcd", etcdURL, "-prefix", failoverPrefix, "-node-id", name,
			"-node-url", "https://"+name+".example.com/", "-local-node-url", local, "-ttl", o.ttl.String(),
			"-notify-url", strings.TrimSuffix(local, "/")+fakeserver.NotifyPath)
		if err != nil {
			return nil, err
		}
		fc.regs[name] = reg
	}
	if _, err := fc.startProc("monitor", bins["monitor"], "run", "-etcd", etcdURL, "-prefix", failoverPrefix, "-id", "m1",
		"-settle", "1s", "-session-ttl", "3s", "-rebalance-after", "0"); err != nil {
		return nil, err
	}
	p, err := startCaddy(o.caddyBin, fc.dir, "caddy-failover", fmt.Sprintf("127.0.0.1:%d", adminBase+9), fmt.Sprintf("127.0.0.1:%d", portFailover), "INFO",
		fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tdtable_bucket_proxy {\n\t\tetcd %s\n\t\tprefix %s\n\t}\n}\n", portFailover, etcdURL, failoverPrefix), nil)
	if err != nil {
		return nil, err
	}
	fc.proxy = p

	// Wait for the first assignment over all nodes, and every bucket served.
	var a *schema.Assignment
	deadline := time.Now().Add(60 * time.Second)
	for {
		a, _ = fc.assignment(ctx)
		if a != nil && len(a.Counts()) == nodes && len(a.Moving) == 0 && len(a.Queued) == 0 && len(ownedBuckets(a, "")) == 0 {
			if ds, left := fc.waitServedElsewhere(ctx, allBuckets(), "", time.Now(), 20*time.Second); left == 0 && len(ds) == 256 {
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("failover cluster: no settled assignment over %d nodes served by the proxy within 60 s (logs in %s)", nodes, fc.dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var rows []row

	// Clean stop: SIGTERM to f2's registrar; its buckets are handed off.
	victim := names[1]
	owned := ownedBuckets(a, victim)
	m0 := fc.metrics(ctx)
	stopLoad := make(chan struct{})
	wait := fc.load(ctx, owned, 8, stopLoad)
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	fc.regs[victim].Process.Signal(syscall.SIGTERM)
	ds, left := fc.waitServedElsewhere(ctx, owned, victim, t0, 90*time.Second)
	time.Sleep(200 * time.Millisecond)
	close(stopLoad)
	lat, bad := wait()
	m1 := fc.metrics(ctx)
	res := fmt.Sprintf("all %d buckets served by their new owners after %s (per bucket p50 %s)", len(owned), fmtDur(percentile(ds, 100)), fmtDur(percentile(ds, 50)))
	if left > 0 {
		res = fmt.Sprintf("%d of %d buckets not served by a new owner within 90 s", left, len(owned))
	}
	rows = append(rows, row{"failover", fmt.Sprintf("clean stop (SIGTERM to %s's registrar), planned handoffs", victim), res, "(measure)"})
	held := promHistogram(m1, "caddy_dtable_hold_seconds", `outcome="released"`).minus(promHistogram(m0, "caddy_dtable_hold_seconds", `outcome="released"`))
	holdRes := "no request was held"
	if held.total() > 0 {
		holdRes = fmt.Sprintf("hold time p50 %s, p99 %s (caddy_dtable_hold_seconds, %d requests held and released; interpolated in the histogram's buckets)",
			fmtDur(time.Duration(held.quantile(0.5)*float64(time.Second))), fmtDur(time.Duration(held.quantile(0.99)*float64(time.Second))), int(held.total()))
	}
	holdRes += fmt.Sprintf("; client side, all %d requests for the moving buckets: latency p50/p99/max %s, %d not answered 200", len(lat), summary(lat), bad)
	rows = append(rows, row{"handoff hold", "requests for the stopped server's buckets during its planned handoffs (8 clients in a loop)", holdRes, "(measure)"})

	// Crash: SIGKILL f3's registrar and stop its server at once.
	a, err = fc.assignment(ctx)
	if err != nil || a == nil {
		return rows, fmt.Errorf("read the assignment: %v", err)
	}
	victim = names[2]
	owned = ownedBuckets(a, victim)
	t0 = time.Now()
	fc.regs[victim].Process.Kill()
	fc.servers[victim].Close()
	ds, left = fc.waitServedElsewhere(ctx, owned, victim, t0, o.ttl+90*time.Second)
	res = fmt.Sprintf("all %d buckets served by their new owners after %s (per bucket p50 %s), with registrar -ttl %v",
		len(owned), fmtDur(percentile(ds, 100)), fmtDur(percentile(ds, 50)), o.ttl)
	if left > 0 {
		res = fmt.Sprintf("%d of %d buckets not served by a new owner within TTL + 90 s", left, len(owned))
	}
	rows = append(rows, row{"failover", fmt.Sprintf("crash (SIGKILL to %s's registrar, its server closed)", victim), res, fmt.Sprintf("≈ TTL (%v)", o.ttl)})
	return rows, nil
}

func allBuckets() []int {
	bs := make([]int, 256)
	for i := range bs {
		bs[i] = i
	}
	return bs
}

func ownedBuckets(a *schema.Assignment, node string) []int {
	var bs []int
	for b, n := range a.Owners {
		if n == node {
			bs = append(bs, b)
		}
	}
	return bs
}
