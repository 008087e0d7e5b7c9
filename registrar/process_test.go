package main

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// TestMain lets the test binary run as the registrar itself, so the
// process tests below exercise real signals and exit codes.
func TestMain(m *testing.M) {
	if os.Getenv("REGISTRAR_RUN_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// startProcess runs this test binary as the registrar.
func startProcess(t *testing.T, args ...string) *testutil.Process {
	t.Helper()
	return testutil.StartProcess(t, "registrar", os.Args[0], []string{"REGISTRAR_RUN_AS_MAIN=1"}, args...)
}

func TestProcessDocumentedConfigThenSIGTERM(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	cfg := writeFile(t, "dtable_server_config.json", documentedConfig)
	p := startProcess(t, "-config", cfg, "-etcd", strings.Join(c.Endpoints(), ","), "-ttl", "5s")
	testutil.Eventually(t, 10*time.Second, "registered", func() bool { _, _, ok, err := readNode(t, cli, "dtable-server-01"); return err == nil && ok })
	n, _, _ := getNode(t, cli, "dtable-server-01")
	want := schema.Node{NodeID: "dtable-server-01", NodeURL: "https://dtable-server-01.example.com/", LocalNodeURL: "http://172.17.30.94/"}
	if !n.SameEndpoints(want) {
		t.Fatalf("registered %+v", n)
	}
	// Gone within 1s of SIGTERM.
	p.Signal(syscall.SIGTERM)
	took := testutil.Eventually(t, time.Second, "key removed after SIGTERM", func() bool { _, _, ok := getNode(t, cli, "dtable-server-01"); return !ok })
	t.Logf("key gone %v after SIGTERM", took)
	if code := p.Wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM; stderr:\n%s", code, p.Output())
	}
}

func TestProcessSIGKILLExpiresAfterTTL(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	cfg := writeFile(t, "dtable_server_config.json", documentedConfig)
	p := startProcess(t, "-config", cfg, "-etcd", strings.Join(c.Endpoints(), ","), "-ttl", "3s")
	testutil.Eventually(t, 10*time.Second, "registered", func() bool { _, _, ok, err := readNode(t, cli, "dtable-server-01"); return err == nil && ok })
	time.Sleep(1500 * time.Millisecond) // let a keep-alive renew the lease
	p.Kill()
	took := testutil.Eventually(t, 4*time.Second, "key expired within TTL + 1s after SIGKILL",
		func() bool { _, _, ok := getNode(t, cli, "dtable-server-01"); return !ok })
	t.Logf("key gone %v after SIGKILL (TTL 3s)", took)
}

func TestProcessConflictExitsOne(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lease, _ := cli.Grant(ctx, 30)
	other := schema.Node{NodeID: "dtable-server-01", NodeURL: "https://dtable-server-02.example.com/", LocalNodeURL: "http://172.17.30.95/"}
	cli.Put(ctx, testLayout.NodeKey("dtable-server-01"), string(other.Encode()), clientv3.WithLease(lease.ID))
	cfg := writeFile(t, "dtable_server_config.json", documentedConfig)
	p := startProcess(t, "-config", cfg, "-etcd", strings.Join(c.Endpoints(), ","))
	if code := p.Wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit code %d; want 1", code)
	}
	if !strings.Contains(p.Output(), "Two servers must not share node_id \"dtable-server-01\"") {
		t.Fatalf("stderr lacks a clear message:\n%s", p.Output())
	}
}

func TestProcessBadConfigExitsTwo(t *testing.T) {
	cfg := writeFile(t, "dtable_server_config.json", strings.Replace(documentedConfig, `"node_url": "https://`, `"node_url": "`, 1))
	p := startProcess(t, "-config", cfg)
	if code := p.Wait(t, 10*time.Second); code != 2 {
		t.Fatalf("exit code %d; want 2", code)
	}
	if !strings.Contains(p.Output(), "dtable_server_config.json:5: node_url") {
		t.Fatalf("stderr = %s", p.Output())
	}
}
