package caddymodule

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// DtableBucketUpstreams is the http.reverse_proxy.upstreams.dtable_bucket
// dynamic upstream source: it returns the one node the DtableBucket handler
// chose for the request. Caddy calls it again on every retry; if the
// bucket's owner changed meanwhile it fails (the request is then not sent
// anywhere and ends in 503, with {http.dtable_bucket.reason}
// moved_during_request), so a request is never dialled to a node that no
// longer owns its bucket.
type DtableBucketUpstreams struct{}

// CaddyModule returns the Caddy module information.
func (DtableBucketUpstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.dtable_bucket",
		New: func() caddy.Module { return new(DtableBucketUpstreams) },
	}
}

var errNoRoute = errors.New("dtable_bucket upstreams: no route chosen for this request; " +
	"the dtable_bucket handler must run before reverse_proxy (the dtable_bucket_proxy directive sets this up)")

// GetUpstreams returns a fresh Upstream (Caddy mutates them) for the
// chosen node.
func (DtableBucketUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	chosen, ok := caddyhttp.GetVar(r.Context(), routeVar).(*route)
	if !ok || chosen == nil {
		return nil, errNoRoute
	}
	if _, now := chosen.follower.lookup(chosen.bucket); !now.sameTarget(chosen) {
		errorCounter(reasonMoved).Inc()
		// reverse_proxy ends the request with 503; handle_errors and logs
		// see why.
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set(placeholderReason, reasonMoved)
		}
		return nil, fmt.Errorf("bucket %s moved from %s to %q during the request; not sending it to the old owner",
			chosen.bucket, chosen.nodeID, now.nodeID)
	}
	return []*reverseproxy.Upstream{{Dial: chosen.dial}}, nil
}
