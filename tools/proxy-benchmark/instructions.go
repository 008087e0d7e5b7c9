package main

// The -instructions mode: instructions per request, counted by valgrind's
// callgrind, which (unlike req/s on a shared 2-core VM) comes out the same
// run after run:
//
//	./xcaddy.sh && go run ./tools/proxy-benchmark -caddy ./caddy -instructions
//
// Each variant is a process of its own (Caddy with one site, or this
// program's Go proxy re-executed with -serve-goproxy) under
// valgrind --tool=callgrind --instr-atstart=no, so startup is neither
// instrumented nor counted. Once it answers, callgrind_control switches
// instrumentation on, a Go client here sends the warm-up requests, zeroes
// the counters (callgrind_control -z), sends the measured requests and dumps
// (callgrind_control -d): that dump's total over the measured requests is
// the figure. Every variant gets the same request sequence (request k is for
// a base in bucket k mod 256, as the wrk script does) over the same fixed
// number of keep-alive connections, against the same three backends and
// etcd (in this process, not instrumented). The proxies run with
// GOMAXPROCS=1 (valgrind runs one thread at a time anyway),
// GODEBUG=asyncpreemptoff=1 (no SIGURG preemption signals), and each set
// of runs with one GOGC (-instr-gogc, default off then 100): with GOGC=off
// there is no GC and counts repeat within about 0.2%; with GOGC=100 the
// GC's share varies by about 1% from run to run.
//
// Callgrind's own split by function follows its call-stack tracking,
// which Go's goroutine switches confuse; so the dumps are made with
// --dump-instr=yes and the tool sums each instruction's cost into the
// function whose symbol covers its address (the self cost), for the
// first GOGC's first repetition of the Caddy pair. That needs ./caddy's
// symbol table, which xcaddy strips unless XCADDY_GO_BUILD_FLAGS is set.

import (
	"bufio"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type instrOptions struct {
	enabled         bool
	warmup, reqs    int
	conns, reps     int
	all             bool   // also plain Caddy defaults and the Go proxy
	gogc            string // GOGC of the proxies
	keepDir         string // where to keep the callgrind dumps, or ""
	serveGoProxy    string // hidden: serve the Go proxy on this address
	goProxyBackends string // hidden: its backends, comma-separated
}

func instrFlags() *instrOptions {
	o := &instrOptions{}
	flag.BoolVar(&o.enabled, "instructions", false, "instead of wrk: count instructions per request of each proxy under valgrind --tool=callgrind")
	flag.IntVar(&o.warmup, "instr-warmup", 500, "-instructions: warm-up requests per variant (not counted)")
	flag.IntVar(&o.reqs, "instr-requests", 2000, "-instructions: measured requests per variant")
	flag.IntVar(&o.conns, "instr-conns", 4, "-instructions: client connections (keep-alive)")
	flag.IntVar(&o.reps, "instr-reps", 2, "-instructions: repetitions of the whole set of variants")
	flag.BoolVar(&o.all, "instr-all", true, "-instructions: also plain Caddy defaults and Go httputil.ReverseProxy")
	flag.StringVar(&o.gogc, "instr-gogc", "off,100", "-instructions: GOGC values of the proxies, each a full set of runs (off: no GC, so no GC cost and little spread)")
	flag.StringVar(&o.keepDir, "callgrind-dir", "", "-instructions: keep the callgrind dumps here (for callgrind_annotate)")
	flag.StringVar(&o.serveGoProxy, "serve-goproxy", "", "internal: serve the Go proxy on this address")
	flag.StringVar(&o.goProxyBackends, "goproxy-backends", "", "internal: the Go proxy's backends")
	return o
}

// serveGoProxy is the Go httputil.ReverseProxy variant as a process of its
// own, so that valgrind can count it alone.
func serveGoProxy(addr string, backends []string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxy-benchmark: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, http.Serve(l, newGoProxy(backends)))
	os.Exit(1)
}

// instrAddr is where each variant listens in turn (one at a time).
const instrAddr = "127.0.0.1:7121"

type instrVariant struct {
	name, slug string
	site       string // Caddyfile site body; "" for the Go proxy
}

func runInstructions(caddyBin string, o *instrOptions) error {
	began := time.Now()
	if o.reqs < 1 || o.warmup < 0 || o.conns < 1 || o.reps < 1 || o.reqs > 1_000_000 || o.warmup > 1_000_000 || o.conns > 256 || o.reps > 20 {
		return fmt.Errorf("-instr-requests, -instr-warmup, -instr-conns, -instr-reps out of range")
	}
	valgrind, err := exec.LookPath("valgrind")
	if err != nil {
		return fmt.Errorf("valgrind not found: apt-get install valgrind")
	}
	control, err := exec.LookPath("callgrind_control")
	if err != nil {
		return fmt.Errorf("callgrind_control not found (it comes with valgrind)")
	}
	if _, err := os.Stat(caddyBin); err != nil {
		return fmt.Errorf("%s not found: build it with ./xcaddy.sh", caddyBin)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, _ := os.MkdirTemp("", "proxy-benchmark-instr-")
	defer os.RemoveAll(dir)
	dumps := filepath.Join(dir, "callgrind")
	if o.keepDir != "" {
		dumps = o.keepDir
	}
	if err := os.MkdirAll(dumps, 0o755); err != nil {
		return err
	}

	var backends []*backend
	var addrs []string
	for i := 0; i < 3; i++ {
		b, err := startBackend()
		if err != nil {
			return err
		}
		backends = append(backends, b)
		addrs = append(addrs, b.addr)
	}
	etcdURL, stopEtcd, err := startAssignedEtcd(filepath.Join(dir, "etcd"), backends)
	if err != nil {
		return err
	}
	defer stopEtcd()

	ups := strings.Join(addrs, " ")
	variants := []instrVariant{
		{name: "Caddy reverse_proxy, directive's transport", slug: "caddy-directive-transport", site: fmt.Sprintf(`reverse_proxy %s {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns_per_host %d
		}
	}`, ups, directiveIdleConnsPerHost)},
		{name: "dtable_bucket_proxy defaults", slug: "dtable-defaults", site: fmt.Sprintf(`dtable_bucket_proxy {
		etcd %s
	}`, etcdURL)},
	}
	if o.all {
		variants = append(variants,
			instrVariant{name: "Caddy reverse_proxy defaults", slug: "caddy-defaults", site: fmt.Sprintf(`reverse_proxy %s {
		lb_policy round_robin
	}`, ups)},
			instrVariant{name: "Go httputil.ReverseProxy", slug: "go-reverseproxy"},
		)
	}
	const plainSame, dtable = 0, 1

	vgVersion := "?"
	if out, err := exec.Command(valgrind, "--version").Output(); err == nil {
		vgVersion = strings.TrimSpace(string(out))
	}
	gogcs := strings.Split(o.gogc, ",")
	fmt.Printf("instructions per request: %s --tool=callgrind --instr-atstart=no, proxies with GOMAXPROCS=1 GODEBUG=asyncpreemptoff=1, GOGC %s;\n",
		vgVersion, strings.Join(gogcs, ", then "))
	fmt.Printf("per variant a fresh process, %d warm-up then %d measured requests (bucket k mod 256) over %d keep-alive connections\n",
		o.warmup, o.reqs, o.conns)

	// counts[g][variant][rep]: instructions per request.
	counts := make([][][]float64, len(gogcs))
	for g, gogc := range gogcs {
		gogc = strings.TrimSpace(gogc)
		env := append(os.Environ(), "GOMAXPROCS=1", "GODEBUG=asyncpreemptoff=1", "GOGC="+gogc)
		counts[g] = make([][]float64, len(variants))
		for r := 0; r < o.reps; r++ {
			for i, v := range variants {
				t0 := time.Now()
				tag := fmt.Sprintf("%s-gogc%s-rep%d", v.slug, gogc, r+1)
				total, err := countVariant(v, tag, o, caddyBin, self, valgrind, control, dumps, dir, addrs, env)
				if err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				per := float64(total) / float64(o.reqs)
				counts[g][i] = append(counts[g][i], per)
				fmt.Printf("GOGC=%-4s rep %d  %-44s %10.0f instructions/request  (%d over %d requests; %v)\n",
					gogc, r+1, v.name, per, total, o.reqs, time.Since(t0).Round(100*time.Millisecond))
			}
		}
	}

	caddyVersion := "?"
	if out, err := exec.Command(caddyBin, "version").Output(); err == nil {
		caddyVersion = strings.Fields(string(out) + " ?")[0]
	}
	fmt.Printf("\n%s, Go %s, Caddy %s, %s; the whole run took %v\n",
		time.Now().UTC().Format("2006-01-02"), strings.TrimPrefix(runtime.Version(), "go"), caddyVersion, vgVersion, time.Since(began).Round(time.Second))
	fmt.Printf("reproduce: ./xcaddy.sh && go run ./tools/proxy-benchmark %s\n\n", strings.Join(os.Args[1:], " "))
	hdr, sep := "| variant | GOGC |", "|---|---|"
	for r := 0; r < o.reps; r++ {
		hdr += fmt.Sprintf(" instructions/request, rep %d |", r+1)
		sep += "---:|"
	}
	fmt.Println(hdr + " spread | × Caddy, directive's transport, per rep |")
	fmt.Println(sep + "---:|---:|")
	for g, gogc := range gogcs {
		for i, v := range variants {
			line := fmt.Sprintf("| %s | %s |", v.name, strings.TrimSpace(gogc))
			lo, hi := counts[g][i][0], counts[g][i][0]
			var rs []string
			for r, c := range counts[g][i] {
				line += fmt.Sprintf(" %.0f |", c)
				lo, hi = min(lo, c), max(hi, c)
				rs = append(rs, fmt.Sprintf("%.3f", c/counts[g][plainSame][r]))
			}
			fmt.Printf("%s %.2f%% | %s |\n", line, 100*(hi-lo)/lo, strings.Join(rs, ", "))
		}
	}
	fmt.Println("\nspread: (max−min)/min over the reps, the run-to-run noise of the count.")
	for g, gogc := range gogcs {
		var ratios []string
		for r := 0; r < o.reps; r++ {
			ratios = append(ratios, fmt.Sprintf("%.3f", counts[g][dtable][r]/counts[g][plainSame][r]))
		}
		fmt.Printf("GOGC=%s: dtable_bucket_proxy defaults / Caddy reverse_proxy with the directive's transport: %s (per rep)\n",
			strings.TrimSpace(gogc), strings.Join(ratios, ", "))
	}

	// Where the difference goes: self cost per function, by instruction
	// address (callgrind's own per-function split follows its call-stack
	// tracking, which Go's goroutine switches confuse).
	g0 := strings.TrimSpace(gogcs[0])
	a := filepath.Join(dumps, fmt.Sprintf("%s-gogc%s-rep1.out.1", variants[plainSame].slug, g0))
	b := filepath.Join(dumps, fmt.Sprintf("%s-gogc%s-rep1.out.1", variants[dtable].slug, g0))
	if err := printSelfDiff(caddyBin, a, b, float64(o.reqs), 25); err != nil {
		fmt.Printf("\nno per-function breakdown: %v\n", err)
	}
	if o.keepDir != "" {
		fmt.Printf("\ncallgrind dumps (with --dump-instr=yes) in %s\n", o.keepDir)
	}
	return nil
}

// countVariant starts one variant under callgrind and returns the
// instructions it executed over the measured requests.
func countVariant(v instrVariant, tag string, o *instrOptions, caddyBin, self, valgrind, control, dumps, dir string, backends []string, env []string) (int64, error) {
	out := filepath.Join(dumps, tag+".out")
	matches, _ := filepath.Glob(out + "*")
	for _, m := range matches {
		os.Remove(m)
	}
	args := []string{"--tool=callgrind", "--instr-atstart=no", "--dump-instr=yes", "--callgrind-out-file=" + out}
	if v.site == "" {
		args = append(args, self, "-serve-goproxy", instrAddr, "-goproxy-backends", strings.Join(backends, ","))
	} else {
		cf := filepath.Join(dir, v.slug+".Caddyfile")
		conf := fmt.Sprintf(`{
	admin off
	auto_https off
	log {
		level ERROR
	}
}
:%s {
	bind 127.0.0.1
	%s
}
`, strings.TrimPrefix(instrAddr, "127.0.0.1:"), v.site)
		if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
			return 0, err
		}
		args = append(args, caddyBin, "run", "--config", cf)
	}
	logFile := filepath.Join(dir, v.slug+".valgrind.log")
	lf, err := os.Create(logFile)
	if err != nil {
		return 0, err
	}
	defer lf.Close()
	cmd := exec.Command(valgrind, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	fail := func(err error) (int64, error) {
		tail, _ := os.ReadFile(logFile)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return 0, fmt.Errorf("%w\nvalgrind log (end):\n%s", err, tail)
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	base := "http://" + instrAddr
	if err := waitUp(base+bucketPath(0), exited, 120*time.Second); err != nil {
		return fail(err)
	}
	ctl := func(a ...string) error {
		out, err := exec.Command(control, append(a, pid)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "OK") {
			return fmt.Errorf("callgrind_control %s: %v\n%s", strings.Join(a, " "), err, out)
		}
		return nil
	}
	if err := ctl("-i", "on"); err != nil {
		return fail(err)
	}
	client := &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: o.conns,
			MaxConnsPerHost:     o.conns,
			DisableCompression:  true,
		},
	}
	defer client.CloseIdleConnections()
	if err := sendRequests(client, base, o.warmup, o.conns); err != nil {
		return fail(fmt.Errorf("warm-up: %w", err))
	}
	if err := ctl("-z"); err != nil {
		return fail(err)
	}
	if err := sendRequests(client, base, o.reqs, o.conns); err != nil {
		return fail(fmt.Errorf("measured requests: %w", err))
	}
	if err := ctl("-d", "measured"); err != nil {
		return fail(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if total, ok := callgrindTotal(out + ".1"); ok {
			return total, nil
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("no callgrind dump %s.1", out))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bucketPath is the path of request k: a base in bucket k mod 256, as the
// wrk script sends.
func bucketPath(k int) string {
	return fmt.Sprintf("/api/v1/dtables/%02x264e76-0e5a-448a-9f34-580b551364ca/rows/", k%256)
}

// sendRequests sends requests 0..n-1 (request k for bucket k mod 256) over
// conns connections, each connection taking the next request in turn.
func sendRequests(client *http.Client, base string, n, conns int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= n {
					return
				}
				resp, err := client.Get(base + bucketPath(k))
				if err != nil {
					errs <- err
					next.Store(int64(n)) // stop the others
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("request %d: status %d", k, resp.StatusCode)
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// callgrindTotal reads the "totals:" line of a callgrind dump, its last
// (so a dump still being written has none).
func callgrindTotal(file string) (int64, bool) {
	f, err := os.Open(file)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "totals:"); ok {
			if n, err := strconv.ParseInt(strings.Fields(rest + " x")[0], 10, 64); err == nil {
				return n, true
			}
		}
	}
	return 0, false
}

// waitUp waits until u answers 200, the process has exited, or the timeout.
func waitUp(u string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 10 * time.Second}
	for {
		select {
		case <-exited:
			return fmt.Errorf("exited before answering %s", u)
		default:
		}
		resp, err := c.Get(u)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				c.CloseIdleConnections()
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer 200 within %v: %v", u, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// printSelfDiff prints, per request, the self cost (instructions executed
// in the function's own code) of the packages and functions whose cost
// differs most between dump a and dump b of binary bin (made with
// --dump-instr=yes; bin needs its symbol table: xcaddy strips it unless
// XCADDY_GO_BUILD_FLAGS is set).
func printSelfDiff(bin, a, b string, reqs float64, top int) error {
	syms, err := funcSymbols(bin)
	if err != nil {
		return err
	}
	ca, err := selfCost(a, syms)
	if err != nil {
		return err
	}
	cb, err := selfCost(b, syms)
	if err != nil {
		return err
	}
	pa, pb := map[string]int64{}, map[string]int64{}
	for f, c := range ca {
		pa[goPackage(f)] += c
	}
	for f, c := range cb {
		pb[goPackage(f)] += c
	}
	show := func(title string, x, y map[string]int64, n int) {
		keys := map[string]bool{}
		for k := range x {
			keys[k] = true
		}
		for k := range y {
			keys[k] = true
		}
		var ks []string
		for k := range keys {
			ks = append(ks, k)
		}
		abs := func(v int64) int64 { return max(v, -v) }
		sort.Slice(ks, func(i, j int) bool {
			di, dj := abs(y[ks[i]]-x[ks[i]]), abs(y[ks[j]]-x[ks[j]])
			if di != dj {
				return di > dj
			}
			return ks[i] < ks[j]
		})
		fmt.Printf("\n%s\n\n| %s | plain Caddy | dtable_bucket_proxy | difference |\n|---|---:|---:|---:|\n", title, strings.Fields(title)[0])
		for _, k := range ks[:min(n, len(ks))] {
			fmt.Printf("| %s | %.0f | %.0f | %+.0f |\n", k, float64(x[k])/reqs, float64(y[k])/reqs, float64(y[k]-x[k])/reqs)
		}
	}
	fmt.Printf("\nself cost per request, by instruction address, of %s (plain Caddy, directive's transport) and %s (dtable_bucket_proxy defaults):\n",
		filepath.Base(a), filepath.Base(b))
	show("package (self instructions/request, the 15 that differ most)", pa, pb, 15)
	show("function (self instructions/request, the "+strconv.Itoa(top)+" that differ most)", ca, cb, top)
	return nil
}

type funcSym struct {
	addr, end uint64
	name      string
}

// funcSymbols reads the function symbols of an ELF binary, sorted by address.
func funcSymbols(bin string) ([]funcSym, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ss, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%s has no symbol table (build it with XCADDY_GO_BUILD_FLAGS=\"-trimpath -tags nobadger,nomysql,nopgx\" ./xcaddy.sh): %v", bin, err)
	}
	var out []funcSym
	for _, s := range ss {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
			out = append(out, funcSym{s.Value, s.Value + s.Size, s.Name})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has no function symbols", bin)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].addr < out[j].addr })
	return out, nil
}

// selfCost sums the Ir of each instruction in a callgrind dump made with
// --dump-instr=yes (positions: instr line) by the function whose symbol
// covers its address; the costs of call lines (inclusive) are skipped.
func selfCost(file string, syms []funcSym) (map[string]int64, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var last uint64
	positions, afterCall := false, false
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "positions:") {
			positions = strings.Fields(line)[1] == "instr"
			continue
		}
		if strings.HasPrefix(line, "calls=") {
			afterCall = true
			continue
		}
		c := line[0]
		if !(c == '+' || c == '-' || c == '*' || (c >= '0' && c <= '9')) {
			continue // ob=, fn=, totals: and the like
		}
		fs := strings.Fields(line)
		if len(fs) < 3 {
			continue
		}
		switch p := fs[0]; {
		case p == "*":
		case p[0] == '+' || p[0] == '-':
			d, err := strconv.ParseInt(p[1:], 0, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: %q", file, line)
			}
			if p[0] == '-' {
				d = -d
			}
			last = uint64(int64(last) + d)
		default:
			v, err := strconv.ParseUint(p, 0, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: %q", file, line)
			}
			last = v
		}
		if afterCall {
			afterCall = false
			continue
		}
		ir, err := strconv.ParseInt(fs[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q", file, line)
		}
		i := sort.Search(len(syms), func(i int) bool { return syms[i].addr > last }) - 1
		name := "[outside the binary]"
		if i >= 0 && last < max(syms[i].end, syms[i].addr+1) {
			name = syms[i].name
		}
		out[name] += ir
	}
	if !positions {
		return nil, fmt.Errorf("%s: not dumped with --dump-instr=yes", file)
	}
	return out, sc.Err()
}

// goPackage is the package of a Go function symbol, e.g. net/http of
// net/http.(*Transport).roundTrip.
func goPackage(fn string) string {
	if i := strings.IndexByte(fn, '['); i >= 0 {
		fn = fn[:i]
	}
	slash := strings.LastIndexByte(fn, '/') + 1
	if i := strings.IndexByte(fn[slash:], '.'); i >= 0 {
		return fn[:slash+i]
	}
	return fn
}
