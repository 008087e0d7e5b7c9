package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/dtablecluster/dtable-router/internal/statusview"
)

// DtableClusterAPI is the admin.api.dtable_cluster module: read-only views of every
// cluster the proxy follows, on Caddy's admin endpoint (localhost:2019):
//
//	GET /dtable-cluster/status   per cluster: version, leader, nodes, etcd connection, staleness
//	GET /dtable-cluster/nodes    per cluster: nodes
//	GET /dtable-cluster/buckets  per cluster: the 256 buckets and their owners
//
// Results are keyed by etcd prefix.
type DtableClusterAPI struct{}

// CaddyModule returns the Caddy module information.
func (DtableClusterAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.dtable_cluster", New: func() caddy.Module { return new(DtableClusterAPI) }}
}

// Routes returns the admin routes.
func (DtableClusterAPI) Routes() []caddy.AdminRoute {
	view := func(fn func(*follower, *http.Request) any) caddy.AdminHandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) error {
			if r.Method != http.MethodGet {
				return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errMethod}
			}
			out := map[string]any{}
			forEachFollower(func(fw *follower) { out[fw.layout.Prefix] = fn(fw, r) })
			return writeJSON(w, http.StatusOK, out)
		}
	}
	return []caddy.AdminRoute{
		{Pattern: "/dtable-cluster/status", Handler: view(func(fw *follower, r *http.Request) any { return fw.status(r.Context()) })},
		{Pattern: "/dtable-cluster/nodes", Handler: view(func(fw *follower, r *http.Request) any { return fw.status(r.Context()).Nodes })},
		{Pattern: "/dtable-cluster/buckets", Handler: view(func(fw *follower, _ *http.Request) any { return statusview.Buckets(fw.snapshot()) })},
	}
}

var errMethod = errors.New("method not allowed: use GET")
