// Command local-cluster runs a whole dtable-server cluster on this machine,
// with no external service: an embedded etcd, fake dtable-servers (see
// internal/fakeserver), one registrar process per server, two monitor
// processes, and the proxy node (Caddy with Caddyfile.example: the API
// proxy on :5550, the operator site on :5555, Caddy's admin on :2019).
//
//	go run ./tools/local-cluster             run until Ctrl-C
//	go run ./tools/local-cluster -smoke      check it end to end, then exit
//	go run ./tools/local-cluster -caddy ./caddy -smoke   use the xcaddy-built binary
//
// Run it from the repository root: it builds ./registrar and ./monitor.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.etcd.io/etcd/server/v3/embed"

	_ "github.com/dtablecluster/dtable-router/caddymodule"
	"github.com/dtablecluster/dtable-router/internal/embedetcd"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
)

func main() {
	nodes := flag.Int("nodes", 3, "number of fake dtable-servers")
	etcdPort := flag.Int("etcd-port", 2379, "client port of the embedded etcd (on 127.0.0.1)")
	caddyBin := flag.String("caddy", "", "run this Caddy binary (e.g. ./caddy from xcaddy.sh) instead of Caddy in-process")
	caddyfile := flag.String("caddyfile", "Caddyfile.example", "the proxy node's Caddyfile")
	smoke := flag.Bool("smoke", false, "check the cluster end to end, print the result and exit (0: all good)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	lc := &localCluster{nodes: *nodes, dir: mustTempDir()}
	defer os.RemoveAll(lc.dir)
	err := lc.start(ctx, *etcdPort, *caddyBin, *caddyfile)
	if err == nil {
		if *smoke {
			err = lc.smoke(ctx)
		} else {
			lc.printHelp()
			<-ctx.Done()
		}
	}
	lc.stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "local-cluster: %v\n", err)
		os.Exit(1)
	}
}

func mustTempDir() string {
	d, err := os.MkdirTemp("", "local-cluster-")
	if err != nil {
		panic(err)
	}
	return d
}

type localCluster struct {
	nodes    int
	dir      string
	etcd     *embed.Etcd
	endpoint string
	servers  []*http.Server
	procs    map[string]*exec.Cmd
	bins     map[string]string
	local    map[string]string // node id -> local_node_url
	inCaddy  bool
}

func (lc *localCluster) logf(format string, args ...any) {
	fmt.Printf("[local-cluster] "+format+"\n", args...)
}

func (lc *localCluster) start(ctx context.Context, etcdPort int, caddyBin, caddyfile string) error {
	lc.procs = map[string]*exec.Cmd{}
	if err := lc.startEtcd(etcdPort); err != nil {
		return err
	}
	if err := lc.build(); err != nil {
		return err
	}
	for i := 1; i <= lc.nodes; i++ {
		name := fmt.Sprintf("dtable-server-%02d", i)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		// Strict stand-ins: they follow the server contract (hold,
		// release with a save, fence) like a real dtable-server must.
		srv := &http.Server{Handler: fakeserver.New(fakeserver.Config{Name: name, Strict: true, SaveDelay: 100 * time.Millisecond})}
		go srv.Serve(l)
		lc.servers = append(lc.servers, srv)
		local := "http://" + l.Addr().String() + "/"
		if err := lc.startRegistrar(name, local); err != nil {
			return err
		}
	}
	for _, id := range []string{"monitor-a", "monitor-b"} {
		if err := lc.run(id, lc.bins["monitor"], "run", "-etcd", lc.endpoint, "-id", id, "-settle", "2s", "-session-ttl", "3s"); err != nil {
			return err
		}
	}
	os.Setenv("ETCD_ENDPOINTS", lc.endpoint)
	if caddyBin != "" {
		return lc.run("caddy", caddyBin, "run", "--config", caddyfile)
	}
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(mustRead(caddyfile), map[string]any{"filename": caddyfile})
	if err != nil {
		return fmt.Errorf("adapt %s: %w", caddyfile, err)
	}
	for _, w := range warnings {
		lc.logf("caddyfile warning: %s", w.Message)
	}
	if err := caddy.Load(cfg, true); err != nil {
		return fmt.Errorf("start caddy: %w", err)
	}
	lc.inCaddy = true
	lc.logf("caddy running in-process with %s", caddyfile)
	return nil
}

func mustRead(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "local-cluster: %v (run from the repository root)\n", err)
		os.Exit(2)
	}
	return b
}

func (lc *localCluster) startEtcd(port int) error {
	dir := filepath.Join(lc.dir, "etcd")
	e, endpoint, err := embedetcd.Start(dir, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	lc.etcd, lc.endpoint = e, endpoint
	lc.logf("etcd on %s (data in %s)", lc.endpoint, dir)
	return nil
}

// build compiles the registrar and the monitor, as an operator would.
func (lc *localCluster) build() error {
	lc.bins = map[string]string{}
	for _, prog := range []string{"registrar", "monitor"} {
		bin := filepath.Join(lc.dir, prog)
		out, err := exec.Command("go", "build", "-o", bin, "./"+prog).CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build ./%s: %v\n%s", prog, err, out)
		}
		lc.bins[prog] = bin
	}
	return nil
}

func (lc *localCluster) startRegistrar(name, local string) error {
	if lc.local == nil {
		lc.local = map[string]string{}
	}
	lc.local[name] = local
	return lc.run(name, lc.bins["registrar"], "-etcd", lc.endpoint, "-node-id", name,
		"-node-url", "https://"+name+".example.com/", "-local-node-url", local, "-ttl", "10s",
		"-notify-url", strings.TrimSuffix(local, "/")+fakeserver.NotifyPath)
}

// run starts a program whose output goes to a log file in lc.dir.
func (lc *localCluster) run(name, bin string, args ...string) error {
	logFile, err := os.Create(filepath.Join(lc.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	lc.procs[name] = cmd
	lc.logf("started %s (pid %d, log %s)", name, cmd.Process.Pid, logFile.Name())
	return nil
}

// signal sends sig to a program and waits for it to exit.
func (lc *localCluster) signal(name string, sig os.Signal) {
	cmd := lc.procs[name]
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	delete(lc.procs, name)
}

func (lc *localCluster) stop() {
	if lc.inCaddy {
		caddy.Stop()
	}
	for name := range lc.procs {
		lc.signal(name, syscall.SIGTERM)
	}
	for _, s := range lc.servers {
		s.Close()
	}
	if lc.etcd != nil {
		lc.etcd.Close()
	}
}

func (lc *localCluster) printHelp() {
	u := "5c264e76-0e5a-448a-9f34-580b551364ca"
	fmt.Printf(`
Local cluster running (Ctrl-C to stop). Logs: %s
  etcd:            %s   (prefix /dtable-cluster)
  API proxy:       http://127.0.0.1:5550   e.g. curl http://127.0.0.1:5550/api/v1/dtables/%s/rows/
  status page:     http://127.0.0.1:5555/  (open it in a browser: live buckets, nodes, moves)
  operator site:   http://127.0.0.1:5555   e.g. curl http://127.0.0.1:5555/lookup/%s
                                                curl -X POST http://127.0.0.1:5555/rebalance/
  caddy admin:     http://127.0.0.1:2019/dtable-cluster/status, /metrics
  monitor CLI:     go run ./monitor status -etcd %s
`, lc.dir, lc.endpoint, u, u, lc.endpoint)
}
