package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/schema"
)

// documentedConfig is dtable_server_config.json as the operator docs write
// it, comments included.
const documentedConfig = `{
  "cluster_config": {
    "etcd_host_list": ["etcd-01.example.com:2379", "etcd-02.example.com:2379", "etcd-03.example.com:2379"],  // domain of etcd servers
    "node_id": "dtable-server-01",
    "node_url": "https://dtable-server-01.example.com/",  // domain of dtable-server-01
    "local_node_url": "http://172.17.30.94/"  // intranet IP of dtable-server-01
  }
}
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var testLayout = schema.Layout{Prefix: schema.DefaultPrefix}

// getNode reads a node key: its registration, lease, and whether it exists.
func getNode(t *testing.T, cli *clientv3.Client, id string) (schema.Node, clientv3.LeaseID, bool) {
	t.Helper()
	n, lease, ok, err := readNode(t, cli, id)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	return n, lease, ok
}

// registeredWith polls for a registration whose lease satisfies want;
// read errors (etcd restarting) count as "not yet".
func registeredWith(t *testing.T, cli *clientv3.Client, id string, want func(clientv3.LeaseID) bool) func() bool {
	return func() bool {
		_, lease, ok, err := readNode(t, cli, id)
		return err == nil && ok && want(lease)
	}
}

func readNode(t *testing.T, cli *clientv3.Client, id string) (schema.Node, clientv3.LeaseID, bool, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, testLayout.NodeKey(id))
	if err != nil {
		return schema.Node{}, 0, false, err
	}
	if len(resp.Kvs) == 0 {
		return schema.Node{}, 0, false, nil
	}
	n, err := schema.ParseNode(id, resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("registration of %s does not parse: %v", id, err)
	}
	return n, clientv3.LeaseID(resp.Kvs[0].Lease), true, nil
}
