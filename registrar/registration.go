package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/leases"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// testHookBeforeRewrite, if set, runs before a deleted registration is
// written again (a test registers another server there meanwhile).
var testHookBeforeRewrite func()

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
		cli:             cli,
		layout:          s.layout,
		node:            s.node,
		ttl:             s.ttlSeconds(),
		log:             log.With(zap.String("node_id", s.node.NodeID)),
		watcher:         w,
		shutdownTimeout: s.shutdownTimeout,
		releaseTimeout:  s.releaseTimeout,
	}
	if s.health.path != "" {
		r.health = newHealthChecker(s.healthURL(), s.health, r.log.Named("health"))
		go r.health.run(ctx)
	}
	// The link to the server outlives ctx: a clean stop still hands
	// buckets off and fences the server before the lease is revoked.
	linkCtx, stopLink := context.WithCancel(context.Background())
	defer stopLink()
	ttl := time.Duration(r.ttl) * time.Second
	r.link = &serverLink{nodeID: s.node.NodeID, cli: cli, layout: s.layout, watcher: w, log: r.log.Named("server"),
		ttl: ttl, margin: s.fenceMargin, heartbeat: max(ttl/6, 100*time.Millisecond), releaseTimeout: s.releaseTimeout,
		fenceCommand: s.fenceCommand}
	switch {
	case s.notifyURL != "" && s.notifyProtocol == 1:
		n := &notifier{url: s.notifyURL, nodeID: s.node.NodeID, log: r.log.Named("notify")}
		go n.run(ctx, w)
	case s.notifyURL != "":
		r.link.url = s.notifyURL
	}
	r.link.init()
	go r.link.run(linkCtx)
	return r.run(ctx, linkCtx)
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
	link    *serverLink
	// shutdownTimeout bounds the handoff of a clean stop; releaseTimeout
	// how long the server may take to save what it could not hand off.
	shutdownTimeout, releaseTimeout time.Duration

	// retry bounds the back-off between failed attempts; tests shorten it.
	retryMin, retryMax time.Duration
}

// run registers, keeps the lease alive and registers again whenever the
// registration is lost, until ctx ends; then it revokes the lease. A
// conflicting registration found at the first contact with etcd is fatal
// (two servers configured with one id); later it is logged and retried.
func (r *registrar) run(ctx, linkCtx context.Context) error {
	if r.retryMin == 0 {
		r.retryMin, r.retryMax = 200*time.Millisecond, 5*time.Second
	}
	sub := r.watcher.Subscribe()
	defer sub.Close()
	backoff := r.retryMin
	firstContact := true
	for {
		if !r.waitHealthy(ctx, sub) {
			return nil
		}
		sess, rev, err := r.register(ctx)
		if ctx.Err() != nil {
			if sess != nil {
				r.withdraw(sess)
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
			zap.Int64("ttl_seconds", r.ttl), zap.String("lease", leaseHex(sess.Lease())))
		r.link.attach(linkCtx, sess.Lease(), rev)
		if err := r.hold(ctx, sub, sess, rev); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// hold keeps one registration until it is lost (returns nil), ctx ends
// (withdraws it, returns nil), or the key is taken over by another server
// (returns errConflict). The session's keep-alive stops in every case.
func (r *registrar) hold(ctx context.Context, sub *watch.Subscription, sess *concurrency.Session, putRev int64) error {
	defer sess.Orphan()
	var healthChanged <-chan struct{}
	if r.health != nil {
		healthChanged = r.health.changed
	}
	for {
		select {
		case <-ctx.Done():
			r.leave(sub, sess)
			r.withdrawAfter(r.link.detach("clean stop"), sess)
			return nil
		case <-sess.Done():
			// The keep-alive stopped: the lease expired or was revoked, or
			// etcd did not renew it for a whole TTL.
			r.log.Warn("lease lost; registering again with a new lease", zap.String("lease", leaseHex(sess.Lease())))
			r.link.detach("lease lost")
			return nil
		case <-healthChanged:
			if !r.health.healthy() {
				r.log.Warn("local server unhealthy; withdrawing the registration", zap.String("health_url", r.health.url))
				r.withdrawAfter(r.link.detach("local server unhealthy"), sess)
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
				r.link.detach("another server registered with this node_id") // the key is not ours to revoke
				return fmt.Errorf("%w: %s now holds node_url %s, local_node_url %s, written by someone else; "+
					"is another server configured with node_id %q?", errConflict, r.layout.NodeKey(r.node.NodeID),
					cur.NodeURL, cur.LocalNodeURL, r.node.NodeID)
			case !present || corrupt:
				r.log.Warn("registration deleted or overwritten in etcd; writing it again")
				if testHookBeforeRewrite != nil {
					testHookBeforeRewrite()
				}
				// claim, not a plain put: another server may have
				// registered this node_id in the meantime.
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				rev, err := r.claim(cctx, sess.Lease())
				cancel()
				if errors.Is(err, errConflict) {
					r.link.detach("another server registered with this node_id")
					return err
				}
				if err != nil {
					r.log.Warn("re-writing the registration failed; registering again", zap.Error(err))
					r.withdrawAfter(r.link.detach("registration could not be re-written"), sess)
					return nil
				}
				putRev = rev
			}
		}
	}
}

// register grants a lease, keeps it alive in a session, and writes the node
// key under it (claim). It returns the session and the write's revision.
//
// The lease is granted here rather than by concurrency.NewSession(WithTTL),
// so that the grant is bounded by a short timeout: NewSession grants with
// the session's context, which is also the parent of its keep-alive, so a
// timeout there would end the keep-alive too. The session is given no
// context (it runs on the client's): its Done channel then closes when the
// lease is lost, not when ctx ends. It is ended by withdraw (or Orphan),
// never by Close, so it needs no WithTTL.
func (r *registrar) register(ctx context.Context) (*concurrency.Session, int64, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	grant, err := r.cli.Grant(rctx, r.ttl)
	if err != nil {
		return nil, 0, fmt.Errorf("grant lease: %w", err)
	}
	sess, err := concurrency.NewSession(r.cli, concurrency.WithLease(grant.ID))
	if err != nil {
		leases.Revoke(r.cli, grant.ID, r.log)
		return nil, 0, fmt.Errorf("keep lease %s alive: %w", leaseHex(grant.ID), err)
	}
	rev, err := r.claim(rctx, sess.Lease())
	if err != nil {
		leases.Release(sess, r.log)
		return nil, 0, err
	}
	return sess, rev, nil
}

// claim writes the node key under lease in one transaction. The key is
// created if absent, or taken over if it holds this node's own URLs (a
// previous run that died within the TTL) or an unreadable value; a live
// registration with other URLs is a conflict.
func (r *registrar) claim(ctx context.Context, lease clientv3.LeaseID) (int64, error) {
	key := r.layout.NodeKey(r.node.NodeID)
	value := r.value()
	// First try to create the key; if it exists and may be taken over, try
	// again on condition that it is unchanged since we read it.
	cond := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	for range 5 { // a concurrent change of the key makes the txn fail; retry
		txn, err := r.cli.Txn(ctx).
			If(cond).
			Then(clientv3.OpPut(key, value, clientv3.WithLease(lease))).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return 0, fmt.Errorf("write %s: %w", key, err)
		}
		if txn.Succeeded {
			return txn.Header.Revision, nil
		}
		kvs := txn.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			cond = clientv3.Compare(clientv3.CreateRevision(key), "=", 0) // deleted meanwhile
			continue
		}
		existing := kvs[0]
		if cur, perr := schema.ParseNode(r.node.NodeID, existing.Value); perr == nil && !cur.SameEndpoints(r.node) {
			return 0, fmt.Errorf("%w: %s is registered by a live server with node_url %s and local_node_url %s "+
				"(this one has %s and %s). Two servers must not share node_id %q; if the other server is gone, "+
				"its registration expires %s",
				errConflict, key, cur.NodeURL, cur.LocalNodeURL, r.node.NodeURL, r.node.LocalNodeURL, r.node.NodeID,
				r.remaining(ctx, clientv3.LeaseID(existing.Lease)))
		} else if perr != nil {
			r.log.Warn("replacing an unreadable registration", zap.String("key", key), zap.Error(perr))
		}
		cond = clientv3.Compare(clientv3.ModRevision(key), "=", existing.ModRevision)
	}
	return 0, fmt.Errorf("write %s: the key kept changing under concurrent writers", key)
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

// withdrawAfter withdraws the registration at once if the server's fence
// was confirmed. Otherwise the lease is left to expire: the monitor moves
// the node's buckets as soon as its key vanishes, and only the lease's
// expiry is sure to come after the server's own deadline.
func (r *registrar) withdrawAfter(fenced bool, sess *concurrency.Session) {
	if fenced {
		r.withdraw(sess)
		return
	}
	sess.Orphan()
	r.log.Warn("the server did not confirm its fence: not revoking the lease; the registration expires after the TTL, after the server's own deadline",
		zap.String("lease", leaseHex(sess.Lease())), zap.Int64("ttl_seconds", r.ttl))
}

// withdraw ends the session and revokes its lease, deleting the node key at
// once (see leases.Release: it works on shutdown too, when ctx is done).
func (r *registrar) withdraw(sess *concurrency.Session) {
	if leases.Release(sess, r.log) == nil {
		r.log.Info("registration withdrawn", zap.String("lease", leaseHex(sess.Lease())))
	}
}

func leaseHex(id clientv3.LeaseID) string { return fmt.Sprintf("%x", id) }

// testHookWaitingForHealth, if set, is given the subscription that
// waitHealthy keeps reading while it waits.
var testHookWaitingForHealth func(*registrar, *watch.Subscription)

// waitHealthy returns once the local server is healthy (at once without a
// health gate), or false when ctx ends first. It keeps reading sub
// meanwhile and drops what it reads: every later step looks only at states
// newer than its own write, so none of them matters, and an unread
// subscription would queue every change of a long wait.
func (r *registrar) waitHealthy(ctx context.Context, sub *watch.Subscription) bool {
	if r.health == nil {
		return ctx.Err() == nil
	}
	logged := false
	if testHookWaitingForHealth != nil {
		testHookWaitingForHealth(r, sub)
	}
	for !r.health.healthy() {
		if !logged && r.health.checked() {
			r.log.Info("waiting for the local server to answer before registering", zap.String("health_url", r.health.url))
			logged = true
		}
		select {
		case <-ctx.Done():
			return false
		case <-r.health.changed:
		case <-sub.C:
		}
	}
	return true
}

// leave hands this node's buckets off before a clean stop: it marks the
// registration "leaving" (the monitor then moves every bucket away through
// the handoff) and waits until the node owns nothing and hands nothing
// off, at most shutdownTimeout. With nothing to hand off, or no monitor to
// do it, it returns at once.
func (r *registrar) leave(sub *watch.Subscription, sess *concurrency.Session) {
	owned := func(s *watch.Snapshot) int {
		if s == nil || s.Assignment == nil {
			return 0
		}
		return len(s.Assignment.Owned(r.node.NodeID))
	}
	snap := r.watcher.Snapshot()
	if owned(snap) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.shutdownTimeout)
	defer cancel()
	handedOff := false
	defer func() {
		if !handedOff {
			// Stopping with buckets: the server saves and unloads them
			// before it is fenced, so no change is lost.
			ok := r.link.releaseEverything(r.releaseTimeout)
			r.log.Info("asked the server to save and unload every bucket before stopping", zap.Bool("confirmed", ok))
		}
	}()
	if r.shutdownTimeout == 0 {
		return
	}
	if leader, err := monitorapi.Leader(ctx, r.cli, r.layout); err != nil || leader == "" {
		r.log.Warn("stopping without a handoff: no monitor leads to move the buckets", zap.Error(err))
		return
	}
	r.node.State = schema.NodeLeaving
	if _, err := r.put(ctx, sess.Lease()); err != nil {
		r.log.Warn("could not mark the node leaving; stopping without a handoff", zap.Error(err))
		return
	}
	start := time.Now()
	r.log.Info("leaving: handing buckets off before stopping", zap.Int("buckets", owned(snap)), zap.Duration("at_most", r.shutdownTimeout))
	for owned(snap) > 0 {
		select {
		case <-ctx.Done():
			r.log.Warn("shutdown timeout: withdrawing with buckets still owned; they move once the server is fenced",
				zap.Int("buckets", owned(snap)), zap.Duration("after", time.Since(start)))
			return
		case snap = <-sub.C:
		case <-sess.Done():
			return
		}
	}
	handedOff = true
	r.log.Info("every bucket handed off", zap.Duration("took", time.Since(start)))
}
