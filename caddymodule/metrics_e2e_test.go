package caddymodule

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Two shared followers of one prefix (the proxy site names etcd by URL,
// the admin site by a dtable_server_config.json with host:port): /metrics
// still answers, with each series once, and the admin API lists both.
func TestTwoFollowersOfOnePrefix(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "dtable_server_config.json")
	setupWith(t, extraConfig{adminEtcd: "config " + conf, beforeLoad: func(e *env) {
		hostPort := strings.TrimPrefix(e.etcd.Endpoints()[0], "http://")
		os.WriteFile(conf, fmt.Appendf(nil, `{"cluster_config": {"etcd_host_list": [%q]}}`, hostPort), 0o644)
	}})
	var followers []*follower
	forEachFollower(func(fw *follower) { followers = append(followers, fw) })
	if len(followers) != 2 || followers[0].layout.Prefix != followers[1].layout.Prefix {
		t.Fatalf("%d followers; want two of one prefix", len(followers))
	}
	a := do(t, "GET", proxyURL("/dtables/"+uuidIn(5)), nil) // counted in requests_total
	if a.status != 200 {
		t.Fatalf("proxy: %d %s", a.status, a.raw)
	}

	m := do(t, "GET", fmt.Sprintf("http://localhost:%d/metrics", adminPort), nil)
	if m.status != 200 {
		t.Fatalf("/metrics: %d %s", m.status, m.raw)
	}
	seen := map[string]int{}
	for _, l := range strings.Split(m.raw, "\n") {
		if strings.HasPrefix(l, "caddy_dtable_") {
			series, _, _ := strings.Cut(l, " ")
			seen[series]++
		}
	}
	for series, n := range seen {
		if n > 1 {
			t.Errorf("%s appears %d times", series, n)
		}
	}
	for _, want := range []string{"caddy_dtable_assignment_version", "caddy_dtable_etcd_connected", "caddy_dtable_nodes", "caddy_dtable_assignment_age_seconds"} {
		found := 0
		for series := range seen {
			if strings.HasPrefix(series, want+"{") && strings.Contains(series, `prefix="/dtable-cluster"`) {
				found++
			}
		}
		if found == 0 {
			t.Errorf("/metrics has no %s of /dtable-cluster:\n%s", want, grepLines(m.raw, "caddy_dtable"))
		}
	}
	if metric(t, `caddy_dtable_requests_total{node="n3"}`) < 1 {
		t.Errorf("requests_total{node=n3} missing:\n%s", grepLines(m.raw, "caddy_dtable_requests"))
	}

	// The admin API lists both, each with its etcd endpoints.
	api := do(t, "GET", fmt.Sprintf("http://localhost:%d/dtable-cluster/status", adminPort), nil)
	var views map[string]struct {
		Prefix  string   `json:"prefix"`
		Etcd    []string `json:"etcd"`
		Version int64    `json:"version"`
	}
	if err := json.Unmarshal([]byte(api.raw), &views); err != nil || api.status != 200 {
		t.Fatalf("admin API: %d %v %s", api.status, err, api.raw)
	}
	etcds := map[string]bool{}
	for key, v := range views {
		if !strings.HasPrefix(key, "/dtable-cluster") || v.Version != 1 {
			t.Errorf("admin API: %q: %+v", key, v)
		}
		etcds[strings.Join(v.Etcd, ",")] = true
	}
	if len(views) != 2 || len(etcds) != 2 {
		t.Fatalf("admin API lists %d views (%v); want both followers of /dtable-cluster:\n%s", len(views), etcds, api.raw)
	}
	for _, path := range []string{"/dtable-cluster/nodes", "/dtable-cluster/buckets"} {
		var out map[string]json.RawMessage
		r := do(t, "GET", fmt.Sprintf("http://localhost:%d%s", adminPort, path), nil)
		if json.Unmarshal([]byte(r.raw), &out); r.status != 200 || len(out) != 2 {
			t.Errorf("%s: %d, %d views; want 2", path, r.status, len(out))
		}
	}
}

func TestEtcdLabel(t *testing.T) {
	for _, tt := range []struct {
		name      string
		endpoints []string
		want      string
	}{
		{"schemes and case dropped, sorted", []string{"etcd-02:2379", "http://ETCD-01:2379/", "https://etcd-03:2379"}, "etcd-01:2379,etcd-02:2379,etcd-03:2379"},
		{"one endpoint written two ways", []string{"etcd-01:2379", "http://etcd-01:2379"}, "etcd-01:2379"},
		{"one address", []string{"127.0.0.1:2379"}, "127.0.0.1:2379"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := etcdLabel(tt.endpoints); got != tt.want {
				t.Errorf("etcdLabel(%q) = %q; want %q", tt.endpoints, got, tt.want)
			}
		})
	}
}
