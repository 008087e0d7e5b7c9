package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// DtableBucket is the http.handlers.dtable_bucket handler. For each request it
// finds the base UUID, looks up the bucket's owner in the etcd-watched
// assignment, stamps the fencing headers and hands the request on; the
// reverse_proxy after it (with the dtable_bucket upstream source) dials
// that owner. It answers by itself when a request cannot be routed: 400
// for a missing or malformed UUID, 503 with Retry-After when the bucket
// has no registered owner.
//
// The Caddyfile directive dtable_bucket_proxy sets up both handlers.
type DtableBucket struct {
	EtcdConfig
	// UUIDPathPrefixes: the base UUID is the path segment after one of
	// these. Default: /dtables/, /api/v1/dtables/, /api/v1/internal/dtables/, /api/v2/dtables/.
	UUIDPathPrefixes []string `json:"uuid_path_prefixes,omitempty"`
	// UUIDQueryParams: else the UUID is the value of one of these query
	// parameters. Default: dtable_uuid (socket.io connects with it).
	UUIDQueryParams []string `json:"uuid_query_params,omitempty"`
	// NoUUID says what to do with a request that names no base (/ping/):
	// "any_node" (default) sends it to a registered node that owns buckets;
	// "reject" answers 400.
	NoUUID string `json:"no_uuid,omitempty"`
	// RetryAfter is the Retry-After of 503 answers; default 5s.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	finder     uuidFinder
	retryAfter string
	followerRef
	log *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*DtableBucket) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.dtable_bucket", New: func() caddy.Module { return new(DtableBucket) }}
}

// Provision joins (or starts) the shared follower follower. It does not
// wait for etcd.
func (h *DtableBucket) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	if len(h.UUIDPathPrefixes) == 0 {
		h.UUIDPathPrefixes = DefaultUUIDPathPrefixes
	}
	if len(h.UUIDQueryParams) == 0 {
		h.UUIDQueryParams = DefaultUUIDQueryParams
	}
	for _, p := range h.UUIDPathPrefixes {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("uuid_path_prefixes: %q must start with /", p)
		}
		if !strings.HasSuffix(p, "/") {
			p += "/"
		}
		h.finder.pathPrefixes = append(h.finder.pathPrefixes, p)
	}
	h.finder.queryParams = h.UUIDQueryParams
	if h.NoUUID == "" {
		h.NoUUID = "any_node"
	}
	if h.RetryAfter <= 0 {
		h.RetryAfter = caddy.Duration(5 * time.Second)
	}
	h.retryAfter = strconv.Itoa(max(1, int(time.Duration(h.RetryAfter).Round(time.Second)/time.Second)))
	return h.join(ctx, h.EtcdConfig)
}

// Validate checks the settings.
func (h *DtableBucket) Validate() error {
	if h.NoUUID != "any_node" && h.NoUUID != "reject" {
		return fmt.Errorf(`no_uuid: %q, want "any_node" or "reject"`, h.NoUUID)
	}
	return nil
}

// Cleanup releases the shared follower; the last user stops it.
func (h *DtableBucket) Cleanup() error { return h.release() }

// routeVar is the request variable through which the chosen route goes
// from the DtableBucket handler to the upstream source.
const routeVar = "dtable_bucket.route"

// Header names of the fencing headers sent upstream (client values are replaced).
const (
	HeaderBucket  = "X-Dtable-Bucket"
	HeaderVersion = "X-Dtable-Assignment-Version"
)

func (h *DtableBucket) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	b, found, uerr := h.finder.find(r)
	if uerr != nil {
		errorCounter(uerr.reason()).Inc()
		return writeError(w, http.StatusBadRequest, "", uerr.reason(), uerr.Error(), "")
	}
	var (
		t       *routeTable
		rt      *route
		closeWS = func() {}
	)
	upgrade := isUpgrade(r)
	switch {
	case found && upgrade:
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		r = r.WithContext(ctx)
		t, rt, closeWS = h.follower.openStream(b, cancel)
		defer closeWS()
	case found:
		t = h.follower.table.Load()
		rt = &t.routes[b]
	case h.NoUUID == "reject":
		errorCounter(reasonMissingUUID).Inc()
		return writeError(w, http.StatusBadRequest, "", reasonMissingUUID,
			"the request names no base: expected a base UUID in the path (after "+strings.Join(h.finder.pathPrefixes, ", ")+
				") or in the query ("+strings.Join(h.finder.queryParams, ", ")+")", "")
	default:
		t = h.follower.table.Load()
		if len(t.anyNode) == 0 {
			errorCounter(reasonNoNode).Inc()
			return writeError(w, http.StatusServiceUnavailable, "", reasonNoNode,
				"no registered node owns buckets in the current assignment", h.retryAfter)
		}
		rt = t.anyNode[h.follower.rr.Add(1)%uint64(len(t.anyNode))]
	}
	if !rt.ok {
		errorCounter(rt.reason).Inc()
		return writeError(w, http.StatusServiceUnavailable, b.String(), rt.reason, rt.describe(t.version), h.retryAfter)
	}
	rt.requests.Inc()
	if found {
		r.Header.Set(HeaderBucket, b.String())
	} else {
		r.Header.Del(HeaderBucket)
	}
	r.Header.Set(HeaderVersion, t.versionStr)
	if rt.pathPrefix != "" {
		r.URL.Path = rt.pathPrefix + r.URL.Path
		if r.URL.RawPath != "" {
			r.URL.RawPath = rt.pathPrefix + r.URL.RawPath
		}
	}
	caddyhttp.SetVar(r.Context(), routeVar, rt)
	return next.ServeHTTP(w, r)
}

// isUpgrade reports a long-lived upgraded connection: an HTTP/1.1
// Upgrade (WebSocket), or a CONNECT over HTTP/2 or HTTP/3 (WebSocket over
// extended CONNECT, which Caddy turns into an HTTP/1.1 upgrade upstream).
func isUpgrade(r *http.Request) bool {
	if r.Method == http.MethodConnect {
		return true
	}
	return r.Header.Get("Upgrade") != "" && headerHasToken(r.Header, "Connection", "upgrade")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// writeError answers a request that cannot be routed, in JSON.
func writeError(w http.ResponseWriter, status int, bucketName, reason, msg, retryAfter string) error {
	w.Header().Set("Content-Type", "application/json")
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.WriteHeader(status)
	body := map[string]string{"error": msg, "reason": reason}
	if bucketName != "" {
		body["bucket"] = bucketName
	}
	return json.NewEncoder(w).Encode(body)
}
