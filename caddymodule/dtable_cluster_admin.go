package caddymodule

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
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
//	GET  /                        the status page (static shell; see status_page.go)
//	GET  /events                  the page's live state (server-sent events)
//	POST /rebalance/[?dry_run=1]  ask the leading monitor to rebalance (JSON result; by=load: by load)
//	POST /drain/<node>[?dry_run=1]    ask it to drain a node; /undrain/<node> likewise
//	GET  /status                  assignment version, leader, nodes, etcd connection
//	GET  /nodes                   nodes with state, bucket counts and URLs
//	GET  /buckets                 all 256 buckets and their owners
//	GET  /lookup/<uuid>           bucket, node_id, node_url, local_node_url of a base
//
// Other paths go to the next handler.
//
// With a Token, every request (also one for another path) but those for
// the status page's static files needs the header "Authorization: Bearer
// <token>"; without it, or with another token, the answer is 401. A POST
// is refused when a browser sends it from another
// site (Sec-Fetch-Site, else Origin against Host: 403) and when its body
// is not JSON (any Content-Type but application/json: 415), so a web page
// cannot make a visitor's browser rebalance the cluster. dry_run takes 1,
// true, 0 or false, by takes count (the default) or load; any other value
// is 400.
type DtableClusterAdmin struct {
	EtcdConfig
	// RequestTimeout bounds a rebalance request; default 10s.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`
	// Token, if set, is the bearer token every request must carry.
	// Placeholders are expanded once, at provisioning (write
	// {env.DTABLE_ADMIN_TOKEN} to keep it out of the config); a token that
	// expands to nothing is an error, not an open site.
	Token string `json:"token,omitempty"`

	followerRef
	log   *zap.Logger
	from  string
	token *[sha256.Size]byte // the token's digest; nil without a token
	// closing is closed by Cleanup: this handler's status streams end, so
	// a config reload is not kept waiting for them.
	closing chan struct{}
	// shutdowns maps each *http.Server that served a status stream to a
	// channel closed when it begins to shut down (serverShutdown).
	shutdowns sync.Map
}

// CaddyModule returns the Caddy module information.
func (*DtableClusterAdmin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.dtable_cluster_admin", New: func() caddy.Module { return new(DtableClusterAdmin) }}
}

// Provision joins (or starts) the shared follower. It does not wait for
// etcd.
func (h *DtableClusterAdmin) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	h.closing = make(chan struct{})
	if h.RequestTimeout <= 0 {
		h.RequestTimeout = caddy.Duration(10 * time.Second)
	}
	host, _ := os.Hostname()
	h.from = "caddy@" + host
	if h.Token != "" {
		token := caddy.NewReplacer().ReplaceKnown(h.Token, "")
		if token == "" {
			return fmt.Errorf("token: %q expands to an empty string (is the variable set?)", h.Token)
		}
		sum := sha256.Sum256([]byte(token))
		h.token = &sum
	}
	return h.join(ctx, h.EtcdConfig)
}

// Cleanup ends this handler's status streams and releases the shared follower.
func (h *DtableClusterAdmin) Cleanup() error {
	if h.closing != nil {
		close(h.closing) // Caddy cleans a module up once
	}
	return h.release()
}

func (h *DtableClusterAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if a, ok := pageAssets[r.URL.Path]; ok { // no cluster data: served without the token (status_page.go)
		return h.only(w, r, http.MethodGet, a.serve)
	}
	if h.token != nil && !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="dtable-cluster-admin"`)
		return writeJSON(w, http.StatusUnauthorized, map[string]string{
			"error": "the operator site needs its token: send Authorization: Bearer <token>"})
	}
	path := r.URL.Path
	switch {
	case path == "/rebalance/" || path == "/rebalance":
		return h.only(w, r, http.MethodPost, h.rebalance)
	case strings.HasPrefix(path, "/drain/"):
		return h.only(w, r, http.MethodPost, h.nodeOp(monitorapi.OpDrain))
	case strings.HasPrefix(path, "/undrain/"):
		return h.only(w, r, http.MethodPost, h.nodeOp(monitorapi.OpUndrain))
	case path == "/events":
		return h.only(w, r, http.MethodGet, h.events)
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

// authorized reports whether r carries the token, comparing in constant
// time (digests of equal length, so the token's length does not show).
func (h *DtableClusterAdmin) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(sum[:], h.token[:]) == 1
}

// crossOrigin refuses unsafe requests a browser sends from another
// origin: by Sec-Fetch-Site, else by Origin against Host.
var crossOrigin = http.NewCrossOriginProtection()

func (h *DtableClusterAdmin) only(w http.ResponseWriter, r *http.Request, method string, fn func(http.ResponseWriter, *http.Request) error) error {
	if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
		w.Header().Set("Allow", method)
		return writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": r.URL.Path + " takes " + method})
	}
	if method == http.MethodPost {
		if err := crossOrigin.Check(r); err != nil {
			h.log.Warn("cross-origin request refused", zap.String("path", r.URL.Path), zap.String("origin", r.Header.Get("Origin")),
				zap.String("sec_fetch_site", r.Header.Get("Sec-Fetch-Site")), zap.String("remote", r.RemoteAddr))
			return writeJSON(w, http.StatusForbidden, map[string]string{"error": "cross-origin request refused: " +
				r.URL.Path + " takes POSTs from the operator (curl, the monitor CLI), not from another site's page"})
		}
		if ct := r.Header.Get("Content-Type"); ct != "" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
				return writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": fmt.Sprintf(
					"Content-Type %q: %s takes no body or a JSON one (application/json); form posts are refused", mediaType(ct), r.URL.Path)})
			}
		}
	}
	return fn(w, r)
}

// mediaType is a Content-Type without its parameters, for messages.
func mediaType(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.TrimSpace(mt)
}

// parseDryRun reads the dry_run query parameter: absent, 0 or false is a
// real run; 1 or true a dry run; anything else (also repeated values that
// disagree) an error naming the value.
func parseDryRun(rawQuery string) (bool, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return false, fmt.Errorf("query: %v", err)
	}
	values, ok := q["dry_run"]
	if !ok {
		return false, nil
	}
	var dry bool
	for i, v := range values {
		var d bool
		switch v {
		case "1", "true":
			d = true
		case "0", "false":
		default:
			return false, fmt.Errorf("dry_run: %q; want 1, true, 0 or false", v)
		}
		if i > 0 && d != dry {
			return false, fmt.Errorf("dry_run: given as %q and %q", values[0], v)
		}
		dry = d
	}
	return dry, nil
}

// rebalance asks the leading monitor through etcd and relays its answer:
// 200 with the result, 409 if the monitor refused, 503 if none answered.
func (h *DtableClusterAdmin) rebalance(w http.ResponseWriter, r *http.Request) error {
	dry, err := parseDryRun(r.URL.RawQuery)
	if err != nil {
		return writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	}
	by, err := parseBy(r.URL.RawQuery)
	if err != nil {
		return writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	}
	req := monitorapi.Request{Op: monitorapi.OpRebalance, DryRun: dry, By: by, From: h.from}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.RequestTimeout))
	defer cancel()
	resp, err := monitorapi.Send(ctx, h.follower.cli, h.follower.layout, req)
	switch {
	case err == nil:
		h.log.Info("rebalance requested", zap.Bool("dry_run", req.DryRun), zap.String("by", req.By), zap.Int("moves", len(resp.Moves)),
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
