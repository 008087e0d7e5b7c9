package leasedeadline

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

func TestDefaultMargin(t *testing.T) {
	for ttl, want := range map[time.Duration]time.Duration{90 * time.Second: 22500 * time.Millisecond, 3 * time.Second: 1500 * time.Millisecond, 10 * time.Second: 2500 * time.Millisecond, 6 * time.Second: 2 * time.Second} {
		t.Run(ttl.String(), func(t *testing.T) {
			if got := DefaultMargin(ttl); got != want {
				t.Fatalf("DefaultMargin(%v) = %v, want %v", ttl, got, want)
			}
		})
	}
}

// grant starts a lease kept alive until the returned cancel.
func grant(t *testing.T, cli *clientv3.Client, ttl int64) (clientv3.LeaseID, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	ka, err := cli.KeepAlive(ctx, l.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	return l.ID, cancel
}

func TestDeadlineIsRenewedThenExpiresBeforeTheLease(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	const ttl = 5 * time.Second
	lease, stopKeepAlive := grant(t, cli, 5)
	defer stopKeepAlive()
	tr := New(cli, lease, ttl, DefaultMargin(ttl))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	go tr.Run(ctx)

	t.Run("a deadline within TTL minus the margin", func(t *testing.T) {
		testutil.Eventually(t, 2*time.Second, "first deadline", func() bool { _, ok := tr.Deadline(); return ok })
		d, _ := tr.Deadline()
		seen := time.Now()
		// The renewal was sent between start and seen: the deadline is
		// TTL minus the margin after it.
		if d.Before(start.Add(ttl-DefaultMargin(ttl))) || d.After(seen.Add(ttl-DefaultMargin(ttl))) {
			t.Fatalf("deadline %v after start, want %v after the renewal, sent within %v of start", d.Sub(start), ttl-DefaultMargin(ttl), seen.Sub(start))
		}
	})
	t.Run("renewed while the lease is kept alive", func(t *testing.T) {
		// Without renewals the first deadline would pass; wait beyond it.
		first, _ := tr.Deadline()
		time.Sleep(time.Until(first) + time.Second)
		select {
		case <-tr.Expired():
			t.Fatal("expired while the lease is alive")
		default:
		}
		if d, _ := tr.Deadline(); !d.After(first) || d.Before(time.Now()) {
			t.Fatalf("deadline %v after start, first was %v", d.Sub(start), first.Sub(start))
		}
	})
	t.Run("expires before etcd can drop the lease once etcd is unreachable", func(t *testing.T) {
		e.Stop(0)
		stopped := time.Now()
		last, _ := tr.Deadline()
		select {
		case <-tr.Expired():
		case <-time.After(ttl + time.Second):
			t.Fatal("not expired within the TTL")
		}
		// The lease was last renewed before stopped, so etcd could expire
		// it at stopped+TTL at the earliest... but never before last+margin.
		if now := time.Now(); now.After(stopped.Add(ttl)) || now.Before(last) {
			t.Fatalf("expired %v after etcd stopped, deadline was %v after", now.Sub(stopped), last.Sub(stopped))
		}
	})
}

func TestExpiresAtOnceWhenTheLeaseIsRevoked(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	lease, stop := grant(t, cli, 30)
	defer stop()
	tr := New(cli, lease, 30*time.Second, DefaultMargin(30*time.Second))
	tr.interval = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Run(ctx)
	testutil.Eventually(t, 2*time.Second, "first deadline", func() bool { _, ok := tr.Deadline(); return ok })
	if _, err := cli.Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tr.Expired():
	case <-time.After(2 * time.Second):
		t.Fatal("a revoked lease did not expire the deadline")
	}
}
