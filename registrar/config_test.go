package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSettingsFromDocumentedConfig(t *testing.T) {
	path := writeFile(t, "dtable_server_config.json", documentedConfig)
	s, err := parseSettings([]string{"-config", path}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if s.node.NodeID != "dtable-server-01" || s.node.NodeURL != "https://dtable-server-01.example.com/" ||
		s.node.LocalNodeURL != "http://172.17.30.94/" || len(s.etcd.Endpoints) != 3 {
		t.Fatalf("settings = %+v", s)
	}
	if s.ttl != 90*time.Second || s.layout.Prefix != "/dtable-cluster" {
		t.Errorf("defaults: ttl %v prefix %q", s.ttl, s.layout.Prefix)
	}

	s, err = parseSettings([]string{"-config", path, "-etcd", "127.0.0.1:1,127.0.0.1:2", "-node-id", "x",
		"-node-url", "https://x.example.com/", "-local-node-url", "http://10.0.0.9:5000/", "-prefix", "/other/",
		"-ttl", "1500ms", "-user", "root", "-password", "pw"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.etcd.Endpoints, []string{"127.0.0.1:1", "127.0.0.1:2"}) || s.node.NodeID != "x" ||
		s.node.NodeURL != "https://x.example.com/" || s.node.LocalNodeURL != "http://10.0.0.9:5000/" ||
		s.layout.Prefix != "/other" || s.ttlSeconds() != 2 || s.etcd.User != "root" {
		t.Fatalf("flags did not override: %+v", s)
	}
}

func TestBadConfigExitsTwoNamingFileAndLine(t *testing.T) {
	badURL := strings.Replace(documentedConfig, `"http://172.17.30.94/"`, `"172.17.30.94"`, 1)
	badJSON := strings.Replace(documentedConfig, `"node_id": "dtable-server-01",`, `"node_id": "dtable-server-01"`, 1)
	noNode := `{"cluster_config": {"etcd_host_list": ["e:2379"], "node_url": "http://a/", "local_node_url": "http://b/"}}`
	cases := []struct {
		name string
		args func(dir string) []string
		want string
	}{
		{"bad local_node_url", func(string) []string { return []string{"-config", writeFile(t, "c.json", badURL)} },
			`c.json:6: local_node_url "172.17.30.94" must start with http:// or https://`},
		{"missing comma", func(string) []string { return []string{"-config", writeFile(t, "c.json", badJSON)} },
			`c.json:5:5: invalid JSON`},
		{"missing node_id", func(string) []string { return []string{"-config", writeFile(t, "c.json", noNode)} },
			`node_id is not set: give -node-id, or "node_id" in cluster_config of`},
		{"missing file", func(string) []string { return []string{"-config", "/nonexistent/c.json"} },
			`/nonexistent/c.json: cannot read`},
		{"bad flag url", func(string) []string {
			return []string{"-config", writeFile(t, "c.json", documentedConfig), "-node-url", "nope"}
		}, `flag -node-url: node_url "nope"`},
		{"bad ttl", func(string) []string {
			return []string{"-config", writeFile(t, "c.json", documentedConfig), "-ttl", "10ms"}
		}, `flag -ttl 10ms`},
		{"no etcd", func(string) []string {
			return []string{"-node-id", "a", "-node-url", "http://a/", "-local-node-url", "http://b/"}
		}, `flag -etcd: no etcd endpoints`},
		{"bad etcd in file", func(string) []string {
			return []string{"-config", writeFile(t, "c.json", strings.Replace(documentedConfig, "etcd-01.example.com:2379", "etcd-01", 1))}
		}, `c.json:3: etcd endpoint "etcd-01"`},
		{"unknown flag", func(string) []string { return []string{"-bogus"} }, "flag provided but not defined: -bogus"},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		code := run(c.args(t.TempDir()), &stderr)
		if code != 2 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and %q", c.name, code, stderr.String(), c.want)
		}
	}
}
