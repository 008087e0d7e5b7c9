package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// BenchmarkProxyVsReverseProxy is issue 10's "dtable_bucket_proxy ≥ 1.0 ×
// plain Caddy with equal transport" in process, where benchstat can read
// it (wrk on loopback on a busy machine cannot): one real Caddy serves
// both sites, dtable_bucket_proxy as shipped and a plain reverse_proxy
// (round robin) with the transport the directive ships, in front of the
// same three fast backends; a keep-alive client sends requests for bases
// in all 256 buckets from 32 goroutines per CPU. ns/op is the wall time
// per request of the whole (client, Caddy, backends all in this process),
// so the ratio of the two is diluted by what they share; cpu-ns/op is the
// process's CPU time (user and system) per request, which depends less on
// what else the machine runs. Give both the same number of requests (a
// time-based -benchtime gives the slower one fewer, over which the
// process's background work, embedded etcd among it, is spread), and
// let -count alternate which goes first:
//
//	go test ./caddymodule -run '^$' -bench ProxyVsReverseProxy -benchtime 8000x -count 10 | tee x.txt
//	benchstat -col /proxy x.txt
func BenchmarkProxyVsReverseProxy(b *testing.B) {
	etcd := etcdtest.Start(b)
	cli := etcd.Client(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ups string
	for i := 1; i <= 3; i++ {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }))
		b.Cleanup(srv.Close)
		id := fmt.Sprintf("n%d", i)
		n := schema.Node{NodeID: id, NodeURL: "http://" + id + "/", LocalNodeURL: srv.URL + "/"}
		if _, err := cli.Put(ctx, layout.NodeKey(id), string(n.Encode())); err != nil {
			b.Fatal(err)
		}
		ups += " " + srv.Listener.Addr().String()
	}
	a := &schema.Assignment{Version: 1}
	for bk := range a.Owners {
		a.Owners[bk] = fmt.Sprintf("n%d", bk%3+1)
	}
	a.NextEpochs(nil)
	if _, err := cli.Put(ctx, layout.AssignmentKey(), string(a.Encode())); err != nil {
		b.Fatal(err)
	}
	// Caddy binds ports taken a moment before, which a busy machine's
	// outgoing connections may take meanwhile: a few tries.
	var dtablePort, plainPort int
	for try := 0; ; try++ {
		ports := testutil.FreePorts(b, 2)
		dtablePort, plainPort = ports[0], ports[1]
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fmt.Sprintf(`{
	admin off
	auto_https off
	skip_install_trust
	grace_period 1ns
}
:%d {
	dtable_bucket_proxy {
		etcd %s
	}
}
:%d {
	reverse_proxy%s {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns_per_host %d
		}
	}
}
`, dtablePort, etcd.Endpoints()[0], plainPort, ups, defaultIdleConnsPerHost)), nil)
		if err != nil {
			b.Fatal(err)
		}
		if err = caddy.Load(cfg, true); err == nil {
			break
		} else if try == 4 {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { caddy.Stop() }) // before etcd stops (see env.load)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	b.Cleanup(client.CloseIdleConnections)
	get := func(port int, i uint64) error {
		u := fmt.Sprintf("http://127.0.0.1:%d/api/v1/dtables/%02x264e76-0e5a-448a-9f34-580b551364ca/rows/", port, uint8(i))
		resp, err := client.Get(u)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("%s: %s", u, resp.Status)
		}
		return err
	}
	testutil.Eventually(b, 10*time.Second, "the proxy routes", func() bool { return get(dtablePort, 0) == nil })
	type site struct {
		name string
		port int
	}
	sites := []site{{"dtable_bucket_proxy", dtablePort}, {"reverse_proxy", plainPort}}
	if proxyBenchCalls++; proxyBenchCalls%2 == 0 { // -count n: each goes first in turn
		sites[0], sites[1] = sites[1], sites[0]
	}
	for _, p := range sites {
		b.Run("proxy="+p.name, func(b *testing.B) {
			var n atomic.Uint64
			b.SetParallelism(32)
			cpu0 := processCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := get(p.port, n.Add(1)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

var proxyBenchCalls int

// processCPU is the CPU time (user + system) this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
