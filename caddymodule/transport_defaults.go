package caddymodule

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// The transport dtable_bucket_proxy ships (issue 10): the http transport of
// reverse_proxy, sized for a cluster's internal traffic. A proxy node sends
// all the traffic of its clients to a handful of dtable-servers on the LAN,
// hundreds of requests at once to each; Caddy's default keeps at most 32
// idle connections per upstream, so under such load every answer beyond
// the 32nd closes its connection and the next request dials a new one
// (measured: over 6000 upstream connections opened in 10 s at 512 client
// connections, against about 500 with a pool as large as the
// concurrency). The other values are Caddy's own defaults, written here so
// that what the directive ships is in one place.
const (
	// defaultIdleConnsPerHost: idle keep-alive connections kept per
	// upstream (keepalive_idle_conns_per_host); at least the requests one
	// proxy node sends one server at once.
	defaultIdleConnsPerHost = 1024
	// defaultIdleConns: idle connections in all (keepalive_idle_conns);
	// 0 is no limit beyond the per-upstream one.
	defaultIdleConns = 0
	// defaultIdleTimeout: an idle connection is closed after this long
	// (keepalive).
	defaultIdleTimeout = 2 * time.Minute
	// defaultProbeInterval: TCP keep-alive probes (keepalive_interval).
	defaultProbeInterval = 30 * time.Second
	// defaultDialTimeout: how long a dial may take (dial_timeout); the
	// servers are on the LAN.
	defaultDialTimeout = 3 * time.Second
)

// defaultTransport is the transport the directive ships, not provisioned.
func defaultTransport() *reverseproxy.HTTPTransport {
	return &reverseproxy.HTTPTransport{
		KeepAlive: &reverseproxy.KeepAlive{
			ProbeInterval:       caddy.Duration(defaultProbeInterval),
			MaxIdleConns:        defaultIdleConns,
			MaxIdleConnsPerHost: defaultIdleConnsPerHost,
			IdleConnTimeout:     caddy.Duration(defaultIdleTimeout),
		},
		DialTimeout: caddy.Duration(defaultDialTimeout),
	}
}

// provisionTransportDefaults gives the reverse_proxy handler whose upstream
// source is being provisioned (the one dtable_bucket_proxy sets up) the
// shipped transport, if its config names no transport. reverse_proxy loads
// its transport before its upstream source and makes its own default
// transport after, only if it has none (reverseproxy.Handler.Provision), so
// the one set here takes that default's place.
//
// A config that names a transport (transport http { … } in the Caddyfile)
// keeps it as it is: an explicit transport is the user's, and Caddy's
// defaults fill what it leaves unset, as in plain reverse_proxy (write
// keepalive_idle_conns_per_host in it to keep a large pool). The adapted
// JSON is the same either way: the defaults are applied here, at
// provisioning, so a JSON config gets them too.
func provisionTransportDefaults(ctx caddy.Context) error {
	mods := ctx.Modules() // …, the reverse_proxy handler, this upstream source
	if len(mods) < 2 {
		return nil
	}
	rp, ok := mods[len(mods)-2].(*reverseproxy.Handler)
	if !ok {
		return nil
	}
	return applyTransportDefaults(ctx, rp)
}

// applyTransportDefaults sets rp's transport to the shipped one if it has
// none yet.
func applyTransportDefaults(ctx caddy.Context, rp *reverseproxy.Handler) error {
	if rp.Transport != nil || rp.TransportRaw != nil {
		return nil // the user's transport
	}
	t := defaultTransport()
	if err := t.Provision(ctx); err != nil {
		return fmt.Errorf("provisioning dtable_bucket_proxy's default transport: %v", err)
	}
	rp.Transport = t
	return nil
}

var _ caddy.Provisioner = (*DtableBucketUpstreams)(nil)
