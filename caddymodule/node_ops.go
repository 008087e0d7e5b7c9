package caddymodule

import (
	"context"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// nodeOp handles POST /drain/<node> and POST /undrain/<node> (op is
// monitorapi.OpDrain or OpUndrain, also the path's first segment): like
// POST /rebalance/, a request to the leading monitor through etcd, with
// dry_run, and the same answers: 200 with the result, 409 if the monitor
// refused, 503 if none answered; 400 for a bad node id or dry_run.
func (h *DtableClusterAdmin) nodeOp(op string) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		node := strings.Trim(strings.TrimPrefix(r.URL.Path, "/"+op+"/"), "/")
		if err := schema.ValidateNodeID(node); err != nil {
			return writeJSON(w, http.StatusBadRequest, map[string]string{"error": op + ": node: " + err.Error()})
		}
		dry, err := parseDryRun(r.URL.RawQuery)
		if err != nil {
			return writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		}
		req := monitorapi.Request{Op: op, Node: node, DryRun: dry, From: h.from}
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.RequestTimeout))
		defer cancel()
		resp, err := monitorapi.Send(ctx, h.follower.cli, h.follower.layout, req)
		switch {
		case err == nil:
			h.log.Info(op+" requested", zap.String("node", node), zap.Bool("dry_run", dry), zap.Int("moves", len(resp.Moves)),
				zap.Int64("version", resp.Version), zap.String("remote", r.RemoteAddr))
			return writeJSON(w, http.StatusOK, resp)
		case resp != nil:
			return writeJSON(w, http.StatusConflict, resp)
		default:
			h.log.Warn(op+" request failed", zap.String("node", node), zap.Error(err))
			w.Header().Set("Retry-After", "10")
			return writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		}
	}
}
