// Command proxy-benchmark measures dtable_bucket_proxy against the usual
// reverse proxies in front of the same backends, with wrk on loopback:
//
//	./xcaddy.sh && go run ./tools/proxy-benchmark -caddy ./caddy
//
// It needs wrk (apt-get install wrk; required) and nginx (apt-get install
// nginx; the nginx row is skipped when it is missing). It starts an
// embedded etcd, three fast backends on 127.0.0.1 that count the
// connections they accept, and then, for the same backends, these variants:
//
//	direct                         wrk straight to the first backend
//	nginx keepalive                nginx, worker_processes 1, upstream keepalive 128
//	Go ReverseProxy                net/http/httputil, MaxIdleConnsPerHost 128
//	Caddy defaults                 reverse_proxy with Caddy's default transport
//	Caddy, directive's transport   reverse_proxy with the transport dtable_bucket_proxy
//	                               ships (keepalive_idle_conns_per_host 1024)
//	dtable_bucket_proxy defaults   as shipped: its own transport
//	dtable_bucket_proxy, Caddy's   with an empty transport http block, i.e.
//	transport                      Caddy's default transport
//
// Each dtable_bucket_proxy row has a plain Caddy row with the same
// transport, so the table shows both "× Caddy defaults" and "× Caddy with
// the same transport", and then, per connection count, whether each
// target of issue 10 item 2 is met (req/s ratios and p99, with the spread
// of the per-round ratios as the noise to read them against).
//
// With -pprof DIR, the first round also saves a CPU profile of each Caddy
// variant (from Caddy's admin endpoint, /debug/pprof/profile) and of the
// Go proxy (this process, backends included) during its run, as
// DIR/<variant>-c<conns>.pprof; compare them with
// go tool pprof -top -diff_base A.pprof B.pprof.
//
// With -instructions, instead of wrk it counts the instructions each proxy
// executes per request under valgrind's callgrind, which repeats where
// req/s on a small VM does not (instructions.go; needs valgrind).
//
// The proxies without bucket routing round-robin over the three backends;
// dtable_bucket_proxy routes by the assignment in etcd, which spreads the
// 256 buckets over the three backends. wrk's Lua script sends every request
// for a base in another bucket (all 256 in turn). With taskset, the servers
// (this program, its backends and Go proxy, Caddy, nginx) run on CPU 0 and
// wrk on CPU 1. Each round runs every variant once, at every connection
// count, in an order that rotates per round; the table shows the median per
// variant. Before each run the backends close their idle connections, so
// "upstream conns" counts the connections the proxy opened during that run.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/cpupin"
	"github.com/dtablecluster/dtable-router/internal/embedetcd"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

const pinnedEnv = "PROXY_BENCHMARK_PINNED"

func main() {
	caddyBin := flag.String("caddy", "./caddy", "Caddy built by xcaddy.sh")
	duration := flag.Duration("duration", 10*time.Second, "length of one wrk run")
	rounds := flag.Int("rounds", 3, "rounds; each runs every variant once per connection count")
	conns := flag.String("connections", "50,512", "wrk connection counts, comma-separated")
	threads := flag.Int("threads", 1, "wrk threads (wrk has one core of its own)")
	pprofDir := flag.String("pprof", "", "if set, save CPU profiles of the first round's runs of the proxies here")
	instr := instrFlags()
	flag.Parse()
	if instr.serveGoProxy != "" { // the Go proxy, as a process of its own for -instructions
		serveGoProxy(instr.serveGoProxy, strings.Split(instr.goProxyBackends, ","))
		return
	}
	if instr.enabled { // instruction counts under valgrind: no wrk, no pinning
		if err := runInstructions(*caddyBin, instr); err != nil {
			fmt.Fprintf(os.Stderr, "proxy-benchmark: %v\n", err)
			os.Exit(1)
		}
		return
	}
	pinNote, _ := pin.Self("servers on CPU 0, wrk on CPU 1 (taskset)")
	var cs []int
	for _, f := range strings.Split(*conns, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			fmt.Fprintf(os.Stderr, "proxy-benchmark: -connections %q: want numbers like 50,512\n", *conns)
			os.Exit(2)
		}
		cs = append(cs, c)
	}
	if err := run(*caddyBin, *duration, *rounds, cs, *threads, pinNote, *pprofDir); err != nil {
		fmt.Fprintf(os.Stderr, "proxy-benchmark: %v\n", err)
		os.Exit(1)
	}
}

// pin runs this program (the in-process servers and every server it
// starts) on CPU 0, so the Go runtime sizes itself for one core; wrk is
// started on CPU 1.
var pin = cpupin.Pin{Env: pinnedEnv, CPU: 0}

// backend is a fast HTTP server that counts the connections it accepts.
type backend struct {
	addr   string
	srv    *http.Server
	opened atomic.Int64
}

func startBackend() (*backend, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{addr: l.Addr().String()}
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				b.opened.Add(1)
			}
		},
	}
	go b.srv.Serve(l)
	return b, nil
}

// resetConns closes the backend's idle connections and zeroes its counter.
func (b *backend) resetConns() {
	b.srv.SetKeepAlivesEnabled(false) // closes the idle connections
	b.srv.SetKeepAlivesEnabled(true)
	b.opened.Store(0)
}

type variant struct {
	name, url string
	skip      string // why it is not measured, or ""
	// profile: where -pprof fetches its CPU profile ("caddy": Caddy's
	// admin endpoint; "self": this process); "" for none.
	profile string
	slug    string // its profile's file name
}

func run(caddyBin string, duration time.Duration, rounds int, conns []int, threads int, pinNote, pprofDir string) error {
	began := time.Now()
	wrkBin, err := exec.LookPath("wrk")
	if err != nil {
		return fmt.Errorf("wrk not found: apt-get install wrk")
	}
	if _, err := os.Stat(caddyBin); err != nil {
		return fmt.Errorf("%s not found: build it with ./xcaddy.sh", caddyBin)
	}
	dir, _ := os.MkdirTemp("", "proxy-benchmark-")
	defer os.RemoveAll(dir)

	var backends []*backend
	for i := 0; i < 3; i++ {
		b, err := startBackend()
		if err != nil {
			return err
		}
		backends = append(backends, b)
	}

	// etcd: three nodes, the 256 buckets spread over them in turn.
	etcdURL, stopEtcd, err := startAssignedEtcd(filepath.Join(dir, "etcd"), backends)
	if err != nil {
		return err
	}
	defer stopEtcd()

	// Go httputil.ReverseProxy, in this process, round-robin.
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.addr)
	}
	goProxy := newGoProxy(addrs)
	gl, err := net.Listen("tcp", "127.0.0.1:7111")
	if err != nil {
		return err
	}
	go http.Serve(gl, goProxy)

	// Caddy: dtable_bucket_proxy (its defaults; Caddy's transport),
	// reverse_proxy (Caddy's defaults; the directive's transport).
	ups := backends[0].addr + " " + backends[1].addr + " " + backends[2].addr
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
		etcd %[1]s
	}
}
:7105 {
	dtable_bucket_proxy {
		etcd %[1]s
		transport http
	}
}
:7102 {
	reverse_proxy %[2]s {
		lb_policy round_robin
	}
}
:7104 {
	reverse_proxy %[2]s {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns_per_host %[3]d
		}
	}
}
`, etcdURL, ups, directiveIdleConnsPerHost)), 0o644)
	caddy := exec.Command(caddyBin, "run", "--config", caddyfile)
	caddy.Stdout, caddy.Stderr = nil, os.Stderr
	if err := caddy.Start(); err != nil {
		return fmt.Errorf("start %s: %w", caddyBin, err)
	}
	defer func() { caddy.Process.Kill(); caddy.Wait() }()

	// nginx, if installed.
	nginxSkip, nginxVersion := "", "not installed"
	if nginxBin, err := exec.LookPath("nginx"); err != nil {
		nginxSkip = "skipped: nginx not installed (apt-get install nginx)"
		fmt.Println("nginx not found: the nginx row is skipped; apt-get install nginx to measure it")
	} else {
		out, _ := exec.Command(nginxBin, "-v").CombinedOutput()
		nginxVersion = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: "))
		stop, err := startNginx(nginxBin, dir, backends)
		if err != nil {
			nginxSkip = "skipped: nginx did not start: " + err.Error()
			fmt.Println(nginxSkip)
		} else {
			defer stop()
		}
	}

	path := "/api/v1/dtables/5c264e76-0e5a-448a-9f34-580b551364ca/rows/"
	variants := []variant{
		{name: "direct (one backend)", url: "http://" + backends[0].addr},
		{name: "nginx keepalive 128", url: "http://127.0.0.1:7110", skip: nginxSkip},
		{name: "Go httputil.ReverseProxy", url: "http://127.0.0.1:7111", profile: "self", slug: "go-reverseproxy"},
		{name: "Caddy reverse_proxy defaults", url: "http://127.0.0.1:7102", profile: "caddy", slug: "caddy-defaults"},
		{name: "Caddy reverse_proxy, directive's transport", url: "http://127.0.0.1:7104", profile: "caddy", slug: "caddy-directive-transport"},
		{name: "dtable_bucket_proxy defaults", url: "http://127.0.0.1:7101", profile: "caddy", slug: "dtable-defaults"},
		{name: "dtable_bucket_proxy, Caddy's transport", url: "http://127.0.0.1:7105", profile: "caddy", slug: "dtable-caddy-transport"},
	}
	const (
		nginxIdx        = 1
		caddyDefault    = 3 // plain Caddy on Caddy's defaults
		caddyDirective  = 4 // plain Caddy with the directive's transport
		dtableDefaults  = 5 // dtable_bucket_proxy as shipped
		dtableCaddyTr   = 6 // dtable_bucket_proxy with Caddy's default transport
		targetOverCaddy = 1.3
	)
	// sameTransport: the plain Caddy variant with the same transport as a
	// dtable_bucket_proxy variant.
	sameTransport := map[int]int{dtableDefaults: caddyDirective, dtableCaddyTr: caddyDefault}
	if pprofDir != "" {
		if err := os.MkdirAll(pprofDir, 0o755); err != nil {
			return err
		}
	}
	for _, v := range variants { // wait until each answers 200
		if v.skip != "" {
			continue
		}
		if err := waitOK(v.url + path); err != nil {
			return err
		}
	}
	script := filepath.Join(dir, "buckets.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		return err
	}

	type key struct{ v, c int }
	results := map[key][]wrkResult{}
	for r := 0; r < rounds; r++ {
		for _, c := range conns {
			for k := range variants {
				i := (k + r) % len(variants)
				v := variants[i]
				if v.skip != "" {
					continue
				}
				for _, b := range backends {
					b.resetConns()
				}
				time.Sleep(200 * time.Millisecond)
				var profDone chan error
				if pprofDir != "" && r == 0 && v.profile != "" {
					profDone = make(chan error, 1)
					file := filepath.Join(pprofDir, fmt.Sprintf("%s-c%d.pprof", v.slug, c))
					go func() { profDone <- takeProfile(v.profile, file, duration) }()
				}
				var allocsFile string
				if profDone != nil && v.profile == "caddy" {
					// Heap allocation totals before and after the run (after a GC,
					// so the profile is up to date): their
					// difference over the run's requests is what each request
					// allocates (go tool pprof -sample_index=alloc_objects -top
					// -diff_base X.allocs-before X.allocs-after).
					allocsFile = filepath.Join(pprofDir, fmt.Sprintf("%s-c%d.allocs", v.slug, c))
					if err := saveURL(caddyPprof+"heap?gc=1", allocsFile+"-before"); err != nil {
						fmt.Fprintf(os.Stderr, "proxy-benchmark: allocs of %s: %v\n", v.name, err)
					}
				}
				res, err := runWrk(wrkBin, script, v.url, duration, c, threads)
				if allocsFile != "" {
					if err := saveURL(caddyPprof+"heap?gc=1", allocsFile+"-after"); err != nil {
						fmt.Fprintf(os.Stderr, "proxy-benchmark: allocs of %s: %v\n", v.name, err)
					}
				}
				if profDone != nil {
					if perr := <-profDone; perr != nil {
						fmt.Fprintf(os.Stderr, "proxy-benchmark: profile of %s: %v\n", v.name, perr)
					}
				}
				if err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				for _, b := range backends {
					res.upstream += b.opened.Load()
				}
				results[key{i, c}] = append(results[key{i, c}], res)
				fmt.Printf("round %d  c=%-4d %-42s %9.0f req/s  p99 %-9v upstream conns %-5d requests %d%s\n",
					r+1, c, v.name, res.rps, res.p99, res.upstream, res.requests, res.errNote())
			}
		}
	}

	caddyVersion := "?"
	if out, err := exec.Command(caddyBin, "version").Output(); err == nil {
		caddyVersion = strings.Fields(string(out) + " ?")[0]
	}
	wrkVersion := "?"
	if out, _ := exec.Command(wrkBin, "-v").CombinedOutput(); len(out) > 0 {
		wrkVersion = strings.Fields(string(out))[1]
	}
	fmt.Printf("\n%s, %d cores (%s), Go %s, Caddy %s, nginx %s, wrk %s\n",
		time.Now().UTC().Format("2006-01-02"), pin.MachineCPUs(), pinNote, strings.TrimPrefix(runtime.Version(), "go"), caddyVersion, nginxVersion, wrkVersion)
	fmt.Printf("wrk -t%d, %v per run, %d interleaved rounds, medians; requests spread over all 256 buckets, 3 backends; the whole run took %v\n",
		threads, duration, rounds, time.Since(began).Round(time.Second))
	fmt.Printf("reproduce: ./xcaddy.sh && go run ./tools/proxy-benchmark %s\n\n", strings.Join(os.Args[1:], " "))
	fmt.Println("| variant | conns | req/s | p50 | p99 | p99.9 | upstream conns opened | × Caddy defaults | × Caddy, same transport | × nginx |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range conns {
		base := median(results[key{caddyDefault, c}])
		ng := median(results[key{nginxIdx, c}])
		for i, v := range variants {
			if v.skip != "" {
				fmt.Printf("| %s | %d | %s | | | | | | | |\n", v.name, c, v.skip)
				continue
			}
			m := median(results[key{i, c}])
			ratio := func(b wrkResult) string {
				if b.rps == 0 {
					return "–"
				}
				return fmt.Sprintf("%.2f", m.rps/b.rps)
			}
			same := ""
			if j, ok := sameTransport[i]; ok {
				same = ratio(median(results[key{j, c}]))
			}
			fmt.Printf("| %s | %d | %.0f | %s | %s | %s | %d | %s | %s | %s |\n",
				v.name, c, m.rps, fmtDur(m.p50), fmtDur(m.p99), fmtDur(m.p999), m.upstream, ratio(base), same, ratio(ng))
		}
	}

	// The targets of issue 10 item 2, per connection count.
	fmt.Println("\nTargets (issue 10 item 2); \"per-round\" is the range of the ratio of the two variants' runs in each round, the noise to read the median against:")
	for _, c := range conns {
		cmpPair := func(a, b int) (rps, p99 float64, spread string) {
			ma, mb := median(results[key{a, c}]), median(results[key{b, c}])
			if mb.rps == 0 || mb.p99 == 0 {
				return 0, 0, "–"
			}
			ra, rb := results[key{a, c}], results[key{b, c}]
			lo, hi := 0.0, 0.0
			for k := 0; k < len(ra) && k < len(rb); k++ {
				x := ra[k].rps / rb[k].rps
				if k == 0 || x < lo {
					lo = x
				}
				if k == 0 || x > hi {
					hi = x
				}
			}
			return ma.rps / mb.rps, float64(ma.p99) / float64(mb.p99), fmt.Sprintf("%.2f–%.2f", lo, hi)
		}
		metStr := func(ok bool) string {
			if ok {
				return "met"
			}
			return "NOT met"
		}
		for _, pair := range [][2]int{{dtableDefaults, caddyDirective}, {dtableCaddyTr, caddyDefault}} {
			rps, p99, spread := cmpPair(pair[0], pair[1])
			fmt.Printf("- c=%d, ≥ 1.0 × plain Caddy with equal transport, p99 no worse: %s vs %s: %.2f × req/s (per-round %s), p99 %s vs %s (%.2f ×): %s\n",
				c, variants[pair[0]].name, variants[pair[1]].name, rps, spread,
				fmtDur(median(results[key{pair[0], c}]).p99), fmtDur(median(results[key{pair[1], c}]).p99), p99,
				metStr(rps >= 1.0 && p99 <= 1.0))
		}
		rps, _, spread := cmpPair(dtableDefaults, caddyDefault)
		fmt.Printf("- c=%d, ≥ %.1f × plain Caddy on Caddy's defaults: %s vs %s: %.2f × req/s (per-round %s): %s\n",
			c, targetOverCaddy, variants[dtableDefaults].name, variants[caddyDefault].name, rps, spread, metStr(rps >= targetOverCaddy))
	}
	var errs []string
	for k, rs := range results {
		for _, r := range rs {
			if n := r.errNote(); n != "" {
				errs = append(errs, fmt.Sprintf("%s c=%d:%s", variants[k.v].name, k.c, n))
			}
		}
	}
	sort.Strings(errs)
	for _, e := range errs {
		fmt.Println("note:", e)
	}
	if !pin.Pinned() {
		fmt.Println("note:", pinNote)
	}
	return nil
}

// newGoProxy is the Go httputil.ReverseProxy variant: round-robin over the
// backends (host:port), MaxIdleConnsPerHost 128.
func newGoProxy(backends []string) *httputil.ReverseProxy {
	var targets []*url.URL
	for _, b := range backends {
		targets = append(targets, &url.URL{Scheme: "http", Host: b})
	}
	var rr atomic.Uint64
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(targets[rr.Add(1)%uint64(len(targets))])
			pr.Out.Host = pr.In.Host
		},
		ErrorLog: log.New(io.Discard, "", 0), // wrk hanging up at the end of a run is no error
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 128,
			IdleConnTimeout:     90 * time.Second,
		},
	}
}

// directiveIdleConnsPerHost is keepalive_idle_conns_per_host of the
// transport dtable_bucket_proxy ships (caddymodule/transport_defaults.go);
// the plain Caddy variant with "the directive's transport" sets it, and the
// rest of that transport is Caddy's defaults.
const directiveIdleConnsPerHost = 1024

// takeProfile saves a CPU profile of a little less than d, taken from
// Caddy's admin endpoint (where "caddy") or from this process ("self").
func takeProfile(where, file string, d time.Duration) error {
	secs := max(1, int((d-2*time.Second)/time.Second))
	time.Sleep(time.Second) // let wrk's connections open
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	if where == "self" {
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		time.Sleep(time.Duration(secs) * time.Second)
		pprof.StopCPUProfile()
		return nil
	}
	return saveTo(fmt.Sprintf("%sprofile?seconds=%d", caddyPprof, secs), f)
}

// caddyPprof is Caddy's pprof endpoint (its admin address is set in the
// benchmark's Caddyfile).
const caddyPprof = "http://localhost:7103/debug/pprof/"

func saveURL(u, file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return saveTo(u, f)
}

func saveTo(u string, w io.Writer) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

func startNginx(bin, dir string, backends []*backend) (func(), error) {
	nd := filepath.Join(dir, "nginx")
	os.MkdirAll(nd, 0o755)
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "\t\tserver %s;\n", b.addr)
	}
	conf := filepath.Join(nd, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log error;
events {
	worker_connections 4096;
}
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	upstream backends {
%[2]s		keepalive 128;
	}
	server {
		listen 127.0.0.1:7110;
		location / {
			proxy_pass http://backends;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
`, nd, servers.String())), 0o644)
	cmd := exec.Command(bin, "-p", nd, "-e", filepath.Join(nd, "error.log"), "-c", conf)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:7110")
		if err == nil {
			c.Close()
			return stop, nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(nd, "error.log"))
			return nil, fmt.Errorf("exited: %s", strings.TrimSpace(string(log)))
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not listening on 127.0.0.1:7110")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitOK(u string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer 200: %v", u, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wrkScript sends each request for a base in another bucket: the first
// two hex digits of the UUID walk all 256 buckets (each thread from a
// random start), and done prints the figures the table needs.
const wrkScript = `
local reqs = {}
local i = 0
init = function(args)
  for b = 0, 255 do
    reqs[b] = wrk.format("GET", string.format("/api/v1/dtables/%02x264e76-0e5a-448a-9f34-580b551364ca/rows/", b))
  end
  i = math.random(0, 255)
end
request = function()
  i = (i + 1) % 256
  return reqs[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d p50=%d p99=%d p999=%d status=%d sockerr=%d\n",
    summary.requests, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.status, e.connect + e.read + e.write + e.timeout))
end
`

type wrkResult struct {
	rps              float64
	p50, p99, p999   time.Duration
	status, sockErrs int64
	upstream         int64
	requests         int64 // answered in the run
}

func (r wrkResult) errNote() string {
	s := ""
	if r.status > 0 {
		s += fmt.Sprintf(" %d non-2xx", r.status)
	}
	if r.sockErrs > 0 {
		s += fmt.Sprintf(" %d socket errors", r.sockErrs)
	}
	return s
}

var (
	rpsRe   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	benchRe = regexp.MustCompile(`BENCH requests=(\d+) p50=(\d+) p99=(\d+) p999=(\d+) status=(\d+) sockerr=(\d+)`)
)

func runWrk(wrkBin, script, u string, d time.Duration, conns, threads int) (wrkResult, error) {
	args := []string{"-t" + strconv.Itoa(threads), "-c" + strconv.Itoa(conns), "-d" + d.String(), "--latency", "-s", script, u}
	cmd := pin.Command(1, wrkBin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %v\n%s", u, err, out)
	}
	m := rpsRe.FindSubmatch(out)
	b := benchRe.FindSubmatch(out)
	if m == nil || b == nil {
		return wrkResult{}, fmt.Errorf("cannot read wrk output:\n%s", out)
	}
	n := func(i int) int64 { v, _ := strconv.ParseInt(string(b[i]), 10, 64); return v }
	var r wrkResult
	r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	r.p50, r.p99, r.p999 = time.Duration(n(2))*time.Microsecond, time.Duration(n(3))*time.Microsecond, time.Duration(n(4))*time.Microsecond
	r.status, r.sockErrs = n(5), n(6)
	r.requests = n(1)
	return r, nil
}

// median takes the median of each figure on its own (of an even number of
// rounds, the mean of the middle two).
func median(rs []wrkResult) wrkResult {
	if len(rs) == 0 {
		return wrkResult{}
	}
	pick := func(f func(wrkResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		if len(v)%2 == 0 { // an even number of rounds: the mean of the middle two
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	return wrkResult{
		rps:      pick(func(r wrkResult) float64 { return r.rps }),
		p50:      time.Duration(pick(func(r wrkResult) float64 { return float64(r.p50) })),
		p99:      time.Duration(pick(func(r wrkResult) float64 { return float64(r.p99) })),
		p999:     time.Duration(pick(func(r wrkResult) float64 { return float64(r.p999) })),
		upstream: int64(pick(func(r wrkResult) float64 { return float64(r.upstream) })),
	}
}

func fmtDur(d time.Duration) string {
	if d >= time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%d µs", d/time.Microsecond)
}

// startAssignedEtcd starts an embedded etcd with three nodes (the
// backends) and the 256 buckets spread over them in turn, for run and
// for the instruction counts.
func startAssignedEtcd(dir string, backends []*backend) (string, func(), error) {
	srv, etcdURL, err := embedetcd.Start(dir, "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, Logger: zap.NewNop()})
	if err != nil {
		srv.Close()
		return "", nil, err
	}
	defer cli.Close()
	layout, _ := schema.NewLayout("")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := &schema.Assignment{Version: 1}
	for i, b := range backends {
		id := fmt.Sprintf("n%d", i+1)
		n := schema.Node{NodeID: id, NodeURL: "http://" + id + "/", LocalNodeURL: "http://" + b.addr + "/"}
		if _, err := cli.Put(ctx, layout.NodeKey(id), string(n.Encode())); err != nil {
			srv.Close()
			return "", nil, err
		}
	}
	for b := range a.Owners {
		a.Owners[b] = fmt.Sprintf("n%d", b%len(backends)+1)
	}
	a.NextEpochs(nil)
	if _, err := cli.Put(ctx, layout.AssignmentKey(), string(a.Encode())); err != nil {
		srv.Close()
		return "", nil, err
	}
	return etcdURL, func() { srv.Close() }, nil
}
