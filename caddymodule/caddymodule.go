// Package caddymodule is the proxy node of a dtable-server cluster: Caddy
// modules that route every request for a base to the server that owns the
// base's bucket, as written by the monitor in etcd.
//
// Each module's type is its ID in CamelCase, in the file of the same name:
//
//   - http.handlers.dtable_bucket: DtableBucket (dtable_bucket.go) finds the
//     base UUID (uuid_finder.go), looks up the owner in the route table
//     (route_table.go), stamps X-Dtable-Bucket, X-Dtable-Bucket-Epoch and
//     X-Dtable-Assignment-Version, and sets the {http.dtable_bucket.*}
//     placeholders. Its per-bucket request loop, serveBucket
//     (bucket_request.go), holds the requests of a bucket that is being
//     handed off and sends a request again when its server answers 421.
//     A request it cannot route is a 400 or 503 error for the site's
//     handle_errors, or, in a site without, a JSON answer.
//   - http.reverse_proxy.upstreams.dtable_bucket: DtableBucketUpstreams
//     (dtable_bucket_upstreams.go) gives Caddy's reverse_proxy the chosen
//     owner as its one upstream, and aborts an attempt whose route
//     changed before the dial, so the handler routes it again.
//   - http.handlers.dtable_cluster_admin: DtableClusterAdmin
//     (dtable_cluster_admin.go), the operator site: POST /rebalance/,
//     GET /status, /nodes, /buckets, /lookup/<uuid>.
//   - admin.api.dtable_cluster: DtableClusterAPI (dtable_cluster_api.go),
//     read-only views on Caddy's admin API.
//
// All of them share one follower per etcd cluster and prefix (follower.go):
// the etcd client, the watcher and the route table, kept across config
// reloads in a caddy.UsagePool. EtcdConfig says where etcd is.
//
// Caddyfile directives (caddyfile.go): dtable_bucket_proxy, which adapts to
// the dtable_bucket handler followed by reverse_proxy with the dtable_bucket
// upstream source, and dtable_cluster_admin. Build with xcaddy.sh.
package caddymodule

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(DtableBucket))
	caddy.RegisterModule(DtableBucketUpstreams{})
	caddy.RegisterModule(new(DtableClusterAdmin))
	caddy.RegisterModule(DtableClusterAPI{})
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*DtableBucket)(nil)
	_ caddy.Validator             = (*DtableBucket)(nil)
	_ caddy.CleanerUpper          = (*DtableBucket)(nil)
	_ caddyhttp.MiddlewareHandler = (*DtableBucket)(nil)
	_ reverseproxy.UpstreamSource = DtableBucketUpstreams{}
	_ caddy.Provisioner           = (*DtableClusterAdmin)(nil)
	_ caddy.CleanerUpper          = (*DtableClusterAdmin)(nil)
	_ caddyhttp.MiddlewareHandler = (*DtableClusterAdmin)(nil)
	_ caddyfile.Unmarshaler       = (*DtableClusterAdmin)(nil)
	_ caddy.AdminRouter           = DtableClusterAPI{}
)
