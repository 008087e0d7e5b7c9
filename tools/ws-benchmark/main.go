// Command ws-benchmark measures issue 10 items 3 and 4 on loopback and
// prints one table:
//
//	./xcaddy.sh && go run ./tools/ws-benchmark -caddy ./caddy
//
// Parts (-parts, comma-separated; all by default):
//
//	memory       N idle WebSockets (default 20,000, fewer when the open
//	             files limit cannot hold them) through each proxy, one
//	             proxy process at a time: dtable_bucket_proxy on its
//	             defaults, plain reverse_proxy on its defaults and with
//	             stream_buffer_size 4KiB, and nginx (if installed). For
//	             each: RSS and Pss delta / streams, Go heap and stack per
//	             stream and goroutines per stream (after a forced GC, from
//	             Caddy's /metrics), and CPU while idle (utime+stime).
//	move         on the dtable_bucket_proxy with the N streams still open:
//	             single-bucket planned moves (the "moving" write closes the
//	             bucket's streams), then a whole node's buckets given to
//	             the other nodes in one write (a dead node). Per moved
//	             stream: from the proxy's table swap (its "routing table
//	             updated" log line) and from the etcd write to the client
//	             seeing the close; and how many other streams closed.
//	propagation  1,000 owner changes written to etcd; for each, the time
//	             from the write until a request for that bucket through
//	             the proxy is answered by the new owner.
//	failover     real registrar and monitor processes, stand-in servers:
//	             a clean stop of one server (SIGTERM to its registrar)
//	             and a crash of another (SIGKILL, server gone), each until
//	             all its buckets are served by their new owners; requests
//	             sent meanwhile for the moving buckets, and the proxy's
//	             hold time (caddy_dtable_hold_seconds).
//
// Everything listens on 127.0.0.1; clients connect from 127.0.0.2–9 so
// that no source address runs out of ephemeral ports. The backends are
// WebSocket echo servers in this process; only the proxy process's memory
// is measured. The open files limit is raised to its hard limit here (the
// proxies inherit it); a proxy needs two descriptors per stream, so the
// stream count is lowered to what the limit allows, and the table says so.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/embedetcd"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

type options struct {
	caddyBin    string
	streams     int
	conc        int
	idle        time.Duration
	settle      time.Duration
	moves       int
	changes     int
	ttl         time.Duration
	parts       map[string]bool
	profileDir  string
	streamNote  string
	pinNote     string
	only        string
	nofileLimit uint64
}

// row is one line of the result table.
type row struct{ part, what, result, goal string }

func main() {
	var o options
	flag.StringVar(&o.caddyBin, "caddy", "./caddy", "Caddy built by xcaddy.sh")
	flag.IntVar(&o.streams, "streams", 20000, "idle WebSockets per proxy (lowered to what RLIMIT_NOFILE allows)")
	flag.IntVar(&o.conc, "concurrency", 200, "WebSockets opened at once")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "how long CPU is measured with the streams idle")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "wait after opening the streams before measuring memory")
	flag.IntVar(&o.moves, "moves", 10, "single-bucket moves (each closes that bucket's streams)")
	flag.IntVar(&o.changes, "changes", 1000, "assignment changes for the propagation part")
	flag.DurationVar(&o.ttl, "ttl", 5*time.Second, "registrar lease TTL in the failover part (a crash is noticed after it)")
	flag.StringVar(&o.only, "only", "", "measure only the memory variants whose name contains this (e.g. nginx)")
	parts := flag.String("parts", "memory,move,propagation,failover", "parts to run, comma-separated")
	flag.StringVar(&o.profileDir, "profiles", "", "if set, save Caddy's heap and goroutine profiles (streams open) in this folder")
	noPin := flag.Bool("no-pin", false, "do not pin the proxy to CPU 0 and this program to CPU 1")
	flag.Parse()
	o.pinNote = "not pinned (-no-pin)"
	if !*noPin {
		o.pinNote, _ = pin.Self("proxy on CPU 0, this program (clients, backends, etcd) on CPU 1 (taskset)")
	}
	o.parts = map[string]bool{}
	for _, p := range strings.Split(*parts, ",") {
		switch p = strings.TrimSpace(p); p {
		case "memory", "move", "propagation", "failover":
			o.parts[p] = true
		default:
			fmt.Fprintf(os.Stderr, "ws-benchmark: -parts: unknown part %q (memory, move, propagation, failover)\n", p)
			os.Exit(2)
		}
	}
	if o.streams < 256 || o.conc < 1 || o.moves < 0 || o.changes < 0 {
		fmt.Fprintln(os.Stderr, "ws-benchmark: -streams at least 256, -concurrency at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rows, err := run(ctx, &o)
	printTable(&o, rows)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ws-benchmark: %v\n", err)
		os.Exit(1)
	}
}

// raiseNofile raises RLIMIT_NOFILE to its hard limit (children inherit
// it) and returns the limit.
func raiseNofile() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	want := max(rl.Max, 2*20000*10/9+1000)
	if rl.Cur < want {
		// Try beyond the hard limit first (root with CAP_SYS_RESOURCE).
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err != nil {
			rl.Cur = rl.Max
			syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		}
	}
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur
}

// streamsFor is how many streams fit under a descriptor limit: the proxy
// and this process each hold two per stream, and a margin of 10 % (nginx
// reset connections beyond about 94 % of its limit).
func streamsFor(limit uint64, want int) int {
	fit := int(limit) * 9 / 10 / 2
	if fit >= want {
		return want
	}
	return max(0, fit/256*256)
}

func run(ctx context.Context, o *options) ([]row, error) {
	var rows []row
	o.nofileLimit = raiseNofile()
	if n := streamsFor(o.nofileLimit, o.streams); n < o.streams {
		o.streamNote = fmt.Sprintf("%d streams, not %d: RLIMIT_NOFILE hard limit is %d and a proxy holds 2 descriptors per stream", n, o.streams, o.nofileLimit)
		fmt.Println("note:", o.streamNote)
		o.streams = n
	}
	if o.streams < 256 {
		return nil, fmt.Errorf("RLIMIT_NOFILE %d is too low for 256 streams", o.nofileLimit)
	}
	if _, err := os.Stat(o.caddyBin); err != nil {
		return nil, fmt.Errorf("%s not found: build it with ./xcaddy.sh", o.caddyBin)
	}
	dir, err := os.MkdirTemp("", "ws-benchmark-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	etcdServer, etcdURL, err := embedetcd.Start(filepath.Join(dir, "etcd"), "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer etcdServer.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, Logger: zap.NewNop(), DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer cli.Close()

	if o.parts["memory"] || o.parts["move"] || o.parts["propagation"] {
		r, err := runProxyParts(ctx, o, dir, cli, etcdURL)
		rows = append(rows, r...)
		if err != nil {
			return rows, err
		}
	}
	if o.parts["failover"] {
		r, err := runFailover(ctx, o, dir, cli, etcdURL)
		rows = append(rows, r...)
		if err != nil {
			return rows, err
		}
	}
	return rows, nil
}

// Ports on 127.0.0.1: the proxies' listeners and Caddy admin endpoints.
const (
	portDtable          = 7301
	portRP              = 7302
	portRP4K            = 7303
	portNginx           = 7304
	portFailover        = 7305
	portDtableCaddyCopy = 7306
	portDtable4K        = 7307
	adminBase           = 7311 // + variant index
)

// runProxyParts runs the memory, move and propagation parts against four
// echo backends (n1..n4), the 256 buckets spread over them.
func runProxyParts(ctx context.Context, o *options, dir string, cli *clientv3.Client, etcdURL string) ([]row, error) {
	var rows []row
	var backends []*echoBackend
	for i := 1; i <= 4; i++ {
		b, err := startEchoBackend(fmt.Sprintf("n%d", i))
		if err != nil {
			return nil, err
		}
		defer b.close()
		backends = append(backends, b)
	}
	aw, err := newAssignWriter(ctx, cli, "", backends)
	if err != nil {
		return nil, err
	}
	var ups []string
	for _, b := range backends {
		ups = append(ups, b.addr)
	}
	type variant struct {
		name, site string
		port       int
		level      string
		env        []string
	}
	dtableSite := func(port int, extra string) string {
		return fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tdtable_bucket_proxy {\n\t\tetcd %s\n%s\t}\n}\n", port, etcdURL, extra)
	}
	rp := func(port int, extra string) string {
		return fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\treverse_proxy %s {\n\t\tlb_policy round_robin\n%s\t}\n}\n", port, strings.Join(ups, " "), extra)
	}
	variants := []variant{
		{"dtable_bucket_proxy defaults", dtableSite(portDtable, ""), portDtable, "INFO", nil},
		{"dtable_bucket_proxy stream_buffer_size 4KiB", dtableSite(portDtable4K, "\t\tstream_buffer_size 4KiB\n"), portDtable4K, "ERROR", nil},
		{"dtable_bucket_proxy, reverse_proxy's own copy (DTABLE_STREAM_COPY=caddy; the copy before this change)", dtableSite(portDtableCaddyCopy, ""), portDtableCaddyCopy, "ERROR", []string{"DTABLE_STREAM_COPY=caddy"}},
		{"reverse_proxy defaults", rp(portRP, ""), portRP, "ERROR", nil},
		{"reverse_proxy stream_buffer_size 4KiB", rp(portRP4K, "\t\tstream_buffer_size 4KiB\n"), portRP4K, "ERROR", nil},
	}
	if !o.parts["memory"] {
		variants = variants[:1]
	}
	for i, v := range variants {
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
		if o.only != "" && !strings.Contains(v.name, o.only) {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", v.port)
		p, err := startCaddy(o.caddyBin, dir, fmt.Sprintf("caddy-%d", i), fmt.Sprintf("127.0.0.1:%d", adminBase+i), addr, v.level, v.site, v.env)
		if err != nil {
			return rows, err
		}
		r, err := func() ([]row, error) {
			defer p.stop()
			var rows []row
			clients, r, err := measureMemory(ctx, o, p, v.name, i == 0)
			if o.parts["memory"] {
				rows = append(rows, r)
			}
			if err != nil {
				return rows, err
			}
			if i == 0 && o.parts["move"] {
				r, err := runMoves(ctx, o, p, aw, clients)
				rows = append(rows, r...)
				if err != nil {
					closeClients(clients)
					return rows, err
				}
			}
			closeClients(clients)
			if i == 0 && o.parts["propagation"] {
				r, err := runPropagation(ctx, o, p, aw)
				rows = append(rows, r...)
				if err != nil {
					return rows, err
				}
			}
			return rows, nil
		}()
		rows = append(rows, r...)
		if err != nil {
			return rows, err
		}
	}
	if o.parts["memory"] && (o.only == "" || strings.Contains("nginx", o.only)) {
		if bin, err := exec.LookPath("nginx"); err != nil {
			rows = append(rows, row{"WS memory", "nginx", "skipped: not installed (apt-get install nginx)", ""})
		} else {
			addr := fmt.Sprintf("127.0.0.1:%d", portNginx)
			p, err := startNginx(bin, dir, addr, backends, int(o.nofileLimit))
			if err != nil {
				rows = append(rows, row{"WS memory", "nginx", "skipped: " + err.Error(), ""})
			} else {
				clients, r, err := measureMemory(ctx, o, p, "nginx "+nginxVersion(bin)+", 1 worker", false)
				closeClients(clients)
				p.stop()
				if err != nil {
					log, _ := os.ReadFile(filepath.Join(dir, "nginx", "error.log"))
					r.result += "; nginx error.log: " + strings.Join(strings.Fields(lastLines(string(log), 3)), " ")
				}
				rows = append(rows, r)
				if err != nil {
					return rows, err
				}
			}
		}
	}
	return rows, nil
}

func nginxVersion(bin string) string {
	out, _ := exec.Command(bin, "-v").CombinedOutput()
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: nginx/"))
}

func printTable(o *options, rows []row) {
	caddyVersion := "?"
	if out, err := exec.Command(o.caddyBin, "version").Output(); err == nil {
		caddyVersion = strings.Fields(string(out) + " ?")[0]
	}
	fmt.Printf("\n%s, %d cores (%s), Go %s, Caddy %s, RLIMIT_NOFILE %d\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		pin.MachineCPUs(), o.pinNote, strings.TrimPrefix(runtime.Version(), "go"), caddyVersion, o.nofileLimit)
	fmt.Printf("reproduce: ./xcaddy.sh && go run ./tools/ws-benchmark %s\n", strings.Join(os.Args[1:], " "))
	if o.streamNote != "" {
		fmt.Println("note:", o.streamNote)
	}
	fmt.Println()
	fmt.Println("| part | case | result | goal |")
	fmt.Println("|---|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s | %s |\n", r.part, r.what, r.result, r.goal)
	}
}

// newHTTPClient is a keep-alive client for requests through a proxy.
func newHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second}, Timeout: 10 * time.Second}
}

// assignWriter writes the assignment as the monitor would: a new version
// each time, epochs by NextEpochs.
type assignWriter struct {
	cli    *clientv3.Client
	layout schema.Layout
	nodes  []string
	cur    *schema.Assignment
	acked  time.Time // when etcd acknowledged the last write
}

// newAssignWriter registers the backends as nodes n1..nk under prefix and
// writes a first assignment spreading the buckets over them in turn.
func newAssignWriter(ctx context.Context, cli *clientv3.Client, prefix string, backends []*echoBackend) (*assignWriter, error) {
	layout, err := schema.NewLayout(prefix)
	if err != nil {
		return nil, err
	}
	aw := &assignWriter{cli: cli, layout: layout}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, b := range backends {
		n := schema.Node{NodeID: b.name, NodeURL: "http://" + b.name + ".example.com/", LocalNodeURL: "http://" + b.addr + "/"}
		if _, err := cli.Put(cctx, layout.NodeKey(b.name), string(n.Encode())); err != nil {
			return nil, err
		}
		aw.nodes = append(aw.nodes, b.name)
	}
	a := &schema.Assignment{}
	for b := range a.Owners {
		a.Owners[b] = aw.nodes[b%len(aw.nodes)]
	}
	aw.cur = &schema.Assignment{}
	_, _, err = aw.write(ctx, func(n *schema.Assignment) { n.Owners = a.Owners })
	return aw, err
}

// write applies change to a copy of the current assignment with the next
// version and writes it; it returns the version and when the write began.
func (aw *assignWriter) write(ctx context.Context, change func(*schema.Assignment)) (int64, time.Time, error) {
	next := aw.cur.Clone()
	next.Version = aw.cur.Version + 1
	change(next)
	if aw.cur.Version == 0 {
		next.NextEpochs(nil)
	} else {
		next.NextEpochs(aw.cur)
	}
	if err := next.Validate(); err != nil {
		return 0, time.Time{}, fmt.Errorf("assignment %d: %w", next.Version, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := aw.cli.Put(cctx, aw.layout.AssignmentKey(), string(next.Encode())); err != nil {
		return 0, t0, err
	}
	aw.acked = time.Now()
	aw.cur = next
	return next.Version, t0, nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
