package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// loadReport reads the proxy's load report from etcd (ok false: none).
func (e *env) loadReport(id string) (r schema.LoadReport, lease clientv3.LeaseID, ok bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.cli.Get(ctx, layout.LoadKey(id))
	if err != nil {
		e.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return r, 0, false
	}
	r, err = schema.ParseLoadReport(id, resp.Kvs[0].Value)
	if err != nil {
		e.t.Fatalf("the proxy published an invalid load report: %v: %s", err, resp.Kvs[0].Value)
	}
	return r, clientv3.LeaseID(resp.Kvs[0].Lease), true
}

// Real traffic through Caddy shows up in the proxy's load key: requests,
// body bytes both ways and an open WebSocket, in the right buckets; the
// WebSocket leaves the gauge when it closes; and the key goes with its
// lease when the config is unloaded (the follower's final release).
func TestLoadReportPublishesTheTrafficThroughCaddy(t *testing.T) {
	const id = "caddy@load-e2e"
	e := setupWith(t, extraConfig{proxyBlock: "load_report 1s " + id})
	ws := dialWS(t, 0x10)
	if got, err := echo(ws, "hi"); err != nil || got != "n2:hi" {
		t.Fatalf("echo through the proxy: %q %v", got, err)
	}
	// Traffic to bucket 5c until a report shows it (each report covers
	// one interval: keep it going across one whole interval).
	body := strings.Repeat("x", 1000)
	var seen schema.LoadReport
	testutil.Eventually(t, 10*time.Second, "a load report with bucket 5c's requests and bytes and bucket 10's WebSocket", func() bool {
		for range 5 {
			req, _ := http.NewRequest("POST", bucketURL(0x5c), strings.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("POST through the proxy: %d", resp.StatusCode)
			}
		}
		r, lease, ok := e.loadReport(id)
		if !ok || lease == 0 {
			return false
		}
		seen = r
		l := r.Buckets[0x5c]
		return l.Requests > 0 && l.BytesIn >= l.Requests*1000 && l.BytesOut > 0 && r.Buckets[0x10].WebSockets == 1
	})
	if seen.Interval != time.Second || seen.Proxy != id {
		t.Fatalf("report %+v: want interval 1s and proxy %s", seen, id)
	}
	for b, l := range seen.Buckets {
		if b != 0x5c && b != 0x10 {
			t.Fatalf("bucket %s has load %+v; no traffic went there", b, l)
		}
	}
	t.Logf("bucket 5c: %+v; bucket 10: %+v", seen.Buckets[0x5c], seen.Buckets[0x10])

	ws.Close()
	testutil.Eventually(t, 10*time.Second, "the closed WebSocket leaves the report", func() bool {
		r, _, ok := e.loadReport(id)
		return ok && r.Buckets[0x10].WebSockets == 0
	})

	_, lease, _ := e.loadReport(id)
	unloadCaddy(t)
	// Revoked, not expired: the lease (3 s) is gone at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ttl, err := e.cli.TimeToLive(ctx, lease)
	if err != nil || ttl.TTL != -1 {
		t.Fatalf("the load report's lease after unloading the config: %+v %v; want revoked", ttl, err)
	}
	if _, _, ok := e.loadReport(id); ok {
		t.Fatal("the load report is still in etcd after the config was unloaded")
	}
}

// unloadCaddy loads a config without sites, as the env's cleanup does.
func unloadCaddy(t *testing.T) {
	t.Helper()
	body := strings.NewReader(fmt.Sprintf(`{"admin":{"listen":"localhost:%d"}}`, adminPort))
	resp, err := http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("unload: %d", resp.StatusCode)
	}
}

// The report's lease is the proxy's own: revoked by hand (or expired
// while etcd was away), the next report grants another and writes the key
// again. A reload that gives the proxy another id moves the report to the
// new key and revokes the old one at once; a reload to "load_report off"
// removes it.
func TestLoadReportSurvivesALostLeaseAndFollowsReloads(t *testing.T) {
	const revokedWithin = 500 * time.Millisecond // an expiry would take 700ms or more
	e := setupWith(t, extraConfig{proxyBlock: "load_report 300ms caddy@first"})
	var lease clientv3.LeaseID
	testutil.Eventually(t, 10*time.Second, "the first report", func() bool {
		_, lease, _ = e.loadReport("caddy@first")
		return lease != 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "a report under a new lease", func() bool {
		_, l, ok := e.loadReport("caddy@first")
		return ok && l != 0 && l != lease
	})

	e.extra.proxyBlock = "load_report 300ms caddy@second"
	e.tester.InitServer(e.config(), "caddyfile")
	// The publisher revokes on its own goroutine, woken by the reload:
	// within milliseconds, well before the key's lease (TTL 1s, renewed
	// every 300ms) could expire, which takes at least 700ms.
	testutil.Eventually(t, revokedWithin, "the old id's report gone right after the reload", func() bool {
		_, _, ok := e.loadReport("caddy@first")
		return !ok
	})
	testutil.Eventually(t, 10*time.Second, "the report under the new id", func() bool {
		_, _, ok := e.loadReport("caddy@second")
		return ok
	})

	e.extra.proxyBlock = "load_report off"
	e.tester.InitServer(e.config(), "caddyfile")
	testutil.Eventually(t, revokedWithin, "the report gone right after a reload to load_report off", func() bool {
		_, _, ok := e.loadReport("caddy@second")
		return !ok
	})
	time.Sleep(time.Second) // three intervals: nothing is published
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if resp, err := e.cli.Get(ctx2, layout.LoadPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("load keys with load_report off: %v %v", resp, err)
	}
}

// A reload that fails leaves the running config's load report in force:
// the failed config's handlers registered their settings when they were
// provisioned and take them back when Caddy cleans them up.
func TestLoadReportOfAFailedReloadIsTakenBack(t *testing.T) {
	e := setupWith(t, extraConfig{proxyBlock: "load_report 300ms caddy@first"})
	testutil.Eventually(t, 10*time.Second, "the first report", func() bool {
		_, l, _ := e.loadReport("caddy@first")
		return l != 0
	})
	busy, err := net.Listen("tcp", "127.0.0.1:0") // the new config's extra site cannot listen: the load fails
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	e.extra.proxyBlock = "load_report 300ms caddy@second"
	cfg := e.config() + fmt.Sprintf("127.0.0.1:%d {\n\trespond \"x\"\n}\n", busy.Addr().(*net.TCPAddr).Port)
	resp, err := http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "text/caddyfile", strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("the config with a site on a busy port loaded: %s", body)
	}
	testutil.Eventually(t, 5*time.Second, "caddy@first reported again, caddy@second gone", func() bool {
		r, _, first := e.loadReport("caddy@first")
		_, _, second := e.loadReport("caddy@second")
		return first && !second && time.Since(r.At) < time.Second
	})
}

// A config that keeps the operator site (and so the follower) but drops
// dtable_bucket_proxy stops the load report: its key goes.
func TestLoadReportStopsWithoutAProxyHandler(t *testing.T) {
	e := setupWith(t, extraConfig{proxyBlock: "load_report 300ms caddy@first"})
	testutil.Eventually(t, 10*time.Second, "the first report", func() bool {
		_, l, _ := e.loadReport("caddy@first")
		return l != 0
	})
	eps := strings.Join(e.etcd.Endpoints(), " ")
	e.tester.InitServer(fmt.Sprintf("{\n\tadmin localhost:%d\n\thttp_port %d\n\thttps_port %d\n\tauto_https off\n\tskip_install_trust\n}\n"+
		":%d {\n\tdtable_cluster_admin {\n\t\tetcd %s\n\t}\n}\n", adminPort, httpPort, httpsPort, siteAdminPort, eps), "caddyfile")
	testutil.Eventually(t, 3*time.Second, "the load key revoked", func() bool {
		_, _, ok := e.loadReport("caddy@first")
		return !ok
	})
}
