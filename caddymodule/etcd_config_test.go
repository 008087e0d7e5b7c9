package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// A broken dtable_server_config.json named by `config` makes provisioning
// fail (Caddy does not start or reload with it), and the error names the
// file, the line and the problem. Both directives read the file the same
// way; each case runs for both.
func TestBrokenServerConfigFailsProvisioning(t *testing.T) {
	cases := []struct {
		name    string
		content string // "" with missing: no file at all
		missing bool
		want    string // after the file's path
	}{
		{"comment never closed", "{\n/* open\n\"cluster_config\": {}}", false, ":2:1: comment /* is never closed"},
		{"bad JSON", "{\n  \"cluster_config\": {\n    \"etcd_host_list\": [\"e:2379\"] \"node_id\": \"a\"\n  }\n}", false, ":3:34: invalid JSON: invalid character"},
		{"truncated", "{\n  \"cluster_config\": {\n    \"etcd_host_list\": [\"e:2379\"", false, ":3:32: invalid JSON: the file ends early"},
		{"no cluster_config", "{\n  \"dtable_server\": {}\n}", false, `: no "cluster_config" object`},
		{"etcd_host_list a string", "{\"cluster_config\": {\n\"etcd_host_list\": \"etcd:2379\"}}", false, `:2:19: "etcd_host_list" must be a list of strings`},
		{"cluster_config a list", "{\n\"cluster_config\": [1]}", false, `:2:19: "cluster_config" must be an object`},
		{"etcd_host_list empty", "{\"cluster_config\": {\n\"etcd_host_list\": []}}", false, ":2: no etcd endpoints"},
		{"missing file", "", true, ": cannot read"},
	}
	for _, directive := range []string{"dtable_bucket_proxy", "dtable_cluster_admin"} {
		for _, tc := range cases {
			t.Run(directive+"/"+tc.name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "dtable_server_config.json")
				if !tc.missing {
					if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				err := validateCaddyfile(t, "{\n\tadmin off\n}\nhttp://127.0.0.1:1 {\n\t"+directive+" {\n\t\tconfig "+path+"\n\t}\n}\n")
				if err == nil {
					t.Fatal("provisioning succeeded with a broken config file")
				}
				if !strings.Contains(err.Error(), path+tc.want) {
					t.Fatalf("error %q; want it to name %s%s", err, path, tc.want)
				}
			})
		}
	}
}

// validateCaddyfile adapts a Caddyfile and provisions it as a load would,
// without starting anything (caddy.Validate): the error is what a start or
// a reload with it reports.
func validateCaddyfile(t *testing.T, caddyfile string) error {
	t.Helper()
	raw, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapt: %v (warnings %v)", err, warnings)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&cfg)
}
