package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the JSON of testdata/*.caddyfiletest with what the Caddyfile adapts to")

func adapt(t *testing.T, caddyfile string) (string, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	return string(out), err
}

// TestCaddyfileAdapt adapts each testdata/*.caddyfiletest and compares the
// result with the JSON in the file, as Caddy's own caddyfile_adapt tests
// do (caddytest/integration): the Caddyfile, a line of ten dashes, the
// JSON. go test -run TestCaddyfileAdapt -update rewrites the JSON parts.
func TestCaddyfileAdapt(t *testing.T) {
	// Caddyfile.example reads these with defaults; the golden JSON has the defaults.
	for _, name := range []string{"ETCD_ENDPOINTS", "DTABLE_PREFIX", "DTABLE_ADMIN_BIND"} {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/*.caddyfiletest: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".caddyfiletest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, expected, ok := strings.Cut(string(data), "----------")
			if !ok {
				t.Fatalf("%s: no ---------- line between the Caddyfile and the JSON", file)
			}
			caddyfile, expected = strings.TrimSpace(caddyfile)+"\n", strings.TrimSpace(expected)
			if *update {
				out, err := adapt(t, caddyfile)
				if err != nil {
					t.Fatal(err)
				}
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, []byte(out), "", "\t"); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(caddyfile+"----------\n"+pretty.String()+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, file, caddyfile, "caddyfile", expected) {
				t.Errorf("%s: the Caddyfile does not adapt to the JSON below it (diff on stdout)", file)
			}
		})
	}
}

func TestCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name      string
		caddyfile string
		want      string
	}{
		// dtable_bucket_proxy
		{"upstream address", "dtable_bucket_proxy 127.0.0.1:5000 {\n etcd e:2379\n}", "takes no upstream addresses"},
		{"to refused", "dtable_bucket_proxy {\n etcd e:2379\n to 127.0.0.1:5000\n}", `remove "to"`},
		{"dynamic refused", "dtable_bucket_proxy {\n etcd e:2379\n dynamic srv x\n}", `remove "dynamic"`},
		{"unknown subdirective", "dtable_bucket_proxy {\n etcd e:2379\n etcd_passwd x\n}", "unrecognized subdirective etcd_passwd, at Caddyfile:4"},
		{"etcd without endpoints", "dtable_bucket_proxy {\n etcd\n}", "wrong argument count"},
		{"prefix with two values", "dtable_bucket_proxy {\n prefix a b\n}", "wrong argument count"},
		{"prefix twice", "dtable_bucket_proxy {\n etcd e:2379\n prefix /a\n prefix /b\n}", "prefix already specified, at Caddyfile:5"},
		{"config twice", "dtable_bucket_proxy {\n config a.json\n config b.json\n}", "config already specified"},
		{"etcd_password twice", "dtable_bucket_proxy {\n etcd e:2379\n etcd_password a\n etcd_password b\n}", "etcd_password already specified"},
		{"prefix with a block", "dtable_bucket_proxy {\n etcd e:2379\n prefix /a {\n x\n }\n}", "prefix takes no block"},
		{"uuid_query without names", "dtable_bucket_proxy {\n etcd e:2379\n uuid_query\n}", "wrong argument count"},
		{"uuid_path_prefix without prefixes", "dtable_bucket_proxy {\n etcd e:2379\n uuid_path_prefix\n}", "wrong argument count"},
		{"no_uuid unknown", "dtable_bucket_proxy {\n etcd e:2379\n no_uuid sometimes\n}", "no_uuid: want any_node or reject"},
		{"no_uuid twice", "dtable_bucket_proxy {\n etcd e:2379\n no_uuid reject\n no_uuid any_node\n}", "no_uuid already specified"},
		{"retry_after not a duration", "dtable_bucket_proxy {\n etcd e:2379\n retry_after soon\n}", "retry_after: "},
		{"retry_after twice", "dtable_bucket_proxy {\n etcd e:2379\n retry_after 1s\n retry_after 2s\n}", "retry_after already specified"},
		{"load_report without a value", "dtable_bucket_proxy {\n etcd e:2379\n load_report\n}", "load_report: want off, or an interval"},
		{"load_report not a duration", "dtable_bucket_proxy {\n etcd e:2379\n load_report often\n}", `load_report: interval "often"`},
		{"load_report zero", "dtable_bucket_proxy {\n etcd e:2379\n load_report 0s\n}", `load_report: interval "0s"`},
		{"load_report bad id", "dtable_bucket_proxy {\n etcd e:2379\n load_report 30s a/b\n}", `proxy id "a/b"`},
		{"load_report twice", "dtable_bucket_proxy {\n etcd e:2379\n load_report off\n load_report 30s\n}", "load_report already specified"},
		{"handoff_wait not a duration", "dtable_bucket_proxy {\n etcd e:2379\n handoff_wait soon\n}", "handoff_wait: want a positive duration"},
		{"handoff_wait zero", "dtable_bucket_proxy {\n etcd e:2379\n handoff_wait 0s\n}", "handoff_wait: want a positive duration"},
		{"handoff_wait twice", "dtable_bucket_proxy {\n etcd e:2379\n handoff_wait 1s\n handoff_wait 2s\n}", "handoff_wait already specified, at Caddyfile:5"},
		{"handoff_wait without a value", "dtable_bucket_proxy {\n etcd e:2379\n handoff_wait\n}", "wrong argument count"},
		{"handoff_max_held_per_bucket not a number", "dtable_bucket_proxy {\n etcd e:2379\n handoff_max_held_per_bucket many\n}", "handoff_max_held_per_bucket: want a positive whole number"},
		{"handoff_max_held_per_bucket zero", "dtable_bucket_proxy {\n etcd e:2379\n handoff_max_held_per_bucket 0\n}", "handoff_max_held_per_bucket: want a positive whole number"},
		{"handoff_max_held_per_bucket twice", "dtable_bucket_proxy {\n etcd e:2379\n handoff_max_held_per_bucket 1\n handoff_max_held_per_bucket 2\n}", "handoff_max_held_per_bucket already specified"},
		{"handoff_max_held negative", "dtable_bucket_proxy {\n etcd e:2379\n handoff_max_held -5\n}", "handoff_max_held: want a positive whole number"},
		{"handoff_max_held twice", "dtable_bucket_proxy {\n etcd e:2379\n handoff_max_held 10\n handoff_max_held 10\n}", "handoff_max_held already specified"},
		{"handoff_max_held with two values", "dtable_bucket_proxy {\n etcd e:2379\n handoff_max_held 1 2\n}", "wrong argument count"},
		{"bad reverse_proxy subdirective", "dtable_bucket_proxy {\n etcd e:2379\n lb_try_duration often\n}", "bad duration value"},
		{"unknown subdirective, close to ours", "dtable_bucket_proxy {\n etcd e:2379\n uuid_paths /x/\n}", "unrecognized subdirective uuid_paths"},
		{"unknown subdirective with a block", "dtable_bucket_proxy {\n etcd e:2379\n handoff {\n wait 1s\n }\n}", "unrecognized subdirective handoff"},
		{"etcd with an empty endpoint", "dtable_bucket_proxy {\n etcd e:2379 \"\"\n}", "etcd: empty endpoint"},
		{"etcd_cacert twice", "dtable_bucket_proxy {\n etcd e:2379\n etcd_cacert a.pem\n etcd_cacert b.pem\n}", "etcd_cacert already specified"},
		{"etcd_user twice", "dtable_bucket_proxy {\n etcd e:2379\n etcd_user a\n etcd_user b\n}", "etcd_user already specified"},
		{"config with two files", "dtable_bucket_proxy {\n config a.json b.json\n}", "wrong argument count"},
		{"uuid_path_prefix without a leading slash", "dtable_bucket_proxy {\n etcd e:2379\n uuid_path_prefix dtables/\n}", `uuid_path_prefix: "dtables/" must start with /`},
		{"uuid_path_prefix with a dot segment", "dtable_bucket_proxy {\n etcd e:2379\n uuid_path_prefix /api/../dtables/\n}", `uuid_path_prefix: "/api/../dtables/"`},
		{"uuid_query with an =", "dtable_bucket_proxy {\n etcd e:2379\n uuid_query dtable_uuid=x\n}", `uuid_query: "dtable_uuid=x" is not a query parameter name`},
		{"uuid_query with a bracket", "dtable_bucket_proxy {\n etcd e:2379\n uuid_query uuid[]\n}", `uuid_query: "uuid[]" is not a query parameter name`},
		{"no_uuid with a block", "dtable_bucket_proxy {\n etcd e:2379\n no_uuid reject {\n x\n }\n}", "no_uuid takes no block"},
		{"retry_after zero", "dtable_bucket_proxy {\n etcd e:2379\n retry_after 0s\n}", "retry_after: want a positive duration"},
		{"retry_after negative", "dtable_bucket_proxy {\n etcd e:2379\n retry_after -5s\n}", "retry_after: want a positive duration"},
		{"handoff_wait negative", "dtable_bucket_proxy {\n etcd e:2379\n handoff_wait -1s\n}", "handoff_wait: want a positive duration"},
		{"handoff_max_held not a whole number", "dtable_bucket_proxy {\n etcd e:2379\n handoff_max_held 1.5\n}", "handoff_max_held: want a positive whole number"},
		{"token in the proxy site", "dtable_bucket_proxy {\n etcd e:2379\n token x\n}", "unrecognized subdirective token"},
		// dtable_cluster_admin
		{"admin: argument", "dtable_cluster_admin e:2379", "wrong argument count"},
		{"admin: unknown subdirective", "dtable_cluster_admin {\n etcd e:2379\n rebalance_now\n}", `unknown subdirective "rebalance_now"`},
		{"admin: request_timeout not a duration", "dtable_cluster_admin {\n etcd e:2379\n request_timeout never\n}", "request_timeout: want a positive duration"},
		{"admin: request_timeout twice", "dtable_cluster_admin {\n etcd e:2379\n request_timeout 1s\n request_timeout 2s\n}", "request_timeout already specified"},
		{"admin: prefix twice", "dtable_cluster_admin {\n etcd e:2379\n prefix /a\n prefix /b\n}", "prefix already specified"},
		{"admin: etcd_user with two values", "dtable_cluster_admin {\n etcd e:2379\n etcd_user a b\n}", "wrong argument count"},
		{"admin: etcd with a block", "dtable_cluster_admin {\n etcd e:2379 {\n x\n }\n}", "etcd takes no block"},
		{"admin: token without a value", "dtable_cluster_admin {\n etcd e:2379\n token\n}", "wrong argument count"},
		{"admin: token with two values", "dtable_cluster_admin {\n etcd e:2379\n token a b\n}", "wrong argument count"},
		{"admin: token twice", "dtable_cluster_admin {\n etcd e:2379\n token a\n token b\n}", "token already specified"},
		{"admin: token empty", "dtable_cluster_admin {\n etcd e:2379\n token \"\"\n}", "token: empty"},
		{"admin: unknown subdirective, close to ours", "dtable_cluster_admin {\n etcd e:2379\n tokn x\n}", `unknown subdirective "tokn"`},
		{"admin: a proxy subdirective", "dtable_cluster_admin {\n etcd e:2379\n lb_try_duration 1s\n}", `unknown subdirective "lb_try_duration"`},
		{"admin: request_timeout zero", "dtable_cluster_admin {\n etcd e:2379\n request_timeout 0s\n}", "request_timeout: want a positive duration"},
		{"admin: token with a block", "dtable_cluster_admin {\n etcd e:2379\n token x {\n y\n }\n}", "token takes no block"},
		{"admin: config twice", "dtable_cluster_admin {\n config a.json\n config b.json\n}", "config already specified"},
		{"admin: etcd_key twice", "dtable_cluster_admin {\n etcd e:2379\n etcd_key a\n etcd_key b\n}", "etcd_key already specified"},
		{"admin: etcd with an empty endpoint", "dtable_cluster_admin {\n etcd \"\"\n}", "etcd: empty endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := adapt(t, ":5550 {\n"+tt.caddyfile+"\n}\n")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("adapt error = %v; want it to contain %q", err, tt.want)
			}
		})
	}
}

// Validating a config provisions the modules but must not wait for etcd:
// here etcd is unreachable (nothing listens on port 1), or not running
// (Caddyfile.example's default endpoint).
func TestValidateDoesNotWaitForEtcd(t *testing.T) {
	example, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		caddyfile string
	}{
		{"unreachable etcd", ":15550 {\n dtable_bucket_proxy {\n etcd 127.0.0.1:1\n }\n}\n:15555 {\n dtable_cluster_admin {\n etcd 127.0.0.1:1\n }\n}"},
		{"Caddyfile.example", string(example)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := adapt(t, tt.caddyfile)
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
		})
	}
}
