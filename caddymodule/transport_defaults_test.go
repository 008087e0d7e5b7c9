package caddymodule

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// The provisioned reverse_proxy of dtable_bucket_proxy has the shipped
// transport when the config names none; a transport the user names is
// kept as given (Caddy's defaults fill what it leaves unset).
func TestTransportDefaults(t *testing.T) {
	tests := []struct {
		name       string
		proxyBlock string
		perHost    int
		idle       time.Duration
	}{
		{"shipped", "", defaultIdleConnsPerHost, defaultIdleTimeout},
		{"user value wins", "transport http {\n keepalive_idle_conns_per_host 7\n keepalive 90s\n}", 7, 90 * time.Second},
		{"user transport is the user's", "transport http {\n dial_timeout 2s\n}", 32, 2 * time.Minute}, // Caddy's defaults
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setupWith(t, extraConfig{proxyBlock: tt.proxyBlock})
			rp := bucketProxyHandler(t)
			ht, ok := rp.Transport.(*reverseproxy.HTTPTransport)
			if !ok || ht.Transport == nil {
				t.Fatalf("transport %T, want a provisioned *reverseproxy.HTTPTransport", rp.Transport)
			}
			if got := ht.Transport.MaxIdleConnsPerHost; got != tt.perHost {
				t.Errorf("MaxIdleConnsPerHost %d, want %d", got, tt.perHost)
			}
			if got := ht.Transport.IdleConnTimeout; got != tt.idle {
				t.Errorf("IdleConnTimeout %v, want %v", got, tt.idle)
			}
			if got := ht.Transport.MaxIdleConns; got != defaultIdleConns {
				t.Errorf("MaxIdleConns %d, want %d", got, defaultIdleConns)
			}
			if a := do(t, "GET", proxyURL("/dtables/"+uuidIn(0x5c)+"/"), nil); a.status != http.StatusOK {
				t.Fatalf("request through the proxy: %d %v", a.status, a.body)
			}
		})
	}
}

// bucketProxyHandler finds the running config's reverse_proxy handler
// with the dtable_bucket upstream source.
func bucketProxyHandler(t *testing.T) *reverseproxy.Handler {
	t.Helper()
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		t.Fatal(err)
	}
	var found *reverseproxy.Handler
	var walk func(caddyhttp.RouteList)
	walk = func(routes caddyhttp.RouteList) {
		for _, r := range routes {
			for _, h := range r.Handlers {
				switch h := h.(type) {
				case *reverseproxy.Handler:
					if _, ok := h.DynamicUpstreams.(*DtableBucketUpstreams); ok {
						found = h
					}
				case *caddyhttp.Subroute:
					walk(h.Routes)
				}
			}
		}
	}
	for _, srv := range app.(*caddyhttp.App).Servers {
		walk(srv.Routes)
	}
	if found == nil {
		t.Fatal("no reverse_proxy with the dtable_bucket upstream source in the running config")
	}
	return found
}
