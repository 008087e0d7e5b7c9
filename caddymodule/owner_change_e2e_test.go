package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// registerDead registers a node whose local_node_url nothing listens on
// (a crashed server whose registration has not expired yet).
func (e *env) registerDead(name string) {
	e.t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/", testutil.FreePort(e.t))
	e.put(layout.NodeKey(name), schema.Node{NodeID: name, NodeURL: "https://" + name + ".example.com/", LocalNodeURL: url}.Encode())
}

// logEntries is the JSON log file's entries with the given message.
func logEntries(t *testing.T, file, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range readJSONLines(t, file) {
		var m map[string]any
		json.Unmarshal(l, &m)
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// A request caught by an owner change, while reverse_proxy retries a
// dead owner, goes to the new owner as soon as the proxy knows it, not
// after lb_try_duration; if the owner's registration is gone, it is held
// until the bucket has a new owner, and gets the module's 503 (JSON,
// Retry-After) if none comes within handoff_wait. The retries do not log
// an error each; the bucket's new state is logged once.
func TestRequestCaughtByAnOwnerChange(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	e := setupWith(t, extraConfig{lbTry: "4s", global: fmt.Sprintf(`	log {
		output file %s
		format json
		level INFO
	}`, logFile)})
	e.registerDead("dead1")
	e.registerDead("dead2")
	e.putAssignment(2, map[bucket.Bucket]string{0x10: "dead1", 0x11: "dead2", 0x12: "dead2"})
	e.waitVersion(2)

	t.Run("reassigned: the new owner answers", func(t *testing.T) {
		start := time.Now()
		pending := goDo("GET", bucketURL(0x10), nil)
		time.Sleep(600 * time.Millisecond) // reverse_proxy retries dead1
		e.putAssignment(3, map[bucket.Bucket]string{0x10: "n3", 0x11: "dead2", 0x12: "dead2"})
		changed := time.Now()
		r := await(t, pending, 6*time.Second, "request for bucket 10")
		t.Logf("answered %d %v after the change (%v in all)", r.status, r.at.Sub(changed), r.at.Sub(start))
		if r.status != 200 || r.body["node"] != "n3" || r.body["version"] != "3" || r.body["bucket"] != "10" {
			t.Fatalf("%d %v %q; want n3's answer by assignment version 3", r.status, r.header, r.raw)
		}
		if d := r.at.Sub(changed); d > 1500*time.Millisecond {
			t.Errorf("answered %v after the change; want at once, not after lb_try_duration (4s)", d)
		}
	})
	t.Run("deregistered, then reassigned: held, then the new owner answers", func(t *testing.T) {
		pending := goDo("GET", bucketURL(0x11), nil)
		time.Sleep(600 * time.Millisecond) // reverse_proxy retries dead2
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := e.cli.Delete(ctx, layout.NodeKey("dead2")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // the gap before the monitor reassigns: the request is held
		e.putAssignment(4, map[bucket.Bucket]string{0x10: "n3", 0x11: "n2", 0x12: "dead2"})
		reassigned := time.Now()
		r := await(t, pending, 6*time.Second, "request for bucket 11")
		t.Logf("answered %d %v after the reassignment", r.status, r.at.Sub(reassigned))
		if r.status != 200 || r.body["node"] != "n2" || r.body["version"] != "4" {
			t.Fatalf("%d %v %q; want n2's answer by assignment version 4", r.status, r.header, r.raw)
		}
		if d := r.at.Sub(reassigned); d > 1500*time.Millisecond {
			t.Errorf("answered %v after the reassignment; want at once", d)
		}
	})
	t.Run("deregistered, no new owner: 503 in JSON after handoff_wait", func(t *testing.T) {
		start := time.Now()
		r := await(t, goDo("GET", bucketURL(0x12), nil), 10*time.Second, "request for bucket 12")
		t.Logf("answered %d after %v: %s", r.status, r.at.Sub(start), r.raw)
		if r.status != 503 || r.header.Get("Content-Type") != "application/json" || r.header.Get("Retry-After") != "5" ||
			r.body["reason"] != "owner_not_registered" || r.body["bucket"] != "12" || !strings.Contains(r.body["error"], "its owner dead2") ||
			!strings.Contains(r.body["error"], "handoff_wait") {
			t.Fatalf("%d %v %q; want 503 JSON, Retry-After 5, reason owner_not_registered, naming handoff_wait", r.status, r.header, r.raw)
		}
		if d := r.at.Sub(start); d < 4*time.Second || d > 7*time.Second {
			t.Errorf("answered after %v; want after handoff_wait (5s), held meanwhile", d)
		}
	})
	t.Run("owner gone for longer than handoff_wait: 503 at once", func(t *testing.T) {
		// dead2 left the registry more than handoff_wait (5s) ago: no new
		// owner is coming soon (no monitor here), so nothing is held.
		start := time.Now()
		r := await(t, goDo("GET", bucketURL(0x12), nil), 5*time.Second, "request for bucket 12")
		if r.status != 503 || r.body["reason"] != "owner_not_registered" || r.header.Get("Retry-After") != "5" {
			t.Fatalf("%d %v %q; want 503 owner_not_registered", r.status, r.header, r.raw)
		}
		if d := r.at.Sub(start); d > time.Second {
			t.Errorf("answered after %v; want at once", d)
		}
	})
	t.Run("logs", func(t *testing.T) {
		testutil.Eventually(t, 5*time.Second, "the bucket's new state is logged", func() bool {
			return len(logEntries(t, logFile, "buckets without a routable owner")) > 0
		})
		if n := len(logEntries(t, logFile, "failed getting dynamic upstreams; falling back to static upstreams")); n > 0 {
			t.Errorf("%d error lines 'failed getting dynamic upstreams'; want none (one line per bucket state change)", n)
		}
		var lines int
		for _, l := range logEntries(t, logFile, "buckets without a routable owner") {
			if l["reason"] == "owner_not_registered" && fmt.Sprint(l["buckets"]) == "[11 12]" {
				lines++
			}
		}
		if lines != 1 {
			t.Errorf("%d lines for buckets 11 and 12 losing their owner; want 1", lines)
		}
	})
}

// A 503 of reverse_proxy itself (its one upstream marked down by passive
// health checks) is the module's JSON with Retry-After, not a bare 503.
func TestProxyOwn503IsTheModulesAnswer(t *testing.T) {
	e := setupWith(t, extraConfig{proxyBlock: "\t\tfail_duration 30s\n\t\tmax_fails 1"})
	e.registerDead("dead")
	e.putAssignment(2, map[bucket.Bucket]string{0x20: "dead"})
	e.waitVersion(2)
	first := do(t, "GET", bucketURL(0x20), nil) // dead is dialled, fails, is marked down
	a := do(t, "GET", bucketURL(0x20), nil)     // no upstream available: 503
	t.Logf("first: %d %q", first.status, first.raw)
	if a.status != 503 || a.header.Get("Content-Type") != "application/json" || a.header.Get("Retry-After") != "5" ||
		a.body["reason"] != "upstream_unavailable" || a.body["bucket"] != "20" || !strings.Contains(a.body["error"], "dead") {
		t.Fatalf("%d %v %q; want 503 JSON, Retry-After 5, reason upstream_unavailable", a.status, a.header, a.raw)
	}
}
