package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dtablecluster/dtable-router/internal/cpupin"
)

// proxyProc is a proxy running as its own process (Caddy or nginx), so
// that its memory and CPU are its own.
type proxyProc struct {
	name   string
	cmd    *exec.Cmd
	addr   string // where clients connect (127.0.0.1:port)
	admin  string // Caddy's admin address; "" for nginx
	exited chan struct{}

	mu     sync.Mutex
	tables map[int64]time.Time // Caddy: "routing table updated" log time per version
	cond   *sync.Cond
	logf   *os.File
}

// pids returns the process and its children (nginx's workers).
func (p *proxyProc) pids() []int {
	root := p.cmd.Process.Pid
	out := []int{root}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		f, err := os.Open(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		ppid := procStatusKB(f, "PPid")
		f.Close()
		if ppid == int64(root) {
			out = append(out, pid)
		}
	}
	return out
}

// memKB sums VmRSS and Pss (smaps_rollup) over the proxy's processes.
func (p *proxyProc) memKB() (rss, pss int64) {
	for _, pid := range p.pids() {
		if f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
			rss += max(0, procStatusKB(f, "VmRSS"))
			f.Close()
		}
		if f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
			pss += max(0, procStatusKB(f, "Pss"))
			f.Close()
		}
	}
	return rss, pss
}

// cpuTicks sums utime+stime (1/100 s) over the proxy's processes.
func (p *proxyProc) cpuTicks() int64 {
	var t int64
	for _, pid := range p.pids() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if v, err := procStatTicks(string(b)); err == nil {
			t += v
		}
	}
	return t
}

func (p *proxyProc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	sig := syscall.SIGTERM
	if p.admin == "" {
		sig = syscall.SIGQUIT // nginx: graceful
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
	if p.logf != nil {
		p.logf.Close()
	}
}

// waitTable waits until Caddy has logged the routing table of version v
// and returns when it did.
func (p *proxyProc) waitTable(v int64, timeout time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() })
	defer timer.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if ts, ok := p.tables[v]; ok {
			return ts, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		p.cond.Wait()
	}
}

// pin runs this program (the load generator, backends and etcd) on CPU
// 1, so they do not take the proxy's CPU; the proxies run on CPU 0
// (taskset execs them, so the pid is theirs).
var pin = cpupin.Pin{Env: "WS_BENCHMARK_PINNED", CPU: 1}

func proxyCommand(bin string, args ...string) *exec.Cmd { return pin.Command(0, bin, args...) }

// startCaddy runs bin with a Caddyfile whose global options block sets the
// admin address; body is the sites. Its log (JSON) goes to a file in dir,
// and the "routing table updated" lines are noted.
func startCaddy(bin, dir, name, admin, addr, logLevel, body string, env []string) (*proxyProc, error) {
	cf := filepath.Join(dir, name+".Caddyfile")
	conf := fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	log {
		output stderr
		format json
		level %s
	}
}
%s`, admin, logLevel, body)
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := proxyCommand(bin, "run", "--config", cf, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proxyProc{name: name, cmd: cmd, addr: addr, admin: admin, exited: make(chan struct{}), tables: map[int64]time.Time{}, logf: logf}
	p.cond = sync.NewCond(&p.mu)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if t, ok := parseTableLog(line); ok {
				p.mu.Lock()
				p.tables[t.version] = t.ts
				p.cond.Broadcast()
				p.mu.Unlock()
			}
		}
		cmd.Wait()
		close(p.exited)
	}()
	if err := waitListening(addr, p.exited, 20*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s: %w (log %s)", name, err, logf.Name())
	}
	return p, nil
}

// startNginx runs nginx (one worker) in front of the backends, with
// WebSocket upgrades and connection limits for n streams.
func startNginx(bin, dir, addr string, backends []*echoBackend, nofile int) (*proxyProc, error) {
	nd := filepath.Join(dir, "nginx")
	os.MkdirAll(nd, 0o755)
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "\t\tserver %s;\n", b.addr)
	}
	conf := filepath.Join(nd, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes 1;
worker_rlimit_nofile %[3]d;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log error;
events {
	worker_connections %[3]d;
}
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	map $http_upgrade $connection_upgrade {
		default upgrade;
		'' close;
	}
	upstream backends {
%[2]s	}
	server {
		listen %[4]s;
		location / {
			proxy_pass http://backends;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
			proxy_read_timeout 1h;
			proxy_send_timeout 1h;
		}
	}
}
`, nd, servers.String(), nofile, addr)), 0o644)
	cmd := proxyCommand(bin, "-p", nd, "-e", filepath.Join(nd, "error.log"), "-c", conf)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proxyProc{name: "nginx", cmd: cmd, addr: addr, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	if err := waitListening(addr, p.exited, 10*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(nd, "error.log"))
		p.stop()
		return nil, fmt.Errorf("nginx: %w: %s", err, strings.TrimSpace(string(log)))
	}
	return p, nil
}

func waitListening(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before listening on %s", addr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s after %v", addr, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpGet fetches u with a bounded timeout and returns the body.
func httpGet(ctx context.Context, c *http.Client, u string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}
