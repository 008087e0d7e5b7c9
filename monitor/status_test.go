package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/statusview"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// TestStatusShowsAMoveInProgress: while a pinned bucket's old owner holds
// on (it never releases), `monitor status` shows the move, in text and
// JSON: its direction, its epoch, and an age that grows.
func TestStatusShowsAMoveInProgress(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	registerNode(t, cli, "n1")
	registerNode(t, cli, "n2")
	startMonitor(t, c, "mon-a", nil, func(m *monitor) {
		m.limits = handoff.Limits{MaxMoving: 16, MaxMovingPerNode: 8, Timeout: time.Hour}
	})
	first, _ := waitAssignment(t, cli, "assigned", func(a *schema.Assignment) bool { return len(a.Owned("")) == 0 })
	startAcker(t, cli, "n1") // n1's server never releases
	b := first.Owned("n1")[0]
	if _, err := monitorapi.Send(ctxT(t), cli, layout, monitorapi.Request{Op: monitorapi.OpPin, Bucket: b.String(), Node: "n2"}); err != nil {
		t.Fatal(err)
	}
	moving, _ := waitAssignment(t, cli, "move started", func(a *schema.Assignment) bool { _, ok := a.Moving[b]; return ok })
	mv := moving.Moving[b]
	etcd := "-etcd=" + strings.Join(c.Endpoints(), ",")

	var st statusview.Status
	testutil.Eventually(t, 10*time.Second, "status -json shows the move with an age", func() bool {
		stdout, stderr, code := runCapture("status", etcd, "-json")
		if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil {
			t.Fatalf("status -json: exit %d\n%s%s", code, stdout, stderr)
		}
		return len(st.Moving) == 1 && st.Moving[0].AgeMS >= 500
	})
	got := st.Moving[0]
	if got.Bucket != b.String() || got.From != "n1" || got.To != "n2" || got.Epoch != mv.Epoch || !got.Since.Equal(mv.Since) || st.Queued != 0 {
		t.Fatalf("status -json moving %+v (queued %d); want %s n1->n2 epoch %d since %v", got, st.Queued, b, mv.Epoch, mv.Since)
	}

	stdout, stderr, code := runCapture("status", etcd)
	if code != 0 || !strings.Contains(stdout, "handoffs: 1 in progress, 0 queued") {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	line := regexp.MustCompile(fmt.Sprintf(`(?m)^  %s  n1 -> n2  for (\S+)  \((\S+), epoch %d\)$`, b, mv.Epoch)).FindStringSubmatch(stdout)
	if line == nil {
		t.Fatalf("status: no line for %s n1 -> n2 with epoch %d in\n%s", b, mv.Epoch, stdout)
	}
	if age, err := time.ParseDuration(line[1]); err != nil || age < 500*time.Millisecond || line[2] != mv.Reason {
		t.Fatalf("status: age %q (want at least 500ms), reason %q (want %q)", line[1], line[2], mv.Reason)
	}
}
