package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A broken dtable_server_config.json given with -config is a usage error
// (exit 2) whose message names the file, the line and the problem, for the
// daemon and for the commands alike; nothing is started.
func TestBrokenConfigFileExitsWithUsageError(t *testing.T) {
	t.Setenv("ETCDCTL_ENDPOINTS", "") // the file must be what names etcd
	files := map[string]struct{ content, want string }{
		"comment never closed":    {"{\n/* open\n\"cluster_config\": {}}", ":2:1: comment /* is never closed"},
		"bad JSON":                {"{\n \"cluster_config\": {\n  \"etcd_host_list\": [\"e:2379\"] \"node_id\": \"a\"\n }\n}", ":3:32: invalid JSON: invalid character"},
		"truncated":               {"{\n \"cluster_config\": {\n  \"etcd_host_list\": [\"e:2379\"", ":3:30: invalid JSON: the file ends early"},
		"no cluster_config":       {"{\n \"dtable_server\": {}\n}", `: no "cluster_config" object`},
		"etcd_host_list a number": {"{\"cluster_config\": {\n\"etcd_host_list\": 2379}}", `:2:19: "etcd_host_list" must be a list of strings`},
		"etcd_host a list":        {"{\"cluster_config\": {\n\"etcd_host\": [\"e:2379\"]}}", `:2:14: "etcd_host" must be a string`},
		"etcd_host_list empty":    {"{\"cluster_config\": {\n\"etcd_host_list\": []}}", ":2: no etcd endpoints"},
		"missing file":            {"", ": cannot read"},
	}
	for _, cmd := range []string{"run", "status"} {
		for name, f := range files {
			t.Run(cmd+"/"+name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "dtable_server_config.json")
				if name != "missing file" {
					if err := os.WriteFile(path, []byte(f.content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				_, stderr, code := runCapture(cmd, "-config", path)
				if code != 2 || !strings.Contains(stderr, "monitor "+cmd+": "+path+f.want) {
					t.Fatalf("exit %d, stderr %q; want exit 2 and %q", code, stderr, path+f.want)
				}
			})
		}
	}
}
