package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// TestMain lets the test binary run as the monitor itself, so the process
// tests exercise real signals, exit codes and separate processes.
func TestMain(m *testing.M) {
	if os.Getenv("MONITOR_RUN_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// signalAndWait sends sig and waits (10 s at most) for the program to exit.
func signalAndWait(t *testing.T, p *testutil.Process, sig syscall.Signal) {
	t.Helper()
	p.Signal(sig)
	p.Wait(t, 10*time.Second)
}

// buildRegistrar builds the registrar program once per test run.
func buildRegistrar(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "registrar")
	cmd := exec.Command("go", "build", "-o", bin, "../registrar")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build registrar: %v\n%s", err, out)
	}
	return bin
}

func runMonitorCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "MONITOR_RUN_AS_MAIN=1")
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

func TestProcessesThreeRegistrarsTwoMonitors(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs separate processes")
	}
	registrar := buildRegistrar(t)
	c := etcdtest.Start(t)
	cli := c.Client(t)
	etcd := "-etcd=" + strings.Join(c.Endpoints(), ",")
	startRegistrar := func(id string) *testutil.Process {
		return testutil.StartProcess(t, id, registrar, nil, etcd, "-node-id", id, "-ttl", "3s",
			"-node-url", "https://"+id+".example.com/", "-local-node-url", "http://127.0.0.1:9/"+id+"/")
	}
	regs := map[string]*testutil.Process{}
	for _, id := range []string{"s1", "s2", "s3"} {
		regs[id] = startRegistrar(id)
	}
	monEnv := []string{"MONITOR_RUN_AS_MAIN=1"}
	monArgs := func(id string) []string {
		return []string{"run", etcd, "-id", id, "-settle", "1s", "-interval", "1s", "-session-ttl", "2s"}
	}
	mons := map[string]*testutil.Process{
		"mon-a": testutil.StartProcess(t, "mon-a", os.Args[0], monEnv, monArgs("mon-a")...),
		"mon-b": testutil.StartProcess(t, "mon-b", os.Args[0], monEnv, monArgs("mon-b")...),
	}

	// All 256 buckets assigned 86/85/85.
	first, _ := waitAssignment(t, cli, "first assignment 86/85/85", func(a *schema.Assignment) bool {
		c := a.Counts()
		return len(a.Owned("")) == 0 && len(c) == 3 && max(c["s1"], c["s2"], c["s3"]) == 86 && min(c["s1"], c["s2"], c["s3"]) == 85
	})

	// SIGTERM one registrar: it leaves; its buckets are handed off (its
	// registrar acknowledges at once: no -notify-url), then its key goes.
	// Nothing else moved.
	start := time.Now()
	signalAndWait(t, regs["s2"], syscall.SIGTERM)
	second, _ := waitAssignment(t, cli, "s2's buckets moved", func(a *schema.Assignment) bool { return len(a.Owned("s2")) == 0 && settled(a) })
	took := time.Since(start)
	t.Logf("SIGTERM to every bucket handed off: %v (version %d -> %d)", took, first.Version, second.Version)
	if took > 10*time.Second {
		t.Errorf("the handoff took %v after SIGTERM; want within 10s", took)
	}
	for _, mv := range ownerDiff(first, second) {
		if mv.From != "s2" {
			t.Fatalf("bucket %s moved from %s, which is alive", mv.Bucket, mv.From)
		}
	}
	if len(ownerDiff(first, second)) != len(first.Owned("s2")) {
		t.Fatalf("version %d -> %d, %d moves", first.Version, second.Version, len(ownerDiff(first, second)))
	}
	if code := regs["s2"].Cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("s2 exited with %d", code)
	}
	if resp, err := cli.Get(ctxT(t), layout.NodeKey("s2")); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("s2's key is still there after its clean stop: %v", err)
	}

	// Start it again: nothing moves.
	regs["s2"] = startRegistrar("s2")
	waitRegistered(t, cli, "s2")
	time.Sleep(2500 * time.Millisecond) // two reconcile intervals
	if a := getAssignment(t, cli); a.Version != second.Version {
		t.Fatalf("a returning node moved buckets: version %d -> %d", second.Version, a.Version)
	}

	// monitor rebalance: 85/85/86 again with exactly the minimal number of moves.
	c1, c3 := len(second.Owned("s1")), len(second.Owned("s3"))
	minimal := (c1 - 85) + (c3 - 85) - 1 // the larger of the two keeps the one extra bucket
	out, code := runMonitorCLI(t, "rebalance", etcd)
	if code != 0 {
		t.Fatalf("monitor rebalance exit %d:\n%s", code, out)
	}
	third := getAssignment(t, cli)
	moves := len(ownerDiff(second, third))
	t.Logf("monitor rebalance:\n%s", out)
	if moves != minimal || !strings.Contains(out, fmt.Sprintf("%d move(s)", minimal)) {
		t.Fatalf("rebalance made %d moves; the minimum is %d", moves, minimal)
	}
	if c := third.Counts(); max(c["s1"], c["s2"], c["s3"]) != 86 || min(c["s1"], c["s2"], c["s3"]) != 85 {
		t.Fatalf("after rebalance: %v", c)
	}
	out, code = runMonitorCLI(t, "status", etcd)
	if code != 0 || !strings.Contains(out, "leader: mon-") || !strings.Contains(out, fmt.Sprintf("version %d", third.Version)) {
		t.Fatalf("monitor status exit %d:\n%s", code, out)
	}

	// Kill the leading monitor: the other carries on.
	leader, _ := monitorapi.Leader(ctxT(t), cli, layout)
	other := map[string]string{"mon-a": "mon-b", "mon-b": "mon-a"}[leader]
	signalAndWait(t, mons[leader], syscall.SIGKILL)
	signalAndWait(t, regs["s3"], syscall.SIGTERM)
	fourth, took := waitAssignment(t, cli, "s3's buckets moved by the other monitor", func(a *schema.Assignment) bool {
		return len(a.Owned("s3")) == 0
	})
	t.Logf("after SIGKILL of leader %s, %s reassigned s3's buckets in %v", leader, other, took)
	if updatedBy(fourth) != other {
		t.Fatalf("written by %q; want %q", updatedBy(fourth), other)
	}
	for _, mv := range ownerDiff(third, fourth) {
		if mv.From != "s3" {
			t.Fatalf("bucket %s moved from live %s", mv.Bucket, mv.From)
		}
	}
}

// waitRegistered waits until the node's registration is in etcd.
func waitRegistered(t *testing.T, cli *clientv3.Client, id string) {
	t.Helper()
	ctx := ctxT(t)
	testutil.Eventually(t, 10*time.Second, id+" registered", func() bool {
		resp, err := cli.Get(ctx, layout.NodeKey(id))
		return err == nil && len(resp.Kvs) == 1
	})
}
