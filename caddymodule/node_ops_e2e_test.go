package caddymodule

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// POST /drain/<node> and /undrain/<node> reach the leading monitor as
// POST /rebalance/ does, behind the same token and protections, with the
// same answers: 200, 409 when refused, 503 without a monitor.
func TestDrainAndUndrainThroughTheAdminSite(t *testing.T) {
	e := setupWith(t, extraConfig{adminBlock: "\t\ttoken " + pageToken})
	auth := "Bearer " + pageToken
	post := func(target string, header map[string]string) answer {
		h := withBody(map[string]string{"Authorization": auth})
		for k, v := range header {
			h[k] = v
		}
		return rawDo(t, siteAdminPort, "POST", target, h)
	}
	for _, tt := range []struct {
		name, target string
		header       map[string]string
		status       int
		message      string
	}{
		{"no token", "/drain/n3", map[string]string{"Authorization": ""}, 401, "token"},
		{"cross-site", "/drain/n3", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, 403, "cross-origin"},
		{"form post", "/undrain/n3", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "form posts are refused"},
		{"bad node id", "/drain/bad%20node", nil, 400, "node"},
		{"no node", "/undrain/", nil, 400, "node"},
		{"dry_run=yes", "/drain/n3?dry_run=yes", nil, 400, `dry_run: "yes"`},
		{"GET", "/drain/n3", map[string]string{}, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "GET" {
				if a := rawDo(t, siteAdminPort, "GET", tt.target, map[string]string{"Authorization": auth}); a.status != 405 {
					t.Fatalf("GET %s: %d %s; want 405", tt.target, a.status, a.raw)
				}
				return
			}
			a := post(tt.target, tt.header)
			if a.status != tt.status || !strings.Contains(a.body["error"], tt.message) {
				t.Fatalf("POST %s %v: %d %s; want %d saying %q", tt.target, tt.header, a.status, a.raw, tt.status, tt.message)
			}
		})
	}
	if a := post("/drain/n3", nil); a.status != 503 || !strings.Contains(a.body["error"], "no monitor is running") || a.header.Get("Retry-After") == "" {
		t.Fatalf("drain without a monitor: %d %s", a.status, a.raw)
	}

	mon := exec.Command(buildMonitor(t), "-etcd", strings.Join(e.etcd.Endpoints(), ","), "-settle", "0s", "-interval", "1s")
	mon.Stdout, mon.Stderr = io.Discard, io.Discard
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Process.Kill(); mon.Wait() })

	var resp monitorapi.Response
	decode := func(a answer) {
		t.Helper()
		resp = monitorapi.Response{}
		if err := json.Unmarshal([]byte(a.raw), &resp); err != nil {
			t.Fatalf("%d %s: %v", a.status, a.raw, err)
		}
	}
	var a answer
	testutil.Eventually(t, 15*time.Second, "the starting monitor answers a dry run", func() bool {
		a = post("/drain/n3?dry_run=1", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"})
		return a.status == 200
	})
	decode(a)
	if !resp.OK || !resp.DryRun || len(resp.Moves) != 85 || resp.MovesPerNode["n3"].Lost != 85 || resp.Counts["n3"] != 0 {
		t.Fatalf("drain n3, dry run: %s", a.raw)
	}
	drained := func() []string {
		t.Helper()
		var st struct {
			Drained []string `json:"drained"`
		}
		s := do(t, "GET", adminURL("/status"), map[string]string{"Authorization": auth})
		json.Unmarshal([]byte(s.raw), &st)
		slices.Sort(st.Drained)
		return st.Drained
	}
	if d := drained(); len(d) != 0 {
		t.Fatalf("a dry run drained %v", d)
	}
	for _, target := range []string{"/drain/n3", "/drain/n1"} {
		if a = post(target, nil); a.status != 200 {
			t.Fatalf("POST %s: %d %s", target, a.status, a.raw)
		}
		decode(a)
		if !resp.OK || resp.DryRun || resp.Version <= resp.PreviousVersion || len(resp.Moves) == 0 {
			t.Fatalf("POST %s: %s", target, a.raw)
		}
	}
	testutil.Eventually(t, 5*time.Second, "n1 and n3 drained", func() bool { return slices.Equal(drained(), []string{"n1", "n3"}) })
	// Draining the last eligible node is refused by the monitor: 409 with its answer.
	if a = post("/drain/n2?dry_run=1", nil); a.status != 409 {
		t.Fatalf("drain of the last node: %d %s; want 409", a.status, a.raw)
	}
	decode(a)
	if resp.OK || !strings.Contains(resp.Error, "no live, undrained node") {
		t.Fatalf("drain of the last node: %s", a.raw)
	}
	if a = post("/undrain/n3", nil); a.status != 200 {
		t.Fatalf("undrain n3: %d %s", a.status, a.raw)
	}
	testutil.Eventually(t, 5*time.Second, "n3 undrained", func() bool { return slices.Equal(drained(), []string{"n1"}) })
}
