package leases

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
)

func present(t *testing.T, cli *clientv3.Client, key string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return len(resp.Kvs) > 0
}

// sessionWithKey starts a session (on ctx) and writes key under its lease.
func sessionWithKey(t *testing.T, cli *clientv3.Client, ctx context.Context, ttl int, key string) *concurrency.Session {
	t.Helper()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.Orphan)
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(pctx, key, "v", clientv3.WithLease(sess.Lease())); err != nil {
		t.Fatal(err)
	}
	return sess
}

func TestReleaseRemovesTheKeysAtOnce(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	cases := []struct {
		name   string
		before func(ctx context.CancelFunc, sess *concurrency.Session) // what happened before Release
	}{
		{"session running", func(context.CancelFunc, *concurrency.Session) {}},
		{"session context cancelled (a stopping program)", func(cancel context.CancelFunc, _ *concurrency.Session) { cancel() }},
		{"lease already revoked by someone else", func(_ context.CancelFunc, sess *concurrency.Session) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := cli.Revoke(ctx, sess.Lease()); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := "/k/" + tc.name
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sess := sessionWithKey(t, cli, ctx, 60, key)
			tc.before(cancel, sess)
			core, logs := observer.New(zapcore.DebugLevel)
			if err := Release(sess, zap.New(core)); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if present(t, cli, key) {
				t.Error("key still there after Release")
			}
			select {
			case <-sess.Done():
			default:
				t.Error("keep-alive still running after Release")
			}
			if logs.Len() != 0 {
				t.Errorf("logged %v", logs.All())
			}
		})
	}
}

// TestCloseCannotRevokeWithACancelledContext is why Release exists: the
// session's own Close revokes with the session's context, so after that
// context is cancelled the key stays until the TTL ends.
func TestCloseCannotRevokeWithACancelledContext(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	sess := sessionWithKey(t, cli, ctx, 60, "/k")
	cancel()
	if err := sess.Close(); err == nil {
		t.Fatal("Close revoked with a cancelled context; Release's doc comment is out of date")
	}
	if !present(t, cli, "/k") {
		t.Fatal("key gone after a failed Close")
	}
}

// TestReleaseWithEtcdDownIsBoundedAndLogged: with etcd unreachable,
// Release gives up after RevokeTimeout, says so, and stops the keep-alive.
func TestReleaseWithEtcdDownIsBoundedAndLogged(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	sess := sessionWithKey(t, cli, context.Background(), 60, "/k")
	c.Stop(0)
	core, logs := observer.New(zapcore.WarnLevel)
	start := time.Now()
	err := Release(sess, zap.New(core))
	took := time.Since(start)
	if err == nil {
		t.Fatal("Release reported success with etcd down")
	}
	if took > RevokeTimeout+time.Second {
		t.Errorf("Release took %v; want about RevokeTimeout (%v)", took, RevokeTimeout)
	}
	if got := logs.FilterMessageSnippet("expire after the TTL").Len(); got != 1 {
		t.Errorf("want one warning saying the keys expire after the TTL; logged %v", logs.All())
	}
	// The keep-alive is stopped although the revoke failed: nothing renews
	// the lease when etcd is back, so it expires after its TTL (60s here;
	// the keep-alive alone would have gone on for that long at least).
	select {
	case <-sess.Done():
	default:
		t.Error("keep-alive still running after a failed Release")
	}
}
