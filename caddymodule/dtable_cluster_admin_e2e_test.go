package caddymodule

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The operator site refuses what a browser on another site could send:
// cross-site POSTs and form posts; and a dry_run it does not understand
// is an error, not a real rebalance. (No monitor runs: a request that gets
// through waits request_timeout and is answered 503.)
func TestOperatorSiteRefusesCrossSiteFormsAndUnknownDryRun(t *testing.T) {
	setup(t)
	tests := []struct {
		name    string
		target  string
		header  map[string]string
		status  int
		message string
	}{
		{"cross-site fetch", "/rebalance/", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, 403, "cross-origin"},
		{"same-site fetch from another origin", "/rebalance/", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://other.lan:8080"}, 403, "cross-origin"},
		{"old browser, another origin", "/rebalance/", map[string]string{"Origin": "http://evil.example"}, 403, "cross-origin"},
		{"Origin null", "/rebalance/", map[string]string{"Origin": "null"}, 403, "cross-origin"},
		{"form post", "/rebalance/", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, `"application/x-www-form-urlencoded"`},
		{"multipart form post", "/rebalance/", map[string]string{"Content-Type": "multipart/form-data; boundary=x"}, 415, `"multipart/form-data"`},
		{"text/plain post", "/rebalance/", map[string]string{"Content-Type": "text/plain;charset=UTF-8"}, 415, `"text/plain"`},
		{"dry_run=yes", "/rebalance/?dry_run=yes", nil, 400, `dry_run: "yes"`},
		{"dry_run empty", "/rebalance/?dry_run=", nil, 400, `dry_run: ""`},
		{"dry_run twice, different", "/rebalance/?dry_run=1&dry_run=0", nil, 400, "dry_run"},
		{"dry_run=TRUE", "/rebalance/?dry_run=TRUE", nil, 400, `dry_run: "TRUE"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			a := rawDo(t, siteAdminPort, "POST", tt.target, withBody(tt.header))
			if a.status != tt.status || !strings.Contains(a.body["error"], tt.message) {
				t.Fatalf("POST %s %v: %d %s; want %d saying %q", tt.target, tt.header, a.status, a.raw, tt.status, tt.message)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("answered after %v: the request went to the monitors", took)
			}
		})
	}
	// What is allowed through (and waits for a monitor that is not there).
	for _, tt := range []struct {
		name, target string
		header       map[string]string
	}{
		{"curl", "/rebalance/", nil},
		{"same-origin fetch with JSON", "/rebalance/?dry_run=true", map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}},
		{"dry_run=0", "/rebalance/?dry_run=0", nil},
	} {
		t.Run("allowed: "+tt.name, func(t *testing.T) {
			a := rawDo(t, siteAdminPort, "POST", tt.target, withBody(tt.header))
			if a.status != 503 || !strings.Contains(a.body["error"], "no monitor") {
				t.Fatalf("POST %s %v: %d %s; want it sent to the monitors (503: none runs)", tt.target, tt.header, a.status, a.raw)
			}
		})
	}
}

// withBody adds an empty body's Content-Length to a POST's headers.
func withBody(h map[string]string) map[string]string {
	out := map[string]string{"Content-Length": "0"}
	for k, v := range h {
		out[k] = v
	}
	return out
}

// With a token (placeholders expanded), every request to the operator
// site needs it as a bearer token.
func TestOperatorSiteToken(t *testing.T) {
	t.Setenv("DTABLE_TEST_ADMIN_TOKEN", "s3cret-token")
	setupWith(t, extraConfig{adminBlock: "\t\ttoken {env.DTABLE_TEST_ADMIN_TOKEN}"})
	tests := []struct {
		name, method, path, authorization string
		status                            int
	}{
		{"no token", "GET", "/status", "", 401},
		{"wrong token", "GET", "/status", "Bearer s3cret-tokeN", 401},
		{"longer token", "GET", "/status", "Bearer s3cret-token2", 401},
		{"the placeholder itself", "GET", "/status", "Bearer {env.DTABLE_TEST_ADMIN_TOKEN}", 401},
		{"basic auth", "GET", "/status", "Basic czNjcmV0LXRva2Vu", 401},
		{"no token, rebalance", "POST", "/rebalance/", "", 401},
		{"no token, another path", "GET", "/other", "", 401},
		{"token", "GET", "/status", "Bearer s3cret-token", 200},
		{"token, scheme in lower case", "GET", "/nodes", "bearer s3cret-token", 200},
		{"token, lookup", "GET", "/lookup/" + uuidIn(0x05), "Bearer s3cret-token", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"Content-Length": "0"}
			if tt.authorization != "" {
				h["Authorization"] = tt.authorization
			}
			a := rawDo(t, siteAdminPort, tt.method, tt.path, h)
			if a.status != tt.status {
				t.Fatalf("%s %s with %q: %d %s; want %d", tt.method, tt.path, tt.authorization, a.status, a.raw, tt.status)
			}
			if tt.status == 401 && (a.header.Get("WWW-Authenticate") == "" || !strings.Contains(a.body["error"], "token")) {
				t.Errorf("401 without WWW-Authenticate or a message: %v %s", a.header, a.raw)
			}
		})
	}
	// The proxy site does not ask for it.
	if a := do(t, "GET", proxyURL("/dtables/"+uuidIn(0x05)), nil); a.status != http.StatusOK {
		t.Fatalf("proxy site: %d %s", a.status, a.raw)
	}
}

// A token that expands to nothing stops the config from loading: an unset
// variable must not leave the site open.
func TestOperatorSiteTokenMustNotExpandToNothing(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &DtableClusterAdmin{EtcdConfig: EtcdConfig{Etcd: []string{"127.0.0.1:1"}}, Token: "{env.DTABLE_TEST_UNSET_TOKEN}"}
	err := h.Provision(ctx)
	if err == nil {
		h.Cleanup()
	}
	if err == nil || !strings.Contains(err.Error(), "expands to an empty string") {
		t.Fatalf("Provision: %v; want an error", err)
	}
}
