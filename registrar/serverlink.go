package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/contract"
	"github.com/dtablecluster/dtable-router/internal/leasedeadline"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// serverLink is the registrar's side of the server contract
// (docs/server-contract.md, protocol 2). It tells the local server what to
// hold and what to release, acknowledges releases in etcd once the server
// has released, keeps the server's serving deadline ahead of the lease, and
// fences the server before the registration can vanish.
//
// Without a server URL it acknowledges every release at once: nothing
// tells the server to save first, which is unsafe and logged as such.
type serverLink struct {
	url     string // "" = no server to talk to
	nodeID  string
	cli     *clientv3.Client
	layout  schema.Layout
	watcher *watch.Watcher
	log     *zap.Logger
	client  *http.Client

	ttl, margin time.Duration
	// heartbeat is the time between deadline renewals; releaseTimeout
	// bounds a state message, which waits for the server's saves.
	heartbeat, releaseTimeout time.Duration
	fenceCommand              string
	retryMin, retryMax        time.Duration

	mu      sync.Mutex
	lease   clientv3.LeaseID       // the registration's lease; 0 = not registered
	minRev  int64                  // the registration's etcd revision: older snapshots give nothing new
	tracker *leasedeadline.Tracker // follows lease; nil when not registered
	stopTr  context.CancelFunc
	fenced  bool  // the server was told to fence since the last deadline
	fences  int64 // fences so far: a release answered across a fence is not acknowledged
	// lastFenceOK: whether the last fence was confirmed (by the server or
	// the fence command); a repeated fence reports it.
	lastFenceOK bool
	resend      bool  // the server may hold less than the last state said: send it again
	seq         int64 // the last message's Seq
	// releaseAll: a clean stop without a handoff; the server is asked to
	// save and unload everything, and allReleased closes once it has.
	releaseAll  bool
	allReleased chan struct{}
	changed     chan struct{} // registration or deadline changed: send the state again
	beat        chan struct{} // the deadline moved: renew it at once
}

func (l *serverLink) init() {
	if l.client == nil {
		l.client = &http.Client{}
	}
	if l.retryMin == 0 {
		l.retryMin, l.retryMax = 200*time.Millisecond, 10*time.Second
	}
	l.changed = make(chan struct{}, 1)
	l.beat = make(chan struct{}, 1)
	l.allReleased = make(chan struct{})
}

// nextSeq numbers a message: above the last one and above the wall clock
// in nanoseconds, so a restarted registrar continues above its
// predecessor (see contract.Notification.Seq).
func (l *serverLink) nextSeq() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq = max(l.seq+1, time.Now().UnixNano())
	return l.seq
}

// numberState numbers a state message built under lease and after fences
// fences, unless a fence or a new registration came since it was built.
// fence counts a fence before it numbers its own message, so a state
// numbered here with the count unchanged is below that fence, and the
// server refuses it once fenced; numbered after the fence, a state built
// before it (with a deadline) would give the fenced server its buckets
// back while its lease is revoked.
func (l *serverLink) numberState(lease clientv3.LeaseID, fences int64) (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fences != fences || l.lease != lease {
		return 0, false
	}
	l.seq = max(l.seq+1, time.Now().UnixNano())
	return l.seq, true
}

// resendState makes the state loop send the state again, even if it is
// the same as the last one it sent.
func (l *serverLink) resendState() {
	l.mu.Lock()
	l.resend = true
	l.mu.Unlock()
	poke(l.changed)
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// attach starts following the lease of a new registration, written at
// etcd revision rev. The server is given new buckets only once etcd has
// confirmed the lease (a deadline) and the watcher has caught up with the
// registration (an older snapshot may name buckets that were given away
// while this node was gone).
func (l *serverLink) attach(ctx context.Context, lease clientv3.LeaseID, rev int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopTr != nil {
		l.stopTr()
	}
	tctx, cancel := context.WithCancel(ctx)
	l.lease, l.stopTr, l.minRev = lease, cancel, rev
	go l.follow(tctx, lease)
	poke(l.changed)
}

// follow runs deadline trackers for lease until tctx ends. When a deadline
// passes unrenewed, the server is fenced; if the lease is still there when
// etcd answers again, a new tracker brings the deadline back and the
// server is given its buckets again.
func (l *serverLink) follow(tctx context.Context, lease clientv3.LeaseID) {
	for tctx.Err() == nil {
		tr := leasedeadline.New(l.cli, lease, l.ttl, l.margin)
		l.mu.Lock()
		if l.lease != lease || tctx.Err() != nil { // detached or re-attached meanwhile
			l.mu.Unlock()
			return
		}
		l.tracker = tr
		l.mu.Unlock()
		go tr.Run(tctx)
		first := true
	wait:
		for {
			select {
			case <-tctx.Done():
				return
			case <-tr.Changed():
				l.mu.Lock()
				wasFenced := l.fenced
				l.fenced = false
				l.mu.Unlock()
				if first || wasFenced {
					poke(l.changed) // the server may hold buckets now
					first = false
				}
				poke(l.beat)
			case <-tr.Expired():
				l.fence(fmt.Sprintf("the lease %x was not confirmed by etcd before the deadline", lease))
				break wait
			}
		}
		select {
		case <-tctx.Done():
			return
		case <-time.After(l.heartbeat):
		}
	}
}

// detach ends the registration's link: the server is fenced (it must hold
// nothing once the registration can vanish), then the lease is forgotten.
// Call it before withdrawing the registration; it reports whether the
// fence was confirmed. Revoke the lease only then: otherwise let it
// expire, which happens after the server's own deadline.
func (l *serverLink) detach(reason string) bool {
	l.mu.Lock()
	if l.stopTr != nil {
		l.stopTr()
	}
	l.lease, l.tracker, l.stopTr = 0, nil, nil
	l.mu.Unlock()
	confirmed := l.fence(reason)
	poke(l.changed)
	return confirmed
}

// releaseEverything asks the server to save and unload every bucket (a
// clean stop that could not hand them off) and waits until it has, at
// most d. It reports whether the server confirmed.
func (l *serverLink) releaseEverything(d time.Duration) bool {
	if l.url == "" {
		return true
	}
	l.mu.Lock()
	l.releaseAll = true
	l.mu.Unlock()
	l.resendState()
	select {
	case <-l.allReleased:
		return true
	case <-time.After(d):
		return false
	}
}

// serveForMS is how long the server may serve from now, 0 if unknown.
func (l *serverLink) serveForMS() int64 {
	l.mu.Lock()
	tr := l.tracker
	fenced := l.fenced
	l.mu.Unlock()
	if tr == nil || fenced {
		return 0
	}
	d, ok := tr.Deadline()
	if !ok {
		return 0
	}
	return max(time.Until(d).Milliseconds(), 0)
}

// run sends the state on every change until ctx ends, and heartbeats
// beside it.
func (l *serverLink) run(ctx context.Context) {
	if l.url == "" {
		l.log.Warn("no -notify-url: releases are acknowledged at once, without the server saving first; " +
			"a base may be open on two servers during a move (unsafe)")
	} else {
		go l.heartbeats(ctx)
	}
	sub := l.watcher.Subscribe()
	defer sub.Close()
	var (
		prevHeld    map[string]int64
		prevVersion int64
		lastSent    string
		backoff     = l.retryMin
		retry       <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.C:
		case <-l.changed:
		case <-retry:
		}
		retry = nil
		snap := l.watcher.Snapshot()
		if snap == nil {
			continue
		}
		l.mu.Lock()
		if l.resend {
			lastSent, l.resend = "", false // the server may hold less than we last told it
		}
		lease, minRev, fences, releaseAll := l.lease, l.minRev, l.fences, l.releaseAll
		l.mu.Unlock()
		msg := contract.Notification{NodeID: l.nodeID, PreviousVersion: prevVersion}
		msg.DesiredState(snap.Assignment, prevHeld)
		msg.ServeForMS = l.serveForMS()
		if snap.Revision < minRev {
			msg.ServeForMS = 0 // the watcher is behind our registration: take nothing new yet
		}
		if lease == 0 {
			// Not registered: the monitor does not wait for releases (the
			// buckets move once the registration is gone, after the fence).
			msg.Release = nil
		}
		if releaseAll {
			for name, epoch := range msg.Epochs {
				if msg.Release == nil {
					msg.Release = map[string]contract.ReleaseOrder{}
				}
				msg.Release[name] = contract.ReleaseOrder{Epoch: epoch}
			}
			msg.Lost = append(msg.Lost, msg.Buckets...)
			msg.Epochs, msg.Buckets = map[string]int64{}, []string{}
		}
		if l.url == "" {
			if lease != 0 {
				l.acknowledge(ctx, lease, msg.Release)
			}
			continue
		}
		key := stateKey(msg)
		if key == lastSent {
			continue
		}
		seq, current := l.numberState(lease, fences)
		if !current {
			poke(l.changed) // a fence or a new registration came meanwhile: build the state again
			continue
		}
		msg.Seq = seq
		if err := l.post(ctx, msg, l.releaseTimeout); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.log.Warn("the server did not accept the state; sending the latest again", zap.String("url", l.url),
				zap.Int64("version", msg.Version), zap.Int("release", len(msg.Release)), zap.Duration("retry_in", backoff), zap.Error(err))
			retry = time.After(backoff)
			backoff = min(2*backoff, l.retryMax)
			continue
		}
		backoff = l.retryMin
		lastSent, prevHeld, prevVersion = key, msg.Held(), msg.Version
		l.log.Info("server state sent", zap.Int64("version", msg.Version), zap.Int("holds", len(msg.Epochs)),
			zap.Strings("gained", msg.Gained), zap.Strings("lost", msg.Lost), zap.Int("released", len(msg.Release)))
		l.mu.Lock()
		fencedSince := l.fences != fences
		l.mu.Unlock()
		switch {
		case fencedSince:
			// A fence crossed this message: what it released may have been
			// dropped unsaved. Acknowledge nothing; send the state again.
			l.resendState()
		case lease != 0 && len(msg.Release) > 0:
			if !l.acknowledge(ctx, lease, msg.Release) {
				l.resendState() // the next round acknowledges again
			}
		}
		if releaseAll {
			l.mu.Lock()
			select {
			case <-l.allReleased:
			default:
				close(l.allReleased)
			}
			l.mu.Unlock()
		}
	}
}

// stateKey identifies a state message without its deadline, so that the
// same state is not sent twice (the heartbeats renew the deadline). Whether
// there is a deadline at all is part of it: with none the server may take
// nothing new.
func stateKey(msg contract.Notification) string {
	msg.ServeForMS, msg.Gained, msg.Lost, msg.PreviousVersion = min(msg.ServeForMS, 1), nil, nil, 0
	b, _ := json.Marshal(msg)
	return string(b)
}

// acknowledge writes <prefix>/released/<bucket> under the lease for each
// released bucket whose move is still in progress from this node, all in
// one transaction (the monitor then commits them in one write). The write
// compares the assignment's revision, so a move that ended meanwhile gets
// no stale acknowledgement; it is retried on the newest state a few times.
func (l *serverLink) acknowledge(ctx context.Context, lease clientv3.LeaseID, release map[string]contract.ReleaseOrder) bool {
	for attempt := 0; attempt < 5; attempt++ {
		snap := l.watcher.Snapshot()
		if snap.Assignment == nil {
			return true
		}
		var ops []clientv3.Op
		var names []string
		for name := range release {
			b, err := bucket.Parse(name)
			if err != nil {
				continue
			}
			m, moving := snap.Assignment.Moving[b]
			if !moving || m.From != l.nodeID {
				continue // ended meanwhile
			}
			if r, ok := snap.Released[b]; ok && r.Matches(m) {
				// Acknowledged already: writing it again would change the
				// key's revision under the monitor's commit, which compares it.
				continue
			}
			ops = append(ops, clientv3.OpPut(l.layout.ReleasedKey(b),
				string(schema.Released{From: l.nodeID, Epoch: m.Epoch}.Encode()), clientv3.WithLease(lease)))
			names = append(names, name)
		}
		if len(ops) == 0 {
			return true
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		txn, err := l.cli.Txn(actx).
			If(clientv3.Compare(clientv3.ModRevision(l.layout.AssignmentKey()), "=", snap.AssignmentModRevision)).
			Then(ops...).Commit()
		cancel()
		if err == nil && txn.Succeeded {
			slices.Sort(names)
			l.log.Info("releases acknowledged", zap.Strings("buckets", names))
			return true
		}
		if err != nil {
			l.log.Warn("could not acknowledge releases; retrying", zap.Strings("buckets", names), zap.Error(err))
		}
		time.Sleep(50 * time.Millisecond) // let the watcher catch up with the newer assignment
	}
	return false
}

// heartbeats renew the server's deadline every heartbeat interval and
// whenever it moves, independently of state messages that may be waiting
// for a release.
func (l *serverLink) heartbeats(ctx context.Context) {
	tick := time.NewTicker(l.heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-l.beat:
		}
		ms := l.serveForMS()
		if ms == 0 {
			continue
		}
		msg := contract.Notification{Protocol: contract.Protocol, NodeID: l.nodeID, Seq: l.nextSeq(), Heartbeat: true, ServeForMS: ms}
		if err := l.post(ctx, msg, l.heartbeat); err != nil && ctx.Err() == nil {
			// It may have fenced itself at its deadline meanwhile, or
			// restarted, or says so (409): send the whole state again.
			l.log.Warn("heartbeat to the server failed; sending the state again", zap.String("url", l.url), zap.Error(err))
			l.resendState()
		}
	}
}

// fence tells the server to drop every bucket now and runs the fence
// command, once per loss of the deadline. Both are best effort and
// bounded: a server that does not hear it fences at its deadline anyway.
func (l *serverLink) fence(reason string) bool {
	l.mu.Lock()
	already, lastOK := l.fenced, l.lastFenceOK
	l.fenced = true
	l.fences++
	l.resend = true // once the deadline is back, the state must be sent again
	l.mu.Unlock()
	if already {
		return lastOK
	}
	l.log.Warn("fencing the server: it must drop every bucket", zap.String("reason", reason))
	confirmed := true
	if l.url != "" {
		msg := contract.Notification{Protocol: contract.Protocol, NodeID: l.nodeID, Seq: l.nextSeq(), Fence: true, Reason: reason}
		if err := l.post(context.Background(), msg, 5*time.Second); err != nil {
			l.log.Error("could not tell the server to fence; it fences at its deadline", zap.Error(err))
			confirmed = false
		}
	}
	if l.fenceCommand != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", l.fenceCommand)
		cmd.Env = append(os.Environ(), "DTABLE_NODE_ID="+l.nodeID, "DTABLE_FENCE_REASON="+reason)
		if out, err := cmd.CombinedOutput(); err != nil {
			l.log.Error("fence command failed", zap.String("command", l.fenceCommand), zap.Error(err), zap.ByteString("output", out))
			confirmed = false
		} else {
			l.log.Info("fence command done", zap.String("command", l.fenceCommand))
			confirmed = true // the command stops the server for good
		}
	}
	l.mu.Lock()
	l.lastFenceOK = confirmed
	l.mu.Unlock()
	return confirmed
}

func (l *serverLink) post(ctx context.Context, msg contract.Notification, timeout time.Duration) error {
	body, _ := json.Marshal(msg)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return do2xx(l.client, req)
}
