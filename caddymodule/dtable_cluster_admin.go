package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/statusview"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// DtableClusterAdmin is the http.handlers.dtable_cluster_admin handler, for the
// proxy's admin site (port 5555 in the operator docs):
//
//	POST /rebalance/[?dry_run=1]  ask the leading monitor to rebalance (JSON result)
//	GET  /status                  assignment version, leader, nodes, etcd connection
//	GET  /nodes                   nodes with state, bucket counts and URLs
//	GET  /buckets                 all 256 buckets and their owners
//	GET  /lookup/<uuid>           bucket, node_id, node_url, local_node_url of a base
//
// Other paths go to the next handler.
type DtableClusterAdmin struct {
	EtcdConfig
	// RequestTimeout bounds a rebalance request; default 10s.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`

	followerRef
	log  *zap.Logger
	from string
}

// CaddyModule returns the Caddy module information.
func (*DtableClusterAdmin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.dtable_cluster_admin", New: func() caddy.Module { return new(DtableClusterAdmin) }}
}

// Provision joins (or starts) the shared follower. It does not wait for
// etcd.
func (h *DtableClusterAdmin) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	if h.RequestTimeout <= 0 {
		h.RequestTimeout = caddy.Duration(10 * time.Second)
	}
	host, _ := os.Hostname()
	h.from = "caddy@" + host
	return h.join(ctx, h.EtcdConfig)
}

// Cleanup releases the shared follower.
func (h *DtableClusterAdmin) Cleanup() error { return h.release() }

func (h *DtableClusterAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	path := r.URL.Path
	switch {
	case path == "/rebalance/" || path == "/rebalance":
		return h.only(w, r, http.MethodPost, h.rebalance)
	case path == "/status" || path == "/status/":
		return h.only(w, r, http.MethodGet, func(w http.ResponseWriter, r *http.Request) error {
			return writeJSON(w, http.StatusOK, h.follower.status(r.Context()))
		})
	case path == "/nodes" || path == "/nodes/":
		return h.only(w, r, http.MethodGet, func(w http.ResponseWriter, r *http.Request) error {
			return writeJSON(w, http.StatusOK, h.follower.status(r.Context()).Nodes)
		})
	case path == "/buckets" || path == "/buckets/":
		return h.only(w, r, http.MethodGet, func(w http.ResponseWriter, r *http.Request) error {
			return writeJSON(w, http.StatusOK, statusview.Buckets(h.follower.snapshot()))
		})
	case strings.HasPrefix(path, "/lookup/"):
		return h.only(w, r, http.MethodGet, h.lookup)
	}
	return next.ServeHTTP(w, r)
}

func (h *DtableClusterAdmin) only(w http.ResponseWriter, r *http.Request, method string, fn func(http.ResponseWriter, *http.Request) error) error {
	if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
		w.Header().Set("Allow", method)
		return writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": r.URL.Path + " takes " + method})
	}
	return fn(w, r)
}

// rebalance asks the leading monitor through etcd and relays its answer:
// 200 with the result, 409 if the monitor refused, 503 if none answered.
func (h *DtableClusterAdmin) rebalance(w http.ResponseWriter, r *http.Request) error {
	dry := r.URL.Query().Get("dry_run")
	req := monitorapi.Request{Op: monitorapi.OpRebalance, DryRun: dry == "1" || dry == "true", From: h.from}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.RequestTimeout))
	defer cancel()
	resp, err := monitorapi.Send(ctx, h.follower.cli, h.follower.layout, req)
	switch {
	case err == nil:
		h.log.Info("rebalance requested", zap.Bool("dry_run", req.DryRun), zap.Int("moves", len(resp.Moves)),
			zap.Int64("version", resp.Version), zap.String("remote", r.RemoteAddr))
		return writeJSON(w, http.StatusOK, resp)
	case resp != nil:
		return writeJSON(w, http.StatusConflict, resp)
	default:
		h.log.Warn("rebalance request failed", zap.Error(err))
		w.Header().Set("Retry-After", "10")
		return writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	}
}

// lookupResult is what the web app needs to send a browser to a base's server.
type lookupResult struct {
	UUID         string `json:"uuid"`
	Bucket       string `json:"bucket"`
	NodeID       string `json:"node_id"`
	NodeURL      string `json:"node_url"`
	LocalNodeURL string `json:"local_node_url"`
	Version      int64  `json:"version"`
}

func (h *DtableClusterAdmin) lookup(w http.ResponseWriter, r *http.Request) error {
	uuid := strings.Trim(strings.TrimPrefix(r.URL.Path, "/lookup/"), "/")
	b, err := bucket.FromUUID(uuid)
	if err != nil {
		return writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error(), "reason": reasonMalformedUUID})
	}
	t, rt := h.follower.lookup(b)
	if !rt.ok {
		w.Header().Set("Retry-After", "5")
		return writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": rt.describe(t.version), "bucket": b.String(), "reason": rt.reason})
	}
	n := t.snap.Nodes[rt.nodeID]
	return writeJSON(w, http.StatusOK, lookupResult{UUID: uuid, Bucket: b.String(), NodeID: n.NodeID, NodeURL: n.NodeURL,
		LocalNodeURL: n.LocalNodeURL, Version: t.version})
}

// adminStatus is statusview.Status plus the proxy's view of etcd.
type adminStatus struct {
	statusview.Status
	Etcd           []string  `json:"etcd"`
	EtcdConnected  bool      `json:"etcd_connected"`
	LastContact    time.Time `json:"last_contact"`
	LastError      string    `json:"last_error,omitempty"`
	TableAgeSecond float64   `json:"table_age_seconds"`
}

// snapshot is the cluster state the current routing table was built from.
func (fw *follower) snapshot() *watch.Snapshot {
	if snap := fw.table.Load().snap; snap != nil {
		return snap
	}
	return watch.EmptySnapshot()
}

// status is the admin view of the cluster, with the leading monitor read
// from etcd (bounded to a second: a status page must answer during an outage).
func (fw *follower) status(ctx context.Context) adminStatus {
	t := fw.table.Load()
	st := fw.watcher.Status()
	out := adminStatus{Status: statusview.NewStatus(fw.layout.Prefix, fw.snapshot()), Etcd: fw.endpoints,
		EtcdConnected: st.Connected, LastContact: st.LastContact, LastError: st.LastError,
		TableAgeSecond: time.Since(t.builtAt).Seconds()}
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if leader, err := monitorapi.Leader(lctx, fw.cli, fw.layout); err == nil {
		out.Leader = leader
	} else if !errors.Is(err, context.Canceled) {
		out.Leader = fmt.Sprintf("(unknown: %v)", err)
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
