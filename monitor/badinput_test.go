package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// The monitor's bad-input matrix for the keys it reads besides the
// routing state (README "Invalid values"): load reports, operator
// requests, responses and election keys, corrupt, of the wrong types,
// naming an unknown bucket, or deleted. Each case checks the documented
// outcome, that the leader keeps the assignment as it was, and that a
// leader still answers a request afterwards (nothing crashed). The
// routing keys are in internal/watch's matrix; the repair of a corrupt or
// deleted assignment or settings key in assignment_delete_test.go,
// monitor_test.go and withdrawn_test.go.
func TestBadInputMatrixForMonitorKeys(t *testing.T) {
	const reqKey = "r1"
	loadKey := layout.LoadKey("caddy@p1")
	for _, tc := range []struct {
		name        string
		beforeStart func(t *testing.T, cli *clientv3.Client) // while no monitor runs
		do          func(t *testing.T, cli *clientv3.Client, c *etcdtest.Etcd)
		outcome     func(t *testing.T, cli *clientv3.Client, logs *observer.ObservedLogs)
		leader      string // who answers afterwards
	}{
		{"load: corrupt JSON", nil, putValue(loadKey, `{`), loadRejected(loadKey), "mon-a"},
		{"load: wrong types", nil, putValue(loadKey, `{"proxy":"caddy@p1","interval_seconds":"30","at":7}`), loadRejected(loadKey), "mon-a"},
		{"load: unknown bucket", nil, putValue(loadKey, `{"proxy":"caddy@p1","interval_seconds":30,"at":"2026-11-21T10:00:00Z","buckets":{"zz":{"requests":1}}}`), loadRejected(loadKey), "mon-a"},
		{"load: deleted", nil, func(t *testing.T, cli *clientv3.Client, _ *etcdtest.Etcd) {
			putLoad(t, cli, "caddy@p1", 60, map[bucket.Bucket]float64{0x01: 5})
			time.Sleep(200 * time.Millisecond) // read at least once
			deleteKey(t, cli, loadKey)
		}, noErrorNames(loadKey), "mon-a"},
		{"requests: corrupt JSON", nil, putValue(layout.RequestsPrefix()+reqKey, `{`), answeredWith(reqKey, "unreadable request"), "mon-a"},
		{"requests: wrong types", nil, putValue(layout.RequestsPrefix()+reqKey, `{"id":"r1","op":7}`), answeredWith(reqKey, "unreadable request"), "mon-a"},
		{"requests: unknown op", nil, putValue(layout.RequestsPrefix()+reqKey, `{"id":"r1","op":"explode"}`), answeredWith(reqKey, `unknown operation "explode"`), "mon-a"},
		{"requests: deleted before a leader read it", func(t *testing.T, cli *clientv3.Client) {
			body, _ := json.Marshal(monitorapi.Request{ID: reqKey, Op: monitorapi.OpDrain, Node: "n1"})
			if _, err := cli.Put(ctxT(t), layout.RequestsPrefix()+reqKey, string(body)); err != nil {
				t.Fatal(err)
			}
			deleteKey(t, cli, layout.RequestsPrefix()+reqKey)
		}, nil, func(t *testing.T, cli *clientv3.Client, _ *observer.ObservedLogs) {
			// Withdrawn: not carried out, not answered. (A request withdrawn
			// while the leader plans it: withdrawn_test.go.)
			if resp, _ := cli.Get(ctxT(t), layout.ResponsesPrefix()+reqKey); len(resp.Kvs) != 0 {
				t.Fatalf("a withdrawn request was answered: %s", resp.Kvs[0].Value)
			}
			if resp, _ := cli.Get(ctxT(t), layout.SettingsKey()); len(resp.Kvs) != 0 {
				t.Fatalf("a withdrawn drain was carried out: settings %s", resp.Kvs[0].Value)
			}
		}, "mon-a"},
		{"responses: deleted", nil, func(t *testing.T, cli *clientv3.Client, _ *etcdtest.Etcd) {
			putValue(layout.ResponsesPrefix()+"r0", `{"id":"r0","ok":true}`)(t, cli, nil)
			deleteKey(t, cli, layout.ResponsesPrefix()+"r0")
		}, nil, "mon-a"},
		{"monitor/election: deleted", nil, func(t *testing.T, cli *clientv3.Client, c *etcdtest.Etcd) {
			startMonitor(t, c, "mon-b", nil)
			time.Sleep(300 * time.Millisecond) // mon-b campaigns behind mon-a
			resp, err := cli.Get(ctxT(t), layout.ElectionPrefix(), clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range resp.Kvs {
				if string(kv.Value) == "mon-a" {
					deleteKey(t, cli, string(kv.Key))
				}
			}
		}, func(t *testing.T, cli *clientv3.Client, _ *observer.ObservedLogs) {
			// A deleted election key deposes that leader; the next takes over.
			testutil.Eventually(t, 15*time.Second, "mon-b leads", func() bool {
				l, _ := monitorapi.Leader(ctxT(t), cli, layout)
				return l == "mon-b"
			})
		}, "mon-b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			if tc.beforeStart != nil {
				tc.beforeStart(t, cli)
			}
			core, logs := observer.New(zapcore.WarnLevel)
			startMonitor(t, c, "mon-a", zap.New(core), fastLoad)
			first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			if tc.do != nil {
				tc.do(t, cli, c)
			}
			if tc.outcome != nil {
				tc.outcome(t, cli, logs)
			}
			// Nothing crashed and no state was lost: a leader answers, and
			// the assignment is the one from before.
			resp, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance, DryRun: true})
			if err != nil || !resp.OK || resp.Leader != tc.leader {
				t.Fatalf("dry run afterwards: %+v, %v; want an answer from %s", resp, err, tc.leader)
			}
			if a := getAssignment(t, cli); a.Owners != first.Owners || a.Version != first.Version {
				t.Fatalf("the assignment changed: version %d -> %d, %d moves", first.Version, a.Version, len(ownerDiff(first, a)))
			}
		})
	}
}

func putValue(key, value string) func(*testing.T, *clientv3.Client, *etcdtest.Etcd) {
	return func(t *testing.T, cli *clientv3.Client, _ *etcdtest.Etcd) {
		if _, err := cli.Put(ctxT(t), key, value); err != nil {
			t.Fatal(err)
		}
	}
}

// loadRejected: the leader logs an error naming the key and leaves the
// report out.
func loadRejected(key string) func(*testing.T, *clientv3.Client, *observer.ObservedLogs) {
	return func(t *testing.T, _ *clientv3.Client, logs *observer.ObservedLogs) {
		testutil.Eventually(t, 10*time.Second, "an error naming "+key, func() bool {
			for _, e := range logs.FilterMessage("invalid load report in etcd; leaving it out").All() {
				if e.ContextMap()["key"] == key && e.ContextMap()["error"] != "" {
					return true
				}
			}
			return false
		})
	}
}

// noErrorNames: nothing is logged about the key (a deleted report is a
// proxy that stopped, not a fault).
func noErrorNames(key string) func(*testing.T, *clientv3.Client, *observer.ObservedLogs) {
	return func(t *testing.T, _ *clientv3.Client, logs *observer.ObservedLogs) {
		time.Sleep(200 * time.Millisecond) // several load samples
		for _, e := range logs.All() {
			if e.ContextMap()["key"] == key {
				t.Fatalf("logged about %s: %s %v", key, e.Message, e.ContextMap())
			}
		}
	}
}

// answeredWith: the request is answered with an error saying want, and
// removed.
func answeredWith(id, want string) func(*testing.T, *clientv3.Client, *observer.ObservedLogs) {
	return func(t *testing.T, cli *clientv3.Client, _ *observer.ObservedLogs) {
		var got monitorapi.Response
		testutil.Eventually(t, 10*time.Second, "request "+id+" answered", func() bool {
			resp, err := cli.Get(ctxT(t), layout.ResponsesPrefix()+id)
			return err == nil && len(resp.Kvs) == 1 && json.Unmarshal(resp.Kvs[0].Value, &got) == nil
		})
		if got.OK || !strings.Contains(got.Error, want) || got.ID != id {
			t.Fatalf("answer %+v; want ok false and an error saying %q", got, want)
		}
		if resp, _ := cli.Get(ctxT(t), layout.RequestsPrefix()+id); len(resp.Kvs) != 0 {
			t.Fatal("the answered request is still there")
		}
	}
}
