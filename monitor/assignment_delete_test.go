package main

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// S7: a deleted assignment is written back from the last valid one, with a
// newer version and the same owners, epochs and moves; a reader never sees
// it missing.
func TestDeletedAssignmentIsWrittenBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		moving bool // a move is in progress when the key is deleted
	}{
		{"at rest", false},
		{"with a move in progress", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			registerNode(t, cli, "n1")
			registerNode(t, cli, "n2")
			l3 := registerNode(t, cli, "n3")
			startMonitor(t, c, "mon-a", nil)
			waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
			if _, err := cli.Revoke(ctxT(t), l3); err != nil { // version 2: epochs differ
				t.Fatal(err)
			}
			before, _ := waitAssignment(t, cli, "n3's buckets moved", func(a *schema.Assignment) bool { return len(a.Owned("n3")) == 0 })
			if tc.moving {
				pinAndWait(t, cli, before.Owned("n1")[0], "n2")
				before = getAssignment(t, cli)
			}

			// A proxy's view: the watcher's snapshots, all of them.
			w := watch.New(watch.Config{Client: c.Client(t), Layout: layout})
			w.Start()
			t.Cleanup(w.Stop)
			sub := w.Subscribe()
			defer sub.Close()
			var sawNil atomic.Bool
			seen := make(chan int64, 1000)
			go func() {
				for s := range sub.C {
					if s.Assignment == nil {
						sawNil.Store(true)
					} else {
						seen <- s.Assignment.Version
					}
				}
			}()

			testutil.Eventually(t, 10*time.Second, "the reader has the assignment", func() bool {
				s := w.Snapshot()
				return s != nil && s.Assignment != nil && s.Assignment.Version == before.Version
			})
			deleteKey(t, cli, layout.AssignmentKey())
			after, _ := waitAssignment(t, cli, "written back", func(*schema.Assignment) bool { return true })
			if after.Version <= before.Version {
				t.Fatalf("written back as version %d; want more than %d", after.Version, before.Version)
			}
			if after.Owners != before.Owners || after.Epochs != before.Epochs || len(after.Moving) != len(before.Moving) {
				t.Fatalf("written back with other owners, epochs or moves: diff %v, moving %v (was %v)", ownerDiff(before, after), after.Moving, before.Moving)
			}
			for b, m := range before.Moving {
				if after.Moving[b] != m {
					t.Fatalf("move of %s: %+v, was %+v", b, after.Moving[b], m)
				}
			}
			testutil.Eventually(t, 10*time.Second, "the reader sees the new version", func() bool {
				for {
					select {
					case v := <-seen:
						if v == after.Version {
							return true
						}
					default:
						return false
					}
				}
			})
			if sawNil.Load() {
				t.Fatal("a reader saw no assignment while the key was deleted")
			}
		})
	}
}
