package caddymodule

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

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
// Results are keyed by etcd prefix. When several shared followers follow
// one prefix (the proxy site names etcd by endpoints, the admin site by
// config; the endpoints in another order; other credentials), each is
// listed, keyed "<prefix> (etcd <its endpoints>)" (see viewKeys).
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
			for key, fw := range viewKeys() {
				out[key] = fn(fw, r)
			}
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

// viewKeys names every running follower for the admin API: by its prefix
// when it is the prefix's only follower; else by its prefix and etcd
// endpoints as configured, and, if two share those too (other TLS or auth
// settings), a number.
func viewKeys() map[string]*follower {
	byPrefix := map[string][]*follower{}
	forEachFollower(func(fw *follower) { byPrefix[fw.layout.Prefix] = append(byPrefix[fw.layout.Prefix], fw) })
	out := map[string]*follower{}
	for prefix, fws := range byPrefix {
		if len(fws) == 1 {
			out[prefix] = fws[0]
			continue
		}
		slices.SortFunc(fws, func(a, b *follower) int {
			return cmp.Compare(strings.Join(a.endpoints, ","), strings.Join(b.endpoints, ","))
		})
		for _, fw := range fws {
			key := fmt.Sprintf("%s (etcd %s)", prefix, strings.Join(fw.endpoints, ","))
			for n := 2; out[key] != nil; n++ {
				key = fmt.Sprintf("%s (etcd %s) #%d", prefix, strings.Join(fw.endpoints, ","), n)
			}
			out[key] = fw
		}
	}
	return out
}
