package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// errConflict: another live registration uses this node_id with other URLs.
var errConflict = errors.New("node_id conflict")

// runRegistrar connects to etcd and runs the registration (and, if
// configured, the health gate and the notifier) until ctx ends.
func runRegistrar(ctx context.Context, s *settings, log *zap.Logger) error {
	cli, err := s.etcd.New(log.Named("etcd"))
	if err != nil {
		return err
	}
	defer cli.Close()
	w := watch.New(watch.Config{Client: cli, Layout: s.layout, Logger: log.Named("watch")})
	w.Start()
	defer w.Stop()

	r := &registrar{
		cli:     cli,
		layout:  s.layout,
		node:    s.node,
		ttl:     s.ttlSeconds(),
		log:     log.With(zap.String("node_id", s.node.NodeID)),
		watcher: w,
	}
	if s.health.path != "" {
		r.health = newHealthChecker(s.healthURL(), s.health, r.log.Named("health"))
		go r.health.run(ctx)
	}
	if s.notifyURL != "" {
		n := &notifier{url: s.notifyURL, nodeID: s.node.NodeID, log: r.log.Named("notify")}
		go n.run(ctx, w)
	}
	return r.run(ctx)
}

// registrar keeps one node registered in etcd.
type registrar struct {
	cli     *clientv3.Client
	layout  schema.Layout
	node    schema.Node
	ttl     int64 // seconds
	log     *zap.Logger
	watcher *watch.Watcher
	health  *healthChecker // nil: no health gate

	// retry bounds the back-off between failed attempts; tests shorten it.
	retryMin, retryMax time.Duration
}

// run registers, keeps the lease alive and registers again whenever the
// registration is lost, until ctx ends; then it revokes the lease. A
// conflicting registration found at the first contact with etcd is fatal
// (two servers configured with one id); later it is logged and retried.
func (r *registrar) run(ctx context.Context) error {
	if r.retryMin == 0 {
		r.retryMin, r.retryMax = 200*time.Millisecond, 5*time.Second
	}
	sub := r.watcher.Subscribe()
	defer sub.Close()
	backoff := r.retryMin
	firstContact := true
	for {
		if !r.waitHealthy(ctx) {
			return nil
		}
		lease, rev, err := r.register(ctx)
		if ctx.Err() != nil {
			if lease != 0 {
				r.revoke(lease)
			}
			return nil
		}
		if errors.Is(err, errConflict) && firstContact {
			return err
		}
		if err != nil {
			if !errors.Is(err, errConflict) {
				err = fmt.Errorf("cannot register in etcd (retrying): %w", err)
			} else {
				firstContact = false
			}
			r.log.Error("registration failed", zap.Error(err), zap.Duration("retry_in", backoff))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, r.retryMax)
			continue
		}
		firstContact = false
		backoff = r.retryMin
		r.log.Info("registered", zap.String("key", r.layout.NodeKey(r.node.NodeID)),
			zap.String("node_url", r.node.NodeURL), zap.String("local_node_url", r.node.LocalNodeURL),
			zap.Int64("ttl_seconds", r.ttl), zap.String("lease", fmt.Sprintf("%x", lease)))
		if err := r.hold(ctx, sub, lease, rev); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// hold keeps one registration alive until it is lost (returns nil), ctx
// ends (revokes, returns nil), or the key is taken over by another server
// (returns errConflict).
func (r *registrar) hold(ctx context.Context, sub *watch.Subscription, lease clientv3.LeaseID, putRev int64) error {
	kaCtx, cancelKA := context.WithCancel(ctx)
	defer cancelKA()
	ka, err := r.cli.KeepAlive(kaCtx, lease)
	if err != nil {
		r.log.Warn("keep-alive failed to start; registering again", zap.Error(err))
		return nil
	}
	var healthChanged <-chan struct{}
	if r.health != nil {
		healthChanged = r.health.changed
	}
	for {
		select {
		case <-ctx.Done():
			cancelKA()
			r.revoke(lease)
			return nil
		case _, ok := <-ka:
			// Responses are drained here; the channel closes when the lease
			// is gone (expired or revoked) or cannot be renewed in time.
			if !ok {
				r.log.Warn("lease lost; registering again with a new lease", zap.String("lease", fmt.Sprintf("%x", lease)))
				return nil
			}
		case <-healthChanged:
			if !r.health.healthy() {
				r.log.Warn("local server unhealthy; withdrawing the registration", zap.String("health_url", r.health.url))
				cancelKA()
				r.revoke(lease)
				return nil
			}
		case snap := <-sub.C:
			if snap.Revision <= putRev {
				continue // older than our own write
			}
			cur, present := snap.Nodes[r.node.NodeID]
			_, corrupt := snap.NodeErrors[r.node.NodeID]
			switch {
			case present && !corrupt && !cur.SameEndpoints(r.node):
				return fmt.Errorf("%w: %s now holds node_url %s, local_node_url %s, written by someone else; "+
					"is another server configured with node_id %q?", errConflict, r.layout.NodeKey(r.node.NodeID),
					cur.NodeURL, cur.LocalNodeURL, r.node.NodeID)
			case !present || corrupt:
				r.log.Warn("registration deleted or overwritten in etcd; writing it again")
				rev, err := r.put(ctx, lease)
				if err != nil {
					r.log.Warn("re-writing the registration failed; registering again", zap.Error(err))
					cancelKA()
					r.revoke(lease)
					return nil
				}
				putRev = rev
			}
		}
	}
}

// register grants a lease and writes the node key under it. The key is
// created if absent, or taken over if it holds this node's own URLs (a
// previous run that died within the TTL) or an unreadable value; a live
// registration with other URLs is a conflict.
func (r *registrar) register(ctx context.Context) (clientv3.LeaseID, int64, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	grant, err := r.cli.Grant(rctx, r.ttl)
	if err != nil {
		return 0, 0, fmt.Errorf("grant lease: %w", err)
	}
	key := r.layout.NodeKey(r.node.NodeID)
	value := r.value()
	// First try to create the key; if it exists and may be taken over, try
	// again on condition that it is unchanged since we read it.
	cond := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	for range 5 { // a concurrent change of the key makes the txn fail; retry
		txn, err := r.cli.Txn(rctx).
			If(cond).
			Then(clientv3.OpPut(key, value, clientv3.WithLease(grant.ID))).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			r.revoke(grant.ID)
			return 0, 0, fmt.Errorf("write %s: %w", key, err)
		}
		if txn.Succeeded {
			return grant.ID, txn.Header.Revision, nil
		}
		kvs := txn.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			cond = clientv3.Compare(clientv3.CreateRevision(key), "=", 0) // deleted meanwhile
			continue
		}
		existing := kvs[0]
		if cur, perr := schema.ParseNode(r.node.NodeID, existing.Value); perr == nil && !cur.SameEndpoints(r.node) {
			r.revoke(grant.ID)
			return 0, 0, fmt.Errorf("%w: %s is registered by a live server with node_url %s and local_node_url %s "+
				"(this one has %s and %s). Two servers must not share node_id %q; if the other server is gone, "+
				"its registration expires %s",
				errConflict, key, cur.NodeURL, cur.LocalNodeURL, r.node.NodeURL, r.node.LocalNodeURL, r.node.NodeID,
				r.remaining(rctx, clientv3.LeaseID(existing.Lease)))
		} else if perr != nil {
			r.log.Warn("replacing an unreadable registration", zap.String("key", key), zap.Error(perr))
		}
		cond = clientv3.Compare(clientv3.ModRevision(key), "=", existing.ModRevision)
	}
	r.revoke(grant.ID)
	return 0, 0, fmt.Errorf("write %s: the key kept changing under concurrent writers", key)
}

// put re-writes the registration under the current lease.
func (r *registrar) put(ctx context.Context, lease clientv3.LeaseID) (int64, error) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := r.cli.Put(pctx, r.layout.NodeKey(r.node.NodeID), r.value(), clientv3.WithLease(lease))
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

func (r *registrar) value() string {
	n := r.node
	n.RegisteredAt = time.Now().UTC().Format(time.RFC3339)
	return string(n.Encode())
}

// remaining describes when a lease expires, for the conflict message.
func (r *registrar) remaining(ctx context.Context, id clientv3.LeaseID) string {
	if id == 0 {
		return "never: it has no lease (written by hand?)"
	}
	ttl, err := r.cli.TimeToLive(ctx, id)
	if err != nil || ttl.TTL < 0 {
		return "soon"
	}
	return fmt.Sprintf("within %ds unless it is kept alive", ttl.TTL)
}

// revoke withdraws a lease, deleting the node key at once. It runs on
// shutdown too, so it uses its own short deadline rather than ctx.
func (r *registrar) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.cli.Revoke(ctx, id); err != nil {
		r.log.Warn("could not revoke the lease; the registration expires after the TTL",
			zap.String("lease", fmt.Sprintf("%x", id)), zap.Error(err))
		return
	}
	r.log.Info("registration withdrawn", zap.String("lease", fmt.Sprintf("%x", id)))
}

// waitHealthy returns once the local server is healthy (at once without a
// health gate), or false when ctx ends first.
func (r *registrar) waitHealthy(ctx context.Context) bool {
	if r.health == nil {
		return ctx.Err() == nil
	}
	logged := false
	for !r.health.healthy() {
		if !logged && r.health.checked() {
			r.log.Info("waiting for the local server to answer before registering", zap.String("health_url", r.health.url))
			logged = true
		}
		select {
		case <-ctx.Done():
			return false
		case <-r.health.changed:
		}
	}
	return true
}
