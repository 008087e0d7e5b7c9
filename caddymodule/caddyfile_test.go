package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t *testing.T, caddyfile string) (string, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	return string(out), err
}

func TestAdaptBucketProxyToReverseProxyJSON(t *testing.T) {
	out, err := adapt(t, `
:5550 {
	dtable_bucket_proxy {
		etcd etcd-01:2379 etcd-02:2379 etcd-03:2379
		prefix /dtable-cluster
		etcd_user root
		no_uuid reject
		retry_after 3s
		uuid_query dtable_uuid base
		header_up X-Prefix prefix
		lb_try_duration 2s
		transport http {
			dial_timeout 1s
		}
	}
	file_server
}
:5555 {
	dtable_cluster_admin {
		config /opt/dtable-server-proxy/conf/dtable_server_config.json
		request_timeout 5s
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []map[string]any `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatal(err)
	}
	proxy := cfg.Apps.HTTP.Servers["srv0"].Routes
	if len(proxy) != 1 {
		t.Fatalf("5550 routes: %s", out)
	}
	// Ordered before reverse_proxy (so before file_server) without an order line.
	handlers := proxy[0].Handle
	if len(handlers) != 3 || handlers[0]["handler"] != "dtable_bucket" || handlers[1]["handler"] != "reverse_proxy" || handlers[2]["handler"] != "file_server" {
		t.Fatalf("handlers: %v", handlers)
	}
	router, _ := json.Marshal(handlers[0])
	for _, want := range []string{`"etcd":["etcd-01:2379","etcd-02:2379","etcd-03:2379"]`, `"prefix":"/dtable-cluster"`,
		`"etcd_user":"root"`, `"no_uuid":"reject"`, `"retry_after":3000000000`, `"uuid_query_params":["dtable_uuid","base"]`} {
		if !strings.Contains(string(router), want) {
			t.Errorf("router JSON %s lacks %s", router, want)
		}
	}
	rp, _ := json.Marshal(handlers[1])
	for _, want := range []string{`"dynamic_upstreams":{"source":"dtable_bucket"}`, `"X-Prefix":["prefix"]`,
		`"try_duration":2000000000`, `"dial_timeout":1000000000`} {
		if !strings.Contains(string(rp), want) {
			t.Errorf("reverse_proxy JSON %s lacks %s", rp, want)
		}
	}
	if strings.Contains(string(rp), "upstreams\":[") || strings.Contains(string(rp), "etcd") {
		t.Errorf("reverse_proxy JSON got our settings or static upstreams: %s", rp)
	}
	admin, _ := json.Marshal(cfg.Apps.HTTP.Servers["srv1"].Routes[0].Handle[0])
	if !strings.Contains(string(admin), `"handler":"dtable_cluster_admin"`) || !strings.Contains(string(admin), `"request_timeout":5000000000`) ||
		!strings.Contains(string(admin), `"server_config":"/opt/dtable-server-proxy/conf/dtable_server_config.json"`) {
		t.Errorf("admin JSON: %s", admin)
	}
}

func TestAdaptErrors(t *testing.T) {
	cases := map[string]string{
		":5550 {\n dtable_bucket_proxy 127.0.0.1:5000 {\n etcd e:2379\n }\n}":           "takes no upstream addresses",
		":5550 {\n dtable_bucket_proxy {\n etcd e:2379\n to 127.0.0.1:5000\n }\n}":      `remove "to"`,
		":5550 {\n dtable_bucket_proxy {\n etcd e:2379\n dynamic srv x\n }\n}":          `remove "dynamic"`,
		":5550 {\n dtable_bucket_proxy {\n etcd\n }\n}":                                 "wrong argument count",
		":5550 {\n dtable_bucket_proxy {\n etcd e:2379\n no_uuid sometimes\n }\n}":      "no_uuid: want any_node or reject",
		":5550 {\n dtable_bucket_proxy {\n prefix a b\n }\n}":                           "wrong argument count",
		":5555 {\n dtable_cluster_admin {\n etcd e:2379\n rebalance_now\n }\n}":         `unknown subdirective "rebalance_now"`,
		":5555 {\n dtable_cluster_admin {\n etcd e:2379\n request_timeout never\n }\n}": "request_timeout: want a positive duration",
	}
	for in, want := range cases {
		if _, err := adapt(t, in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("adapt(%q) error = %v; want %q", in, err, want)
		}
	}
}

// Validating a config provisions the modules but must not wait for etcd:
// here etcd is unreachable (nothing listens on port 1).
func TestValidateDoesNotWaitForEtcd(t *testing.T) {
	out, err := adapt(t, ":15550 {\n dtable_bucket_proxy {\n etcd 127.0.0.1:1\n }\n}\n:15555 {\n dtable_cluster_admin {\n etcd 127.0.0.1:1\n }\n}")
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("validate took %v with etcd unreachable", took)
	}
	n := 0
	forEachFollower(func(*follower) { n++ })
	if n != 0 {
		t.Fatalf("%d shared followers left running after validate", n)
	}
}
