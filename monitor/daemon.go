package main

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/leases"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// monitor campaigns for leadership and, while it leads, keeps the
// assignment in etcd right. Several may run; one leads.
type monitor struct {
	cli      *clientv3.Client
	layout   schema.Layout
	watcher  *watch.Watcher
	id       string        // this monitor's name in the election
	interval time.Duration // periodic reconcile
	// settle is how long the first assignment waits after the first node
	// appears, so servers that start together all get an even share.
	settle     time.Duration
	sessionTTL int // seconds: how long a dead leader blocks a new one
	log        *zap.Logger

	// rebalanceAfter: even out bucket counts once the live nodes have not
	// changed for this long (0: only on request or with auto-rebalance).
	rebalanceAfter time.Duration

	// limits throttle handoffs and bound how long a release may take;
	// cooldownFor is how long a bucket rests after an aborted handoff.
	limits      handoff.Limits
	cooldownFor time.Duration

	// nodeLeases remembers each node's last lease, from every snapshot; run
	// starts it (nil: no lease known, every vanished node counts as gone).
	nodeLeases *nodeLeases

	// state kept across leaderships, touched only by the run goroutine
	firstNodesSeen  time.Time
	noNodesLogged   bool
	membership      string                      // the live node ids, as last seen
	membershipSince time.Time                   // since when they are unchanged
	cooldown        map[bucket.Bucket]time.Time // bucket -> no new handoff before
	// cooldownOf: bucket -> the aborted_version whose cooldown this
	// monitor has applied (see restoreCooldowns).
	cooldownOf map[bucket.Bucket]int64
	// held are the unregistered nodes whose buckets stay (their lease
	// lives), with that lease, so that each hold is logged once.
	held map[string]clientv3.LeaseID
	// versionSeen is the highest assignment version seen, valid or not: a
	// repair writes a newer one.
	versionSeen int64
	// Load balancing: the flags, the smoothed scores, and the state of
	// automatic mode (a bucket moved by load rests until loadCooldown;
	// after an aborted move nothing moves by load until loadPauseUntil).
	loadCfg        loadSettings
	load           *loadTracker
	loadCooldown   map[bucket.Bucket]time.Time
	loadPauseUntil time.Time
	loadAborted    map[bucket.Bucket]int64 // aborted moves by load, whose queued retry is dropped (see dropAbortedLoadMoves)
	// testHookRequestWatch, if set, stands in for the requests watch
	// whenever it is (re-)created.
	testHookRequestWatch func(context.Context) <-chan clientv3.WatchResponse
	// testHookStep, if set, runs before each round the lead loop reconciles.
	testHookStep func(*watch.Snapshot)
}

// run campaigns and leads until ctx ends, starting over after losing a
// session or leadership.
func (m *monitor) run(ctx context.Context) error {
	if m.limits == (handoff.Limits{}) {
		m.limits = handoff.DefaultLimits
	}
	if m.cooldown == nil {
		m.cooldown = map[bucket.Bucket]time.Time{}
	}
	if m.cooldownOf == nil {
		m.cooldownOf = map[bucket.Bucket]int64{}
	}
	m.initLoad()
	if m.nodeLeases == nil {
		m.nodeLeases = newNodeLeases()
		fctx, stop := context.WithCancel(ctx)
		defer stop()
		go m.nodeLeases.follow(fctx, m.watcher)
	}
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := m.campaignAndLead(ctx)
		if ctx.Err() != nil {
			return nil
		}
		m.log.Warn("not leading; campaigning again", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

// campaignAndLead runs one session: campaign, lead until the session or
// leadership is lost, then step down. The session's lease is revoked on the
// way out, so a candidate key never outlives its campaign (a failed
// Campaign otherwise leaves a zombie key behind).
func (m *monitor) campaignAndLead(ctx context.Context) error {
	sess, err := concurrency.NewSession(m.cli, concurrency.WithTTL(m.sessionTTL), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer leases.Release(sess, m.log)
	// Campaign does not return by itself when the session dies: tie its
	// context to the session.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	el := concurrency.NewElection(sess, m.layout.ElectionPrefix())
	m.log.Info("campaigning for leadership", zap.String("election", m.layout.ElectionPrefix()))
	if err := el.Campaign(lctx, m.id); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	l := &leadership{key: el.Key(), rev: el.Rev()}
	m.log.Info("leading", zap.String("leader_key", l.key), zap.Int64("leader_rev", l.rev))
	err = m.lead(lctx, l)
	if ctx.Err() == nil {
		select {
		case <-sess.Done():
			err = fmt.Errorf("etcd session lost (lease expired or keep-alive failed)")
		default:
		}
	}
	m.log.Warn("stopped leading", zap.Error(err))
	return err
}

// leadership identifies the leader's election key; every write compares
// its create revision, so a deposed leader cannot write.
type leadership struct {
	key       string
	rev       int64
	lastWrite int64 // revision of our last change to the assignment or settings
}
