package main

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// The version never goes back: a monitor that starts while the assignment
// key is deleted, or holds a value it cannot read a version from, knows no
// valid assignment, yet the one it writes is above every version written
// before (versions the monitor writes never exceed their write's etcd
// revision, so the current revision + 1 is a safe start), also after the
// history was compacted.
func TestFreshAssignmentVersionIsAboveEveryEarlierOne(t *testing.T) {
	for _, tc := range []struct {
		name    string
		compact bool
		leave   func(t *testing.T, cli *clientv3.Client) // what the key holds when the monitor starts
	}{
		{"key deleted", false, func(t *testing.T, cli *clientv3.Client) { deleteKey(t, cli, layout.AssignmentKey()) }},
		{"key deleted, history compacted", true, func(t *testing.T, cli *clientv3.Client) { deleteKey(t, cli, layout.AssignmentKey()) }},
		{"key corrupt without a version", false, func(t *testing.T, cli *clientv3.Client) {
			if _, err := cli.Put(ctxT(t), layout.AssignmentKey(), `{"buckets":`); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			old := &schema.Assignment{Version: 7}
			for b := range old.Owners {
				old.Owners[b] = "n1"
			}
			old.NextEpochs(nil)
			// Written as a monitor would have: version 7 at an etcd
			// revision of at least 7 (six earlier writes went before it).
			for range 6 {
				if _, err := cli.Put(ctxT(t), "/elsewhere", "x"); err != nil {
					t.Fatal(err)
				}
			}
			put, err := cli.Put(ctxT(t), layout.AssignmentKey(), string(old.Encode()))
			if err != nil {
				t.Fatal(err)
			}
			if put.Header.Revision < old.Version {
				t.Fatalf("setup: version %d written at revision %d", old.Version, put.Header.Revision)
			}
			tc.leave(t, cli)
			if tc.compact {
				resp, err := cli.Get(ctxT(t), "any")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := cli.Compact(ctxT(t), resp.Header.Revision); err != nil {
					t.Fatal(err)
				}
			}
			startMonitor(t, c, "mon-fresh", nil)
			a, _ := waitAssignment(t, cli, "a fresh assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			if a.Version <= old.Version {
				t.Fatalf("fresh assignment has version %d; want more than %d, the last one written", a.Version, old.Version)
			}
			if err := a.Validate(); err != nil {
				t.Fatalf("fresh assignment invalid: %v", err)
			}
		})
	}
}
