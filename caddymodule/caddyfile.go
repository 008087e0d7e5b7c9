package caddymodule

import (
	"encoding/json"

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

// clusterSubdirectives say where the cluster is; both directives take them:
//
//	etcd <endpoint...>
//	config <dtable_server_config.json>   (its etcd_host_list, when etcd is not given)
//	prefix <etcd key prefix>
//	etcd_cacert <file>
//	etcd_cert <file>
//	etcd_key <file>
//	etcd_user <name>
//	etcd_password <password>
var clusterSubdirectives = map[string]func(*EtcdConfig) *string{
	"config":        func(c *EtcdConfig) *string { return &c.ServerConfig },
	"prefix":        func(c *EtcdConfig) *string { return &c.Prefix },
	"etcd_cacert":   func(c *EtcdConfig) *string { return &c.EtcdCACert },
	"etcd_cert":     func(c *EtcdConfig) *string { return &c.EtcdCert },
	"etcd_key":      func(c *EtcdConfig) *string { return &c.EtcdKey },
	"etcd_user":     func(c *EtcdConfig) *string { return &c.EtcdUser },
	"etcd_password": func(c *EtcdConfig) *string { return &c.EtcdPassword },
	"etcd":          nil, // a list
}

// parseClusterSubdirective reads the cluster subdirective at the current
// token and returns how many arguments it had.
func parseClusterSubdirective(d *caddyfile.Dispenser, c *EtcdConfig) (int, error) {
	name := d.Val()
	args := d.RemainingArgs()
	if name == "etcd" {
		if len(args) == 0 {
			return 0, d.ArgErr()
		}
		c.Etcd = append(c.Etcd, args...)
		return len(args), nil
	}
	if len(args) != 1 {
		return 0, d.ArgErr()
	}
	*clusterSubdirectives[name](c) = args[0]
	return 1, nil
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
//	    <any reverse_proxy subdirective, except upstreams>
//	}
//
// It adapts to a route of two handlers: dtable_bucket, which finds the
// request's bucket and owner, and a plain reverse_proxy whose upstream is
// the dtable_bucket dynamic source. Caddy's own proxy so does transport,
// WebSocket, headers and retries.
func parseBucketProxy(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	userMatcherSet, err := h.ExtractMatcherSet()
	if err != nil {
		return nil, err
	}
	d := h.NewFromNextSegment()
	router := &DtableBucket{}
	for d.Next() {
		if d.CountRemainingArgs() > 0 {
			return nil, d.Errf("dtable_bucket_proxy takes no upstream addresses: the bucket's owner is looked up in etcd")
		}
		for d.NextBlock(0) {
			if d.Nesting() != 1 {
				continue // inside a reverse_proxy sub-block
			}
			var n int
			if _, ours := clusterSubdirectives[d.Val()]; ours {
				if n, err = parseClusterSubdirective(d, &router.EtcdConfig); err != nil {
					return nil, err
				}
			} else {
				var args []string
				switch d.Val() {
				case "uuid_path_prefix":
					args = d.RemainingArgs()
					if len(args) == 0 {
						return nil, d.ArgErr()
					}
					router.UUIDPathPrefixes = append(router.UUIDPathPrefixes, args...)
				case "uuid_query":
					args = d.RemainingArgs()
					if len(args) == 0 {
						return nil, d.ArgErr()
					}
					router.UUIDQueryParams = append(router.UUIDQueryParams, args...)
				case "no_uuid":
					args = d.RemainingArgs()
					if len(args) != 1 || (args[0] != "any_node" && args[0] != "reject") {
						return nil, d.Errf("no_uuid: want any_node or reject")
					}
					router.NoUUID = args[0]
				case "retry_after":
					args = d.RemainingArgs()
					if len(args) != 1 {
						return nil, d.ArgErr()
					}
					dur, err := caddy.ParseDuration(args[0])
					if err != nil {
						return nil, d.Errf("retry_after: %v", err)
					}
					router.RetryAfter = caddy.Duration(dur)
				case "to", "dynamic":
					return nil, d.Errf("dtable_bucket_proxy chooses the upstream itself (the bucket's owner in etcd); remove %q", d.Val())
				default:
					d.RemainingArgs() // a reverse_proxy subdirective: skip its arguments
					continue
				}
				n = len(args)
			}
			d.DeleteN(n + 1) // so reverse_proxy does not see it
		}
	}
	d.Reset()

	rp := &reverseproxy.Handler{}
	d.Next() // the directive name
	if err := rp.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	rp.DynamicUpstreamsRaw = caddyconfig.JSONModuleObject(DtableBucketUpstreams{}, "source", "dtable_bucket", nil)

	route := caddyhttp.Route{HandlersRaw: []json.RawMessage{
		caddyconfig.JSONModuleObject(router, "handler", "dtable_bucket", nil),
		caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil),
	}}
	if userMatcherSet != nil {
		route.MatcherSetsRaw = []caddy.ModuleMap{userMatcherSet}
	}
	return []httpcaddyfile.ConfigValue{{Class: "route", Value: route}}, nil
}

// parseClusterAdmin sets up dtable_cluster_admin:
//
//	dtable_cluster_admin [<matcher>] {
//	    etcd <endpoint...> | config <dtable_server_config.json>
//	    prefix <prefix>
//	    etcd_cacert|etcd_cert|etcd_key|etcd_user|etcd_password <value>
//	    request_timeout <duration>
//	}
func parseClusterAdmin(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := &DtableClusterAdmin{}
	return a, a.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile reads the dtable_cluster_admin block.
func (a *DtableClusterAdmin) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if _, ours := clusterSubdirectives[d.Val()]; ours {
			if _, err := parseClusterSubdirective(d, &a.EtcdConfig); err != nil {
				return err
			}
			continue
		}
		switch d.Val() {
		case "request_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("request_timeout: want a positive duration, got %q", d.Val())
			}
			a.RequestTimeout = caddy.Duration(dur)
		default:
			return d.Errf("dtable_cluster_admin: unknown subdirective %q (known: etcd, config, prefix, etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password, request_timeout)", d.Val())
		}
	}
	return nil
}
