package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// TestHandoffWatch: how a waiting caller reads the assignments it sees.
// The response was written as version 10 and started bucket 01 (a->c) and
// queued bucket 02 (a->c).
func TestHandoffWatch(t *testing.T) {
	resp := &monitorapi.Response{Version: 10,
		Started: []schema.Move{{Bucket: 1, From: "a", To: "c"}},
		Queued:  []schema.Move{{Bucket: 2, From: "a", To: "c"}}}
	asg := func(version int64, moving map[bucket.Bucket]schema.MoveState, queued map[bucket.Bucket]schema.QueuedMove, owners ...string) *schema.Assignment {
		a := &schema.Assignment{Version: version, Moving: moving, Queued: queued}
		a.Owners[1], a.Owners[2] = owners[0], owners[1]
		return a
	}
	mv := func(epoch int64) schema.MoveState { return schema.MoveState{From: "a", To: "c", Epoch: epoch} }
	for _, tc := range []struct {
		name     string
		seen     []*schema.Assignment
		inFlight bool   // after the last one
		want     string // committed/aborted/pending of 01 and 02
	}{
		{"both still on their way", []*schema.Assignment{
			asg(10, map[bucket.Bucket]schema.MoveState{1: mv(10)}, map[bucket.Bucket]schema.QueuedMove{2: {To: "c"}}, "a", "a"),
		}, true, "committed [] aborted [] pending [01 02]"},
		{"both committed", []*schema.Assignment{asg(12, nil, nil, "c", "c")}, false, "committed [01 02] aborted [] pending []"},
		{"a timed-out move queued again with its abort is aborted at once", []*schema.Assignment{
			asg(11, nil, map[bucket.Bucket]schema.QueuedMove{1: {To: "c", AbortedVersion: 11}, 2: {To: "c"}}, "a", "a"),
		}, true, "committed [] aborted [01] pending [02]"},
		{"an abort from before the response is not this move's", []*schema.Assignment{
			asg(11, map[bucket.Bucket]schema.MoveState{1: mv(10)}, map[bucket.Bucket]schema.QueuedMove{2: {To: "c", AbortedVersion: 7}}, "a", "a"),
		}, true, "committed [] aborted [] pending [01 02]"},
		{"a move restarted with a newer epoch aborted before", []*schema.Assignment{
			asg(11, map[bucket.Bucket]schema.MoveState{1: mv(10), 2: mv(11)}, nil, "a", "a"),
			asg(14, map[bucket.Bucket]schema.MoveState{1: mv(13), 2: mv(11)}, nil, "a", "a"),
		}, true, "committed [] aborted [01] pending [02]"},
		{"an abort stays an abort when the retry commits", []*schema.Assignment{
			asg(11, nil, map[bucket.Bucket]schema.QueuedMove{1: {To: "c", AbortedVersion: 11}}, "a", "c"),
			asg(13, nil, nil, "c", "c"),
		}, false, "committed [02] aborted [01] pending []"},
		{"a cancelled move rests with its owner: aborted", []*schema.Assignment{asg(11, nil, nil, "a", "c")}, false, "committed [02] aborted [01] pending []"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hw := newHandoffWatch(resp)
			var inFlight bool
			for _, a := range tc.seen {
				inFlight = hw.observe(a)
			}
			o := hw.outcome(tc.seen[len(tc.seen)-1], time.Second)
			names := func(ms []schema.Move) []string {
				out := []string{}
				for _, m := range ms {
					out = append(out, m.Bucket.String())
				}
				return out
			}
			got := fmt.Sprintf("committed %v aborted %v pending %v", names(o.Committed), names(o.Aborted), names(o.Pending))
			if got != tc.want || inFlight != tc.inFlight {
				t.Fatalf("%s, in flight %v; want %s, %v", got, inFlight, tc.want, tc.inFlight)
			}
		})
	}
}

// TestWaitReportsTimedOutHandoffsAsAborted runs pin and drain with -wait
// against a real monitor whose old owner never releases (its registrar
// stand-in stays silent): each timed-out move is reported aborted as soon
// as it aborts, not after -wait, though its bucket waits in the queue for
// the cooldown; the command exits 1 and says so.
func TestWaitReportsTimedOutHandoffsAsAborted(t *testing.T) {
	const wait = 30 * time.Second
	start := func(t *testing.T) (string, *schema.Assignment) {
		c := etcdtest.Start(t)
		cli := c.Client(t)
		for _, n := range []string{"n1", "n2"} {
			registerNode(t, cli, n)
		}
		startMonitor(t, c, "mon-a", nil, func(m *monitor) {
			m.limits = handoff.Limits{MaxMoving: 256, MaxMovingPerNode: 256, Timeout: time.Second}
			m.cooldownFor = time.Hour
		})
		first, _ := waitAssignment(t, cli, "first assignment", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
		startAcker(t, cli, "n1") // n1's server never releases
		return "-etcd=" + strings.Join(c.Endpoints(), ","), first
	}
	t.Run("pin", func(t *testing.T) {
		etcd, first := start(t)
		b := first.Owned("n1")[0].String()
		began := time.Now()
		stdout, stderr, code := runCapture("pin", b, "n2", etcd, "-wait", wait.String())
		took := time.Since(began)
		if code != 1 || !strings.Contains(stdout, "0 committed, 1 aborted, 0 still in progress") ||
			!strings.Contains(stdout, b+":n1->n2") || !strings.Contains(stderr, "1 handoff(s) aborted, 0 not finished") {
			t.Fatalf("pin -wait: exit %d after %v\n%s%s", code, took, stdout, stderr)
		}
		if took > wait/2 {
			t.Fatalf("pin -wait took %v: the abort was not seen until the wait ran out", took)
		}
	})
	t.Run("drain", func(t *testing.T) {
		etcd, _ := start(t)
		began := time.Now()
		stdout, stderr, code := runCapture("drain", "n1", etcd, "-wait", wait.String(), "-json")
		took := time.Since(began)
		var resp monitorapi.Response
		if err := json.Unmarshal([]byte(stdout), &resp); err != nil || resp.Outcome == nil {
			t.Fatalf("drain -json: %v\n%s%s", err, stdout, stderr)
		}
		o := resp.Outcome
		if code != 1 || len(resp.Started) != 128 || len(o.Aborted) != 128 || len(o.Pending)+len(o.Committed) != 0 ||
			!strings.Contains(stderr, "128 handoff(s) aborted, 0 not finished") {
			t.Fatalf("drain -wait: exit %d after %v, started %d, outcome: %d committed %d aborted %d pending\n%s",
				code, took, len(resp.Started), len(o.Committed), len(o.Aborted), len(o.Pending), stderr)
		}
		if took > wait/2 {
			t.Fatalf("drain -wait took %v: the aborts were not seen until the wait ran out", took)
		}
	})
}
