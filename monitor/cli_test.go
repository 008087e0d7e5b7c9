package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/statusview"
)

func runCapture(args ...string) (string, string, int) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return stdout.String(), stderr.String(), code
}

func TestCLIUsageErrors(t *testing.T) {
	cases := map[string][]string{
		"want 1 argument(s), got 0":      {"drain", "-etcd", "127.0.0.1:1"},
		`invalid bucket "zz"`:            {"pin", "zz", "n1", "-etcd", "127.0.0.1:1"},
		"auto-rebalance: want on or off": {"auto-rebalance", "maybe", "-etcd", "127.0.0.1:1"},
		`unknown command "frobnicate"`:   {"frobnicate"},
		"flag -etcd: no etcd endpoints":  {"status"},
		"flag provided but not defined":  {"status", "-dry-run", "-etcd", "127.0.0.1:1"},
		"-session-ttl at least 1s":       {"run", "-etcd", "127.0.0.1:1", "-session-ttl", "10ms"},
		"cannot read":                    {"status", "-config", "/nonexistent.json"},
		"flag -prefix":                   {"rebalance", "-etcd", "127.0.0.1:1", "-prefix", "nope"},
	}
	for want, args := range cases {
		_, stderr, code := runCapture(args...)
		if code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and %q", args, code, stderr, want)
		}
	}
}

func TestCLIWithoutMonitorAndStatus(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	registerNode(t, cli, "n1")
	etcd := "-etcd=" + strings.Join(c.Endpoints(), ",")

	_, stderr, code := runCapture("rebalance", etcd, "-timeout", "700ms")
	if code != 1 || !strings.Contains(stderr, "no monitor answered to the rebalance request in time: no monitor is running") {
		t.Fatalf("rebalance without monitor: exit %d, %q", code, stderr)
	}
	stdout, stderr, code := runCapture("status", etcd, "-json")
	var st statusview.Status
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil {
		t.Fatalf("status -json: exit %d, %q %q", code, stdout, stderr)
	}
	if st.Version != 0 || st.Unassigned != 256 || len(st.Nodes) != 1 || st.Nodes[0].State != statusview.StateLive || st.Leader != "" {
		t.Fatalf("status = %+v", st)
	}
	stdout, _, code = runCapture("status", etcd)
	if code != 0 || !strings.Contains(stdout, "leader: none (no monitor running)") || !strings.Contains(stdout, "assignment: none yet") {
		t.Fatalf("status:\n%s", stdout)
	}

	// With a monitor: a dry-run drain prints the plan and changes nothing.
	startMonitor(t, c, "mon-a", nil)
	registerNode(t, cli, "n2")
	first, _ := waitAssignment(t, cli, "assigned", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	stdout, stderr, code = runCapture("drain", "n1", etcd, "-dry-run")
	if code != 0 || !strings.Contains(stdout, "drain (dry run, nothing changed)") {
		t.Fatalf("drain -dry-run: exit %d\n%s%s", code, stdout, stderr)
	}
	if a := getAssignment(t, cli); a.Version != first.Version {
		t.Fatal("a dry run changed the assignment")
	}
	stdout, _, code = runCapture("status", etcd)
	if code != 0 || !strings.Contains(stdout, "leader: mon-a") {
		t.Fatalf("status with a monitor:\n%s", stdout)
	}
}
