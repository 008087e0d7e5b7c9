package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/dtablecluster/dtable-router/internal/clusterview"
)

// AdminAPI is the admin.api.dtable_cluster module: read-only views of every
// cluster the proxy follows, on Caddy's admin endpoint (localhost:2019):
//
//	GET /dtable-cluster/status   per cluster: version, leader, nodes, etcd connection, staleness
//	GET /dtable-cluster/nodes    per cluster: nodes
//	GET /dtable-cluster/buckets  per cluster: the 256 buckets and their owners
//
// Results are keyed by etcd prefix.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.dtable_cluster", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	view := func(fn func(*sharedCluster, *http.Request) any) caddy.AdminHandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) error {
			if r.Method != http.MethodGet {
				return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errMethod}
			}
			out := map[string]any{}
			forEachCluster(func(sc *sharedCluster) { out[sc.layout.Prefix] = fn(sc, r) })
			return writeJSON(w, http.StatusOK, out)
		}
	}
	return []caddy.AdminRoute{
		{Pattern: "/dtable-cluster/status", Handler: view(func(sc *sharedCluster, r *http.Request) any { return sc.status(r.Context()) })},
		{Pattern: "/dtable-cluster/nodes", Handler: view(func(sc *sharedCluster, r *http.Request) any { return sc.status(r.Context()).Nodes })},
		{Pattern: "/dtable-cluster/buckets", Handler: view(func(sc *sharedCluster, _ *http.Request) any { return clusterview.Buckets(sc.snapshot()) })},
	}
}

var errMethod = errorString("method not allowed: use GET")

type errorString string

func (e errorString) Error() string { return string(e) }
