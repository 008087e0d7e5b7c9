// Command proxy-benchmark measures the proxy's overhead against plain Caddy
// reverse_proxy, side by side, with wrk on loopback:
//
//	./xcaddy.sh && go run ./tools/proxy-benchmark -caddy ./caddy
//
// It starts an embedded etcd, one fast backend, and one ./caddy serving two
// sites: :7101 with dtable_bucket_proxy (every bucket owned by the backend)
// and :7102 with plain reverse_proxy to the same backend. wrk then runs
// against each in turn, -rounds times, for -duration each (bounded), and
// the table shows requests/s, latency and the ratio to the baseline.
// Needs wrk (apt-get install wrk).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/embedetcd"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

func main() {
	caddyBin := flag.String("caddy", "./caddy", "Caddy built by xcaddy.sh")
	duration := flag.Duration("duration", 10*time.Second, "length of one wrk run")
	rounds := flag.Int("rounds", 3, "runs per site, alternating")
	conns := flag.Int("connections", 32, "wrk connections")
	threads := flag.Int("threads", 2, "wrk threads")
	flag.Parse()
	if err := run(*caddyBin, *duration, *rounds, *conns, *threads); err != nil {
		fmt.Fprintf(os.Stderr, "proxy-benchmark: %v\n", err)
		os.Exit(1)
	}
}

func run(caddyBin string, duration time.Duration, rounds, conns, threads int) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk not found: apt-get install wrk")
	}
	dir, _ := os.MkdirTemp("", "proxy-benchmark-")
	defer os.RemoveAll(dir)

	// Backend: a small fixed answer, so the proxy dominates the cost.
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go http.Serve(bl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }))

	// etcd with one node owning every bucket.
	etcdServer, etcdURL, err := embedetcd.Start(filepath.Join(dir, "etcd"), "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer etcdServer.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	layout, _ := schema.NewLayout("")
	n := schema.Node{NodeID: "n1", NodeURL: "http://n1/", LocalNodeURL: "http://" + bl.Addr().String() + "/"}
	a := &schema.Assignment{Version: 1}
	for b := range a.Owners {
		a.Owners[b] = "n1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, layout.NodeKey("n1"), string(n.Encode())); err != nil {
		return err
	}
	if _, err := cli.Put(ctx, layout.AssignmentKey(), string(a.Encode())); err != nil {
		return err
	}

	caddyfile := filepath.Join(dir, "Caddyfile")
	os.WriteFile(caddyfile, []byte(fmt.Sprintf(`{
	admin localhost:7103
	auto_https off
	log {
		level ERROR
	}
}
:7101 {
	dtable_bucket_proxy {
		etcd %s
	}
}
:7102 {
	reverse_proxy %s
}
`, etcdURL, bl.Addr().String())), 0o644)
	caddy := exec.Command(caddyBin, "run", "--config", caddyfile)
	caddy.Stdout, caddy.Stderr = nil, nil
	if err := caddy.Start(); err != nil {
		return fmt.Errorf("start %s: %w", caddyBin, err)
	}
	defer func() { caddy.Process.Kill(); caddy.Wait() }()

	uuidPath := "/api/v1/dtables/5c264e76-0e5a-448a-9f34-580b551364ca/rows/"
	sites := []struct{ name, url string }{
		{"reverse_proxy (baseline)", "http://127.0.0.1:7102" + uuidPath},
		{"dtable_bucket_proxy", "http://127.0.0.1:7101" + uuidPath},
	}
	for _, s := range sites { // wait until both answer 200
		deadline := time.Now().Add(15 * time.Second)
		for {
			resp, err := http.Get(s.url)
			if err == nil && resp.StatusCode == 200 {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s does not answer 200: %v", s.url, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	results := map[string][]wrkResult{}
	for r := 0; r < rounds; r++ {
		for _, s := range sites {
			res, err := runWrk(s.url, duration, conns, threads)
			if err != nil {
				return err
			}
			results[s.name] = append(results[s.name], res)
			fmt.Printf("round %d %-26s %10.0f req/s  avg latency %v\n", r+1, s.name, res.rps, res.latency)
		}
	}
	base := median(results[sites[0].name])
	fmt.Printf("\n%-26s %12s %14s %8s\n", "site", "req/s (med)", "latency (med)", "ratio")
	for _, s := range sites {
		m := median(results[s.name])
		fmt.Printf("%-26s %12.0f %14v %8.3f\n", s.name, m.rps, m.latency, m.rps/base.rps)
	}
	fmt.Printf("(wrk -t%d -c%d -d%v, %d rounds each, alternating; loopback; one backend)\n", threads, conns, duration, rounds)
	return nil
}

type wrkResult struct {
	rps     float64
	latency time.Duration
}

var (
	rpsRe = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	latRe = regexp.MustCompile(`Latency\s+([0-9.]+)(us|ms|s)`)
	errRe = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func runWrk(u string, d time.Duration, conns, threads int) (wrkResult, error) {
	out, err := exec.Command("wrk", "-t"+strconv.Itoa(threads), "-c"+strconv.Itoa(conns), "-d"+d.String(), u).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %v\n%s", u, err, out)
	}
	if m := errRe.FindSubmatch(out); m != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %s non-2xx answers\n%s", u, m[1], out)
	}
	m := rpsRe.FindSubmatch(out)
	l := latRe.FindSubmatch(out)
	if m == nil || l == nil {
		return wrkResult{}, fmt.Errorf("cannot read wrk output:\n%s", out)
	}
	rps, _ := strconv.ParseFloat(string(m[1]), 64)
	lat, _ := time.ParseDuration(string(l[1]) + strings.Replace(string(l[2]), "us", "µs", 1))
	return wrkResult{rps: rps, latency: lat}, nil
}

func median(rs []wrkResult) wrkResult {
	s := append([]wrkResult(nil), rs...)
	for i := range s { // small n: insertion sort by rps
		for j := i; j > 0 && s[j].rps < s[j-1].rps; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s[len(s)/2]
}
