package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// goMem is what Caddy's /metrics says about its Go runtime.
type goMem struct{ heapInuse, stackInuse, goroutines float64 }

// caddyGoMem forces a GC (the heap profile endpoint's gc=1) and reads the
// runtime figures from Caddy's admin /metrics.
func caddyGoMem(ctx context.Context, admin string) (goMem, error) {
	c := &http.Client{Timeout: 30 * time.Second}
	if _, _, err := httpGet(ctx, c, "http://"+admin+"/debug/pprof/heap?gc=1"); err != nil {
		return goMem{}, err
	}
	_, text, err := httpGet(ctx, c, "http://"+admin+"/metrics")
	if err != nil {
		return goMem{}, err
	}
	var m goMem
	var ok1, ok2, ok3 bool
	m.heapInuse, ok1 = promValue(text, "go_memstats_heap_inuse_bytes")
	m.stackInuse, ok2 = promValue(text, "go_memstats_stack_inuse_bytes")
	m.goroutines, ok3 = promValue(text, "go_goroutines")
	if !ok1 || !ok2 || !ok3 {
		return m, fmt.Errorf("%s/metrics: no go_memstats_heap_inuse_bytes, go_memstats_stack_inuse_bytes or go_goroutines", admin)
	}
	return m, nil
}

// saveProfile writes one of Caddy's pprof profiles to dir.
func saveProfile(ctx context.Context, admin, path, dir, name string) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+admin+path, nil)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// measureMemory opens o.streams idle WebSockets through p and measures
// the proxy's memory per stream and its CPU while they are idle. It
// returns the open clients (the move part goes on with them).
func measureMemory(ctx context.Context, o *options, p *proxyProc, name string, isDtable bool) ([]*wsClient, row, error) {
	r := row{part: fmt.Sprintf("WS memory, %d idle streams", o.streams), what: name}
	fail := func(err error) ([]*wsClient, row, error) {
		r.result = "failed: " + err.Error()
		return nil, r, fmt.Errorf("%s: %w", name, err)
	}
	// Ready: one stream goes through (the dtable proxy has read etcd).
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := dialClient(ctx, p.addr, 0)
		if err == nil {
			closeClients([]*wsClient{c})
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fail(fmt.Errorf("no WebSocket through %s: %v", p.addr, err))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Warm up (pools, per-node state), then let it settle.
	warm, err := openClients(ctx, p.addr, 16, o.conc)
	if err != nil {
		return fail(err)
	}
	closeClients(warm)
	time.Sleep(2 * time.Second)
	rss0, pss0 := p.memKB()
	var m0, m1 goMem
	if p.admin != "" {
		if m0, err = caddyGoMem(ctx, p.admin); err != nil {
			return fail(err)
		}
	}
	t0 := time.Now()
	clients, err := openClients(ctx, p.addr, o.streams, o.conc)
	if err != nil {
		return fail(err)
	}
	opened := time.Since(t0)
	time.Sleep(o.settle)
	rss1, pss1 := p.memKB()
	if p.admin != "" {
		if m1, err = caddyGoMem(ctx, p.admin); err != nil {
			closeClients(clients)
			return fail(err)
		}
		if isDtable && o.profileDir != "" {
			os.MkdirAll(o.profileDir, 0o755)
			saveProfile(ctx, p.admin, "/debug/pprof/heap", o.profileDir, "heap.pb.gz")
			saveProfile(ctx, p.admin, "/debug/pprof/goroutine?debug=1", o.profileDir, "goroutine.txt")
		}
	}
	ticks0 := p.cpuTicks()
	select {
	case <-time.After(o.idle):
	case <-ctx.Done():
		closeClients(clients)
		return fail(ctx.Err())
	}
	ticks1 := p.cpuTicks()
	n := float64(o.streams)
	perStream := float64(rss1-rss0) * 1024 / n / 1000 // kB (10^3 bytes)
	r.result = fmt.Sprintf("**%.1f kB RSS/stream** (Pss %.1f kB)", perStream, float64(pss1-pss0)*1024/n/1000)
	if p.admin != "" {
		r.result += fmt.Sprintf("; Go heap %.1f kB + stacks %.1f kB, %.2f goroutines per stream",
			(m1.heapInuse-m0.heapInuse)/n/1000, (m1.stackInuse-m0.stackInuse)/n/1000, (m1.goroutines-m0.goroutines)/n)
	}
	cpu := float64(ticks1-ticks0) * 10 / o.idle.Seconds() // ms of CPU per second (1 tick = 10 ms)
	r.result += fmt.Sprintf("; idle CPU %.1f ms/s (%.1f %% of a core); opened in %.1f s", cpu, cpu/10, opened.Seconds())
	if closed := countClosed(clients); closed > 0 {
		r.result += fmt.Sprintf("; %d streams closed while idle", closed)
	}
	if isDtable {
		r.goal = "≤ 60 kB/stream: "
		if perStream <= 60 {
			r.goal += "**met**"
		} else {
			r.goal += "**not met**"
		}
	}
	return clients, r, nil
}
