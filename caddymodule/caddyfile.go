package caddymodule

import (
	"encoding/json"
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	httpcaddyfile.RegisterDirective("dtable_bucket_proxy", parseBucketProxy)
	httpcaddyfile.RegisterDirectiveOrder("dtable_bucket_proxy", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterHandlerDirective("dtable_cluster_admin", parseClusterAdmin)
	httpcaddyfile.RegisterDirectiveOrder("dtable_cluster_admin", httpcaddyfile.Before, "reverse_proxy")
}

// parseBucketProxy sets up dtable_bucket_proxy:
//
//	dtable_bucket_proxy [<matcher>] {
//	    etcd <endpoint...> | config <dtable_server_config.json>
//	    prefix <prefix>
//	    etcd_cacert|etcd_cert|etcd_key|etcd_user|etcd_password <value>
//	    uuid_path_prefix <prefix...>
//	    uuid_query <param...>
//	    no_uuid any_node|reject
//	    retry_after <duration>
//	    handoff_wait <duration>
//	    handoff_max_held_per_bucket <n>
//	    handoff_max_held <n>
//	    load_report off | <interval> [<proxy id>]
//	    <any reverse_proxy subdirective, except to and dynamic>
//	}
//
// It adapts to a route of two handlers: dtable_bucket, which finds the
// request's bucket and owner, and a plain reverse_proxy whose upstream is
// the dtable_bucket dynamic source, so Caddy's own proxy does transport,
// WebSocket, headers and retries. This follows Caddy's php_fastcgi
// directive (modules/caddyhttp/reverseproxy/fastcgi/caddyfile.go): read our
// own subdirectives, deleting their tokens as we go, then hand the
// remaining tokens to reverse_proxy's own Caddyfile unmarshaler.
//
// The list subdirectives (etcd, uuid_path_prefix, uuid_query) may be
// repeated; their lines add up, as reverse_proxy's to lines do. Any other
// subdirective of ours given twice is an error.
//
// Without a transport subdirective, reverse_proxy gets the directive's own
// http transport, sized for a cluster's internal traffic
// (transport_defaults.go), which differs from Caddy's default in one value:
//
//	keepalive_idle_conns_per_host 1024   (Caddy: 32)
//	keepalive_idle_conns          0      (no limit in all; as Caddy)
//	keepalive                     2m     (as Caddy)
//	keepalive_interval            30s    (as Caddy)
//	dial_timeout                  3s     (as Caddy)
//
// It is set when the handler is provisioned, not in the adapted JSON. A
// transport block replaces it as a whole: its unset fields take Caddy's
// defaults, as in reverse_proxy.
func parseBucketProxy(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() { // the directive name
		return nil, h.ArgErr()
	}
	userMatcherSet, err := h.ExtractMatcherSet() // also rewinds h
	if err != nil {
		return nil, err
	}
	h.Next() // the directive name again
	// A dispenser of the directive's tokens (without the matcher) that can
	// be reset for reverse_proxy once ours are deleted.
	d := h.NewFromNextSegment()
	d.Next() // the directive name
	if d.CountRemainingArgs() > 0 {
		return nil, d.Errf("dtable_bucket_proxy takes no upstream addresses: the bucket's owner is looked up in etcd")
	}
	handler := new(DtableBucket)
	if err := handler.unmarshalBlock(d); err != nil {
		return nil, err
	}

	d.Reset()
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	rp.DynamicUpstreamsRaw = caddyconfig.JSONModuleObject(DtableBucketUpstreams{}, "source", "dtable_bucket", nil)

	route := caddyhttp.Route{HandlersRaw: []json.RawMessage{
		caddyconfig.JSONModuleObject(handler, "handler", "dtable_bucket", nil),
		caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil),
	}}
	if userMatcherSet != nil {
		route.MatcherSetsRaw = []caddy.ModuleMap{userMatcherSet}
	}
	return []httpcaddyfile.ConfigValue{{Class: "route", Value: route}}, nil
}

// repeatableSubdirectives are the subdirectives of dtable_bucket_proxy
// whose lines add up; any other of ours may be given once.
var repeatableSubdirectives = map[string]bool{"etcd": true, "uuid_path_prefix": true, "uuid_query": true}

// unmarshalBlock reads dtable_bucket_proxy's block into h, deleting the
// tokens of our subdirectives so that reverse_proxy sees only its own.
func (h *DtableBucket) unmarshalBlock(d *caddyfile.Dispenser) error {
	seen := map[string]bool{} // our subdirectives given so far
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Nesting() > nesting+1 {
			continue // inside the block of a reverse_proxy subdirective
		}
		name := d.Val()
		args := d.RemainingArgs()
		if seen[name] && !repeatableSubdirectives[name] {
			return d.Errf("%s already specified", name)
		}
		ours, err := h.unmarshalSubdirective(d, name, args)
		if err != nil {
			return err
		}
		if !ours {
			continue // a reverse_proxy subdirective: leave it to reverse_proxy
		}
		if d.NextBlock(d.Nesting()) {
			return d.Errf("%s takes no block", name)
		}
		seen[name] = true
		d.DeleteN(len(args) + 1) // so that reverse_proxy does not see it
	}
	return nil
}

// unmarshalSubdirective reads one subdirective line of dtable_bucket_proxy
// into h; ours is false for one that is not ours (reverse_proxy's).
func (h *DtableBucket) unmarshalSubdirective(d *caddyfile.Dispenser, name string, args []string) (ours bool, err error) {
	switch name {
	case "uuid_path_prefix":
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		for _, p := range args {
			if err := checkPathPrefix(p); err != nil {
				return true, d.Errf("uuid_path_prefix: %v", err)
			}
		}
		h.UUIDPathPrefixes = append(h.UUIDPathPrefixes, args...)
	case "uuid_query":
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		for _, q := range args {
			if err := checkQueryParam(q); err != nil {
				return true, d.Errf("uuid_query: %v", err)
			}
		}
		h.UUIDQueryParams = append(h.UUIDQueryParams, args...)
	case "no_uuid":
		if len(args) != 1 || (args[0] != "any_node" && args[0] != "reject") {
			return true, d.Errf("no_uuid: want any_node or reject")
		}
		h.NoUUID = args[0]
	case "retry_after":
		// Unlike the other durations, a value that is no duration is
		// reported with the parser's own words.
		if len(args) != 1 {
			return true, d.ArgErr()
		}
		dur, err := caddy.ParseDuration(args[0])
		if err != nil {
			return true, d.Errf("retry_after: %v", err)
		}
		if dur <= 0 {
			return true, d.Errf("retry_after: want a positive duration, got %q", args[0])
		}
		h.RetryAfter = caddy.Duration(dur)
	case "handoff_wait":
		h.HandoffWait, err = parsePositiveDuration(d, name, args)
	case "handoff_max_held_per_bucket":
		h.MaxHeldInBucket, err = parsePositiveInt(d, name, args)
	case "handoff_max_held":
		h.MaxHeld, err = parsePositiveInt(d, name, args)
	case "load_report":
		lr, err := parseLoadReport(args)
		if err != nil {
			return true, d.Errf("load_report: %v", err)
		}
		h.LoadReport = lr
	case "to", "dynamic":
		return true, d.Errf("dtable_bucket_proxy chooses the upstream itself (the bucket's owner in etcd); remove %q", name)
	default:
		// seen is false: unmarshalBlock has refused a second line already.
		return h.EtcdConfig.unmarshalSubdirective(d, name, args, false)
	}
	return true, err
}

// parsePositiveDuration reads the one argument of subdirective name as a
// positive duration.
func parsePositiveDuration(d *caddyfile.Dispenser, name string, args []string) (caddy.Duration, error) {
	if len(args) != 1 {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(args[0])
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: want a positive duration, got %q", name, args[0])
	}
	return caddy.Duration(dur), nil
}

// parsePositiveInt reads the one argument of subdirective name as a
// positive whole number.
func parsePositiveInt(d *caddyfile.Dispenser, name string, args []string) (int, error) {
	if len(args) != 1 {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 {
		return 0, d.Errf("%s: want a positive whole number, got %q", name, args[0])
	}
	return n, nil
}

// parseClusterAdmin sets up dtable_cluster_admin:
//
//	dtable_cluster_admin [<matcher>] {
//	    etcd <endpoint...> | config <dtable_server_config.json>
//	    prefix <prefix>
//	    etcd_cacert|etcd_cert|etcd_key|etcd_user|etcd_password <value>
//	    request_timeout <duration>
//	    token <bearer token, e.g. {env.DTABLE_ADMIN_TOKEN}>
//	}
func parseClusterAdmin(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := new(DtableClusterAdmin)
	return a, a.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile reads the dtable_cluster_admin block (see
// parseClusterAdmin). etcd lines add up; any other subdirective given
// twice is an error.
func (a *DtableClusterAdmin) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		args := d.RemainingArgs()
		switch name {
		case "request_timeout":
			if seen[name] {
				return d.Errf("%s already specified", name)
			}
			dur, err := parsePositiveDuration(d, name, args)
			if err != nil {
				return err
			}
			a.RequestTimeout = dur
		case "token":
			if seen[name] {
				return d.Errf("%s already specified", name)
			}
			if len(args) != 1 {
				return d.ArgErr()
			}
			if args[0] == "" {
				return d.Errf("token: empty; give the token or a placeholder such as {env.DTABLE_ADMIN_TOKEN}")
			}
			a.Token = args[0]
		default:
			ours, err := a.EtcdConfig.unmarshalSubdirective(d, name, args, seen[name])
			if err != nil {
				return err
			}
			if !ours {
				return d.Errf("dtable_cluster_admin: unknown subdirective %q (known: etcd, config, prefix, etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password, request_timeout, token)", name)
			}
		}
		if d.NextBlock(d.Nesting()) {
			return d.Errf("%s takes no block", name)
		}
		seen[name] = true
	}
	return nil
}

// unmarshalSubdirective reads one of the subdirectives that say where the
// cluster is, which both directives take:
//
//	etcd <endpoint...>                    (repeatable: the lines add up)
//	config <dtable_server_config.json>    (its etcd_host_list, when etcd is not given)
//	prefix <etcd key prefix>
//	etcd_cacert <file>
//	etcd_cert <file>
//	etcd_key <file>
//	etcd_user <name>
//	etcd_password <password>
//
// name is the subdirective at d's cursor, args its arguments (already
// read), seen whether it was given before. It reports whether the
// subdirective is one of these.
func (c *EtcdConfig) unmarshalSubdirective(d *caddyfile.Dispenser, name string, args []string, seen bool) (bool, error) {
	var field *string
	switch name {
	case "etcd":
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		if slices.Contains(args, "") {
			return true, d.Errf("etcd: empty endpoint")
		}
		c.Etcd = append(c.Etcd, args...)
		return true, nil
	case "config":
		field = &c.ServerConfig
	case "prefix":
		field = &c.Prefix
	case "etcd_cacert":
		field = &c.EtcdCACert
	case "etcd_cert":
		field = &c.EtcdCert
	case "etcd_key":
		field = &c.EtcdKey
	case "etcd_user":
		field = &c.EtcdUser
	case "etcd_password":
		field = &c.EtcdPassword
	default:
		return false, nil
	}
	if seen {
		return true, d.Errf("%s already specified", name)
	}
	if len(args) != 1 {
		return true, d.ArgErr()
	}
	*field = args[0]
	return true, nil
}
