package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/statusview"
)

func runCapture(args ...string) (string, string, int) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return stdout.String(), stderr.String(), code
}

func TestCLIUsageErrors(t *testing.T) {
	const etcd = "-etcd=127.0.0.1:1"
	cases := []struct {
		name string
		args []string
		want string // in stderr; the exit code is 2
	}{
		{"drain without its node", []string{"drain", etcd}, "monitor drain: want 1 argument(s), got 0: []\n\nUsage:"},
		{"pin with one argument", []string{"pin", "0a", etcd}, `monitor pin: want 2 argument(s), got 1: ["0a"]`},
		{"pin with three arguments", []string{"pin", "0a", "n1", "n2", etcd}, `want 2 argument(s), got 3: ["0a" "n1" "n2"]`},
		{"rebalance with an argument", []string{"rebalance", "n1", etcd}, `want 0 argument(s), got 1: ["n1"]`},
		{"status with an argument", []string{"status", "n1", etcd}, `want 0 argument(s), got 1: ["n1"]`},
		{"auto-rebalance without on or off", []string{"auto-rebalance", etcd}, "want 1 argument(s), got 0"},
		{"run with an argument", []string{"run", "extra", etcd}, "monitor run: unexpected arguments: extra"},
		{"invalid bucket", []string{"pin", "zz", "n1", etcd}, `invalid bucket "zz"`},
		{"invalid bucket, flags first", []string{"unpin", etcd, "-dry-run", "zzz"}, `monitor unpin: invalid bucket "zzz"`},
		{"auto-rebalance maybe", []string{"auto-rebalance", "maybe", etcd}, `monitor auto-rebalance: want on or off, got "maybe"`},
		{"unknown command", []string{"frobnicate"}, "monitor frobnicate: unknown command \"frobnicate\"\n\nUsage:"},
		{"no etcd endpoints", []string{"status"}, "flag -etcd: no etcd endpoints"},
		{"no etcd endpoints comes before the arguments", []string{"drain"}, "monitor drain: flag -etcd: no etcd endpoints"},
		{"status takes no -dry-run", []string{"status", "-dry-run", etcd}, "flag provided but not defined: -dry-run"},
		{"run takes no -json", []string{"run", "-json", etcd}, "flag provided but not defined: -json"},
		{"session-ttl below 1s", []string{"run", etcd, "-session-ttl", "10ms"}, "-session-ttl at least 1s"},
		{"unreadable config", []string{"status", "-config", "/nonexistent.json"}, "cannot read"},
		{"invalid prefix", []string{"rebalance", etcd, "-prefix", "nope"}, "flag -prefix"},
		{"invalid log level", []string{"rebalance", etcd, "-log-level", "loud"}, "monitor rebalance: flag -log-level"},
		{"rebalance by weight", []string{"rebalance", "-by", "weight", etcd}, `monitor rebalance: flag -by: "weight", want count or load`},
		{"drain takes no -by", []string{"drain", "n1", "-by", "load", etcd}, "flag provided but not defined: -by"},
		{"auto-load-balance maybe", []string{"auto-load-balance", "maybe", etcd}, `monitor auto-load-balance: want on or off, got "maybe"`},
		{"load-high not above load-low", []string{"run", etcd, "-load-high", "1.05"}, "want 1 ≤ -load-low < -load-high"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runCapture(tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Errorf("%q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, stderr, tc.want)
			}
		})
	}
}

func TestCLIHelp(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		inStdout string // the usage text goes to stdout
		inStderr string // a command's flags go to stderr
	}{
		{name: "help", args: []string{"help"}, inStdout: usageText()},
		{name: "help ignores arguments", args: []string{"help", "drain"}, inStdout: usageText()},
		{name: "the daemon's flags", args: []string{"-h"}, inStderr: "Usage of monitor run:"},
		{name: "a command's flags", args: []string{"drain", "n1", "-h"}, inStderr: "Usage of monitor drain:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCapture(tc.args...)
			if code != 0 || !strings.Contains(stdout, tc.inStdout) || !strings.Contains(stderr, tc.inStderr) {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			if tc.inStdout != "" && stdout != usageText() {
				t.Fatalf("stdout is not exactly the usage text:\n%s", stdout)
			}
		})
	}
}

// The usage text is made from the command table; this is what it says.
func TestUsageText(t *testing.T) {
	const want = `Usage:
  monitor [run] [flags]                          run the daemon (several may run; one leads)
  monitor status                                 nodes, buckets per node, version, leader
  monitor rebalance [-by count|load] [-dry-run]  even out bucket counts (or, -by load, the load the proxies measure) with the fewest moves
  monitor drain NODE [-dry-run]                  move every bucket off NODE; it receives nothing
  monitor undrain NODE [-dry-run]                let NODE receive buckets again
  monitor pin BUCKET NODE [-dry-run]             keep BUCKET (00..ff) on NODE while it is live
  monitor unpin BUCKET [-dry-run]                let BUCKET move again
  monitor auto-rebalance on|off [-dry-run]       rebalance on every change (off: only on request)
  monitor auto-load-balance on|off [-dry-run]    move buckets by load on its own, with hysteresis (on also balances by load from now on)
Every command takes -cacert, -cert, -config, -endpoints, -etcd, -key, -log-json, -log-level, -password, -prefix, -user.
Every command but run also takes -json, -timeout, -wait.
etcd settings may also come from $ETCDCTL_ENDPOINTS, _CACERT, _CERT, _KEY, _USER, _PASSWORD (flags win).
Run "monitor COMMAND -h" for a command's flags.
`
	if got := usageText(); got != want {
		t.Fatalf("usage text:\n%s\nwant:\n%s", got, want)
	}
}

func TestCommandTableRowsAreWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, cmd := range commands {
		t.Run(cmd.name, func(t *testing.T) {
			if seen[cmd.name] || cmd.name == "help" {
				t.Fatalf("name %q used twice (help is taken by the usage text)", cmd.name)
			}
			seen[cmd.name] = true
			ways := 0
			for _, set := range []bool{cmd.daemon != nil, cmd.read != nil, cmd.op != ""} {
				if set {
					ways++
				}
			}
			if ways != 1 {
				t.Fatalf("%d ways to run; want exactly one of daemon, read and op", ways)
			}
			if (cmd.fill != nil) != (len(cmd.args) > 0) || (cmd.fill != nil && cmd.op == "") {
				t.Fatalf("a request with arguments needs fill, and fill only a request with arguments")
			}
			if cmd.daemon != nil && (len(cmd.args) > 0 || cmd.dryRun) {
				t.Fatal("the daemon parses its own flags and arguments")
			}
		})
	}
}

// parse builds each command's request from its arguments, flags before or
// after them.
func TestCommandParse(t *testing.T) {
	const etcd = "-etcd=127.0.0.1:1"
	cases := []struct {
		name   string
		args   []string // command name first
		want   monitorapi.Request
		asJSON bool
	}{
		{name: "status", args: []string{"status", etcd}},
		{name: "status -json", args: []string{"status", "-json", etcd}, asJSON: true},
		{name: "rebalance", args: []string{"rebalance", etcd}, want: monitorapi.Request{Op: monitorapi.OpRebalance}},
		{name: "rebalance -dry-run -json", args: []string{"rebalance", "-dry-run", "-json", etcd},
			want: monitorapi.Request{Op: monitorapi.OpRebalance, DryRun: true}, asJSON: true},
		{name: "drain, flag after", args: []string{"drain", "n1", "-dry-run", etcd},
			want: monitorapi.Request{Op: monitorapi.OpDrain, Node: "n1", DryRun: true}},
		{name: "drain, flag before", args: []string{"drain", "-dry-run", etcd, "n1"},
			want: monitorapi.Request{Op: monitorapi.OpDrain, Node: "n1", DryRun: true}},
		{name: "undrain", args: []string{"undrain", "n2", etcd}, want: monitorapi.Request{Op: monitorapi.OpUndrain, Node: "n2"}},
		{name: "pin, bucket in upper case", args: []string{"pin", "0A", "n1", etcd},
			want: monitorapi.Request{Op: monitorapi.OpPin, Bucket: "0a", Node: "n1"}},
		{name: "pin, flags between", args: []string{"pin", "ff", etcd, "-dry-run", "n3"},
			want: monitorapi.Request{Op: monitorapi.OpPin, Bucket: "ff", Node: "n3", DryRun: true}},
		{name: "unpin", args: []string{"unpin", "07", etcd}, want: monitorapi.Request{Op: monitorapi.OpUnpin, Bucket: "07"}},
		{name: "auto-rebalance on", args: []string{"auto-rebalance", "on", etcd},
			want: monitorapi.Request{Op: monitorapi.OpAutoRebalance, Enabled: true}},
		{name: "auto-rebalance off", args: []string{"auto-rebalance", etcd, "off"},
			want: monitorapi.Request{Op: monitorapi.OpAutoRebalance}},
		{name: "rebalance -by load -dry-run", args: []string{"rebalance", "-by", "load", "-dry-run", etcd},
			want: monitorapi.Request{Op: monitorapi.OpRebalance, By: monitorapi.ByLoad, DryRun: true}},
		{name: "rebalance -by count is the default", args: []string{"rebalance", "-by=count", etcd},
			want: monitorapi.Request{Op: monitorapi.OpRebalance}},
		{name: "auto-load-balance on", args: []string{"auto-load-balance", "on", etcd},
			want: monitorapi.Request{Op: monitorapi.OpAutoLoadBalance, Enabled: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := lookup(tc.args[0])
			inv, err := cmd.parse(tc.args[1:], io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if inv.req != tc.want || inv.asJSON != tc.asJSON || inv.timeout != 10*time.Second {
				t.Fatalf("request %+v, json %v, timeout %v; want %+v, json %v, 10s", inv.req, inv.asJSON, inv.timeout, tc.want, tc.asJSON)
			}
			if got := inv.c.etcd.Endpoints; len(got) != 1 || got[0] != "127.0.0.1:1" {
				t.Fatalf("endpoints %q", got)
			}
		})
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

// TestRebalanceAnswerSaysWavesAndWhen: a rebalance that gives a joining
// third node its 85 buckets answers, in text and JSON, how many handoffs
// start and wait, in how many waves, and within how long at most (waves
// times the leader's -handoff-timeout).
func TestRebalanceAnswerSaysWavesAndWhen(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	registerNode(t, cli, "n1")
	registerNode(t, cli, "n3")
	startMonitor(t, c, "mon-a", nil, func(m *monitor) {
		m.limits = handoff.Limits{MaxMoving: 16, MaxMovingPerNode: 8, Timeout: 90 * time.Second}
	})
	waitAssignment(t, cli, "assigned", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	registerNode(t, cli, "n2") // joins; auto-rebalance is off
	etcd := "-etcd=" + strings.Join(c.Endpoints(), ",")

	stdout, stderr, code := runCapture("rebalance", etcd, "-dry-run")
	want := "85 handoff(s): 8 would start now, 77 wait for a slot; about 11 wave(s), at most about 16m30s: each wave lasts"
	if code != 0 || !strings.Contains(stdout, want) {
		t.Fatalf("rebalance -dry-run: exit %d, want %q in\n%s%s", code, want, stdout, stderr)
	}
	stdout, stderr, code = runCapture("rebalance", etcd, "-dry-run", "-json")
	var resp monitorapi.Response
	if err := json.Unmarshal([]byte(stdout), &resp); err != nil || code != 0 {
		t.Fatalf("rebalance -dry-run -json: exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
	if resp.Waves != 11 || resp.WavesWithin != "16m30s" {
		t.Fatalf("waves %d within %q; want 11 within 16m30s", resp.Waves, resp.WavesWithin)
	}
}
