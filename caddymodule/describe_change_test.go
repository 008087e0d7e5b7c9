package caddymodule

import (
	"maps"
	"strings"
	"testing"
)

// The owner of a bucket is deregistered during a request while the
// assignment still names it: the message says so and names the node once,
// not "moved from n1 to n1".
func TestDescribeChangeSameOwnerDeregistered(t *testing.T) {
	fw := unroutableFollower()
	_, chosen := fw.lookup(0x5c)
	if !chosen.ok || chosen.nodeID != "n1" {
		t.Fatalf("setup: bucket 5c routes to %q (ok %v); want n1", chosen.nodeID, chosen.ok)
	}
	choice := &upstreamChoice{route: chosen}

	snap := *fw.table.Load().snap
	snap.Nodes = maps.Clone(snap.Nodes)
	delete(snap.Nodes, "n1") // same owner in the assignment, no longer registered
	fw.table.Store(buildTable(fw, &snap, nil))

	ok, table, now := choice.valid()
	if ok {
		t.Fatal("the choice is still valid after its owner was deregistered")
	}
	got := choice.describeChange(table, now)
	want := "bucket 5c changed during the request: bucket 5c: its owner n1 (assignment version 3) is not registered"
	if !strings.HasPrefix(got, want) {
		t.Fatalf("message %q; want it to start with %q", got, want)
	}
	if strings.Contains(got, "moved from") || strings.Count(got, "n1") != 1 {
		t.Fatalf("message %q names a move or the node more than once", got)
	}
}
