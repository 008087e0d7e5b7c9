package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

// etcdEnv are the variables the etcd options read (see etcdclient).
var etcdEnv = []string{"ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_USER", "ETCDCTL_PASSWORD"}

// setEtcdEnv sets exactly env's ETCDCTL_* variables for the test; the
// others are empty, which counts as unset.
func setEtcdEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, name := range etcdEnv {
		t.Setenv(name, env[name])
	}
}

func TestSettings(t *testing.T) {
	path := writeFile(t, "dtable_server_config.json", documentedConfig)
	fileEndpoints := []string{"etcd-01.example.com:2379", "etcd-02.example.com:2379", "etcd-03.example.com:2379"}
	type want struct {
		endpoints                 []string
		nodeID, nodeURL, localURL string
		prefix                    string
		ttl                       time.Duration
		ttlSeconds                int64
		user                      string
	}
	fromFile := want{fileEndpoints, "dtable-server-01", "https://dtable-server-01.example.com/", "http://172.17.30.94/",
		"/dtable-cluster", 90 * time.Second, 90, ""}
	with := func(w want, change func(*want)) want { change(&w); return w }
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want want
	}{
		{"documented config file, defaults", nil, []string{"-config", path}, fromFile},
		{"flags override every field", nil, []string{"-config", path, "-etcd", "127.0.0.1:1,127.0.0.1:2", "-node-id", "x",
			"-node-url", "https://x.example.com/", "-local-node-url", "http://10.0.0.9:5000/", "-prefix", "/other/",
			"-ttl", "1500ms", "-user", "root", "-password", "pw"},
			want{[]string{"127.0.0.1:1", "127.0.0.1:2"}, "x", "https://x.example.com/", "http://10.0.0.9:5000/",
				"/other", 1500 * time.Millisecond, 2, "root"}},
		{"-endpoints overrides etcd_host_list", nil, []string{"-config", path, "-endpoints", "127.0.0.1:3"},
			with(fromFile, func(w *want) { w.endpoints = []string{"127.0.0.1:3"} })},
		{"$ETCDCTL_ENDPOINTS overrides etcd_host_list", map[string]string{"ETCDCTL_ENDPOINTS": "127.0.0.1:4,127.0.0.1:5"},
			[]string{"-config", path}, with(fromFile, func(w *want) { w.endpoints = []string{"127.0.0.1:4", "127.0.0.1:5"} })},
		{"-etcd overrides $ETCDCTL_ENDPOINTS", map[string]string{"ETCDCTL_ENDPOINTS": "127.0.0.1:4"},
			[]string{"-config", path, "-etcd", "127.0.0.1:1"}, with(fromFile, func(w *want) { w.endpoints = []string{"127.0.0.1:1"} })},
		{"$ETCDCTL_USER", map[string]string{"ETCDCTL_USER": "envuser"}, []string{"-config", path},
			with(fromFile, func(w *want) { w.user = "envuser" })},
		{"no config file", nil, []string{"-etcd", "127.0.0.1:1", "-node-id", "n", "-node-url", "http://a/", "-local-node-url", "http://b/"},
			want{[]string{"127.0.0.1:1"}, "n", "http://a/", "http://b/", "/dtable-cluster", 90 * time.Second, 90, ""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			setEtcdEnv(t, tc.env)
			s, err := parseSettings(tc.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			got := want{s.etcd.Endpoints, s.node.NodeID, s.node.NodeURL, s.node.LocalNodeURL,
				s.layout.Prefix, s.ttl, s.ttlSeconds(), s.etcd.User}
			if !slices.Equal(got.endpoints, tc.want.endpoints) || got.nodeID != tc.want.nodeID || got.nodeURL != tc.want.nodeURL ||
				got.localURL != tc.want.localURL || got.prefix != tc.want.prefix || got.ttl != tc.want.ttl ||
				got.ttlSeconds != tc.want.ttlSeconds || got.user != tc.want.user {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestBadConfigExitsTwoNamingFileAndLine(t *testing.T) {
	badURL := strings.Replace(documentedConfig, `"http://172.17.30.94/"`, `"172.17.30.94"`, 1)
	badJSON := strings.Replace(documentedConfig, `"node_id": "dtable-server-01",`, `"node_id": "dtable-server-01"`, 1)
	noNode := `{"cluster_config": {"etcd_host_list": ["e:2379"], "node_url": "http://a/", "local_node_url": "http://b/"}}`
	flagsOnly := []string{"-node-id", "a", "-node-url", "http://a/", "-local-node-url", "http://b/"}
	cases := []struct {
		name    string
		env     map[string]string
		args    func() []string
		want    string
		notWant string // a wrong attribution the message must not make
	}{
		{"bad local_node_url", nil, func() []string { return []string{"-config", writeFile(t, "c.json", badURL)} },
			`c.json:6: local_node_url "172.17.30.94" must start with http:// or https://`, ""},
		{"missing comma", nil, func() []string { return []string{"-config", writeFile(t, "c.json", badJSON)} },
			`c.json:5:5: invalid JSON`, ""},
		{"missing node_id", nil, func() []string { return []string{"-config", writeFile(t, "c.json", noNode)} },
			`node_id is not set: give -node-id, or "node_id" in cluster_config of`, ""},
		{"missing file", nil, func() []string { return []string{"-config", "/nonexistent/c.json"} },
			`/nonexistent/c.json: cannot read`, ""},
		{"bad flag url", nil, func() []string {
			return []string{"-config", writeFile(t, "c.json", documentedConfig), "-node-url", "nope"}
		}, `flag -node-url: node_url "nope"`, ""},
		{"bad ttl", nil, func() []string {
			return []string{"-config", writeFile(t, "c.json", documentedConfig), "-ttl", "10ms"}
		}, `flag -ttl 10ms`, ""},
		{"no etcd", nil, func() []string { return flagsOnly }, `flag -etcd: no etcd endpoints`, ""},
		{"bad etcd in file", nil, func() []string {
			return []string{"-config", writeFile(t, "c.json", strings.Replace(documentedConfig, "etcd-01.example.com:2379", "etcd-01", 1))}
		}, `c.json:3: etcd endpoint "etcd-01"`, ""},
		{"bad -endpoints", nil, func() []string { return append([]string{"-endpoints", "etcd-01"}, flagsOnly...) },
			`flag -endpoints: etcd endpoint "etcd-01"`, ""},
		{"bad $ETCDCTL_ENDPOINTS over a good file", map[string]string{"ETCDCTL_ENDPOINTS": "etcd-01"}, func() []string {
			return []string{"-config", writeFile(t, "c.json", documentedConfig)}
		}, `etcd endpoint "etcd-01": want host:port, e.g. etcd-01.example.com:2379 (from $ETCDCTL_ENDPOINTS)`, "c.json"},
		{"$ETCDCTL_CERT without a key is not the file's fault", map[string]string{"ETCDCTL_CERT": "c.pem"}, func() []string {
			return []string{"-config", writeFile(t, "c.json", documentedConfig)}
		}, `etcd TLS: -cert and -key go together`, "c.json"},
		{"unknown flag", nil, func() []string { return []string{"-bogus"} }, "flag provided but not defined: -bogus", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			setEtcdEnv(t, tc.env)
			var stderr bytes.Buffer
			code := run(tc.args(), &stderr)
			if code != 2 || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 2 and %q", code, stderr.String(), tc.want)
			}
			if tc.notWant != "" && strings.Contains(stderr.String(), tc.notWant) {
				t.Errorf("stderr %q names %q", stderr.String(), tc.notWant)
			}
		})
	}
}
