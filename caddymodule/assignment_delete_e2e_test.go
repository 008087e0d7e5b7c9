package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/testutil"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// A slip by hand on <prefix>/assignment (deleted, or overwritten with a
// value that does not parse) changes nothing for clients: the proxy keeps
// routing every bucket to its owner by the last valid assignment, answers
// no 503, and keeps open WebSockets open; the next valid assignment (the
// monitor's repair, here written by the test) is applied as usual.
func TestAssignmentDeletedOrCorruptKeepsRouting(t *testing.T) {
	for _, tc := range []struct {
		name  string
		slip  func(e *env)
		isErr func(error) bool
	}{
		{"deleted", func(e *env) { e.deleteKey(layout.AssignmentKey()) }, func(err error) bool { return errors.Is(err, watch.ErrAssignmentDeleted) }},
		{"corrupt JSON", func(e *env) { e.put(layout.AssignmentKey(), []byte(`{"version":`)) }, func(err error) bool { return err != nil }},
		{"wrong types", func(e *env) { e.put(layout.AssignmentKey(), []byte(`{"version":"2","buckets":[]}`)) }, func(err error) bool { return err != nil }},
		{"empty owner", func(e *env) { e.put(layout.AssignmentKey(), []byte(`{"version":2,"buckets":{"00":""}}`)) }, func(err error) bool { return err != nil }},
		{"unknown bucket", func(e *env) { e.put(layout.AssignmentKey(), []byte(`{"version":2,"buckets":{"zz":"n1"}}`)) }, func(err error) bool { return err != nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t) // version 1: bucket b -> n(b%3+1)
			ws := dialWS(t, 0x10)
			if got, err := echo(ws, "before"); err != nil || got != "n2:before" {
				t.Fatalf("echo before: %q %v", got, err)
			}
			tc.slip(e)
			testutil.Eventually(t, 10*time.Second, "the proxy saw the slip", func() bool {
				s := e.followerSnapshot()
				return s != nil && tc.isErr(s.AssignmentError)
			})
			if v := e.routedVersion(); v != 1 {
				t.Fatalf("the proxy routes by version %d; want the last valid one, 1", v)
			}
			e.expectOwners(nil)
			if got, err := echo(ws, "during"); err != nil || got != "n2:during" {
				t.Fatalf("the WebSocket did not survive the slip: %q %v", got, err)
			}

			// The repair: a newer valid assignment, with one bucket moved.
			e.putAssignment(2, map[bucket.Bucket]string{0x20: "n1"})
			e.waitVersion(2)
			e.expectOwners(map[bucket.Bucket]string{0x20: "n1"})
			if got, err := echo(ws, "after"); err != nil || got != "n2:after" {
				t.Fatalf("the WebSocket of a bucket that did not move closed: %q %v", got, err)
			}
		})
	}
}

// followerSnapshot is the state the proxy's follower of this test's etcd
// routes by (nil: none follows it).
func (e *env) followerSnapshot() *watch.Snapshot {
	var s *watch.Snapshot
	forEachFollower(func(fw *follower) {
		if strings.Join(fw.endpoints, ",") == strings.Join(e.etcd.Endpoints(), ",") {
			s = fw.table.Load().snap
		}
	})
	return s
}

// expectOwners checks that a request for every bucket reaches its owner
// under the setup's assignment (bucket b -> n(b%3+1)) with overrides: 200
// from that node, never a 503.
func (e *env) expectOwners(override map[bucket.Bucket]string) {
	e.t.Helper()
	for i := range bucket.Count {
		b := bucket.Bucket(i)
		owner := fmt.Sprintf("n%d", i%3+1)
		if o, ok := override[b]; ok {
			owner = o
		}
		a := do(e.t, "GET", proxyURL("/dtables/"+uuidIn(b)), nil)
		if a.status != 200 || a.body["node"] != owner {
			e.t.Fatalf("bucket %s: status %d from %q; want 200 from %s (%s)", b, a.status, a.body["node"], owner, a.raw)
		}
	}
}

func (e *env) deleteKey(key string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.cli.Delete(ctx, key); err != nil {
		e.t.Fatal(err)
	}
}
