// Package caddymodule is the proxy node of a dtable-server cluster: Caddy
// modules that route every request for a base to the server that owns the
// base's bucket, as written by the monitor in etcd.
//
//   - http.handlers.dtable_bucket (Router): finds the base UUID, looks up the
//     owner, stamps X-Dtable-Bucket and X-Dtable-Assignment-Version, answers
//     400/503 itself when it cannot route.
//   - http.reverse_proxy.upstreams.dtable_bucket (BucketUpstreams): gives
//     Caddy's reverse_proxy the chosen owner as its one upstream.
//   - http.handlers.dtable_cluster_admin (ClusterAdmin): POST /rebalance/,
//     GET /status, /nodes, /buckets, /lookup/<uuid> for the admin site.
//   - admin.api.dtable_cluster (AdminAPI): read-only views on Caddy's admin API.
//
// Caddyfile directives: dtable_bucket_proxy and dtable_cluster_admin (see
// caddyfile.go and README.md). Build with xcaddy.sh.
package caddymodule

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(Router))
	caddy.RegisterModule(BucketUpstreams{})
	caddy.RegisterModule(new(ClusterAdmin))
	caddy.RegisterModule(AdminAPI{})
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Router)(nil)
	_ caddy.Validator             = (*Router)(nil)
	_ caddy.CleanerUpper          = (*Router)(nil)
	_ caddyhttp.MiddlewareHandler = (*Router)(nil)
	_ reverseproxy.UpstreamSource = BucketUpstreams{}
	_ caddy.Provisioner           = (*ClusterAdmin)(nil)
	_ caddy.CleanerUpper          = (*ClusterAdmin)(nil)
	_ caddyhttp.MiddlewareHandler = (*ClusterAdmin)(nil)
	_ caddyfile.Unmarshaler       = (*ClusterAdmin)(nil)
	_ caddy.AdminRouter           = AdminAPI{}
)
