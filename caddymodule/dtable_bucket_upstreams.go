package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// DtableBucketUpstreams is the http.reverse_proxy.upstreams.dtable_bucket
// dynamic upstream source: it returns the one node the DtableBucket handler
// chose for the request. Caddy calls it again on every retry; if the
// bucket's route changed meanwhile (its owner moved or is no longer
// registered), the request is not sent to the old owner: the source aborts
// the attempt (errRouteChanged) and the handler sends the request again
// by the newest table at once, so it reaches the new owner (or is held
// while the bucket moves, or gets the module's 503) instead of waiting
// out lb_try_duration. Used without the handler's attempt (not through
// dtable_bucket_proxy), it fails instead, with {http.dtable_bucket.reason}
// moved_during_request.
type DtableBucketUpstreams struct{}

// CaddyModule returns the Caddy module information.
func (DtableBucketUpstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.dtable_bucket",
		New: func() caddy.Module { return new(DtableBucketUpstreams) },
	}
}

// Provision gives the reverse_proxy handler the directive's default
// transport when its config names none (transport_defaults.go).
func (*DtableBucketUpstreams) Provision(ctx caddy.Context) error {
	return provisionTransportDefaults(ctx)
}

var errNoRoute = errors.New("dtable_bucket upstreams: no route chosen for this request; " +
	"the dtable_bucket handler must run before reverse_proxy (the dtable_bucket_proxy directive sets this up)")

// GetUpstreams returns a fresh Upstream (Caddy mutates them) for the
// chosen node.
func (DtableBucketUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	c, ok := caddyhttp.GetVar(r.Context(), routeVar).(*upstreamChoice)
	if !ok || c == nil || c.route == nil {
		return nil, errNoRoute
	}
	if valid, t, now := c.valid(); !valid {
		if c.attempting {
			c.changed = true
			panic(errRouteChanged) // recovered by upstreamChoice.run
		}
		errorCounter(reasonMoved).Inc()
		// reverse_proxy ends the request with 503; handle_errors and logs
		// see why.
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set(placeholderReason, reasonMoved)
		}
		return nil, errors.New(c.describeChange(t, now) + "; not sending it to the old owner")
	}
	return []*reverseproxy.Upstream{{Dial: c.route.dial}}, nil
}
