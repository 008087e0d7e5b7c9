package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// A node key that vanished proves that the node fenced itself only if its
// lease is gone too: a server fences before its lease can expire, and its
// registrar fences it before revoking the lease. A key deleted by hand
// (etcdctl del) while the lease lives is rewritten by the registrar a
// moment later, under the same lease, and its server never stopped
// serving: moving its buckets then would put them on two servers. So the
// monitor remembers the lease of every node it saw, and before it treats
// an owner that vanished as gone it asks etcd whether that lease still
// exists.

// nodeLeases remembers the last lease each node was registered under, from
// every snapshot the watcher publishes (leading or not), so that a monitor
// that becomes leader knows the leases of the nodes that vanished before.
// A nil book knows no lease.
type nodeLeases struct {
	mu      sync.Mutex
	rev     int64 // the revision of the newest snapshot recorded
	leases  map[string]leaseSeen
	changed chan struct{} // closed and replaced when rev grows
}

// leaseSeen is a node's lease and the revision of the snapshot it was
// last seen in.
type leaseSeen struct {
	id  clientv3.LeaseID
	rev int64
}

func newNodeLeases() *nodeLeases {
	return &nodeLeases{leases: map[string]leaseSeen{}, changed: make(chan struct{})}
}

// follow records every snapshot of w, in order, until ctx ends.
func (b *nodeLeases) follow(ctx context.Context, w *watch.Watcher) {
	sub := w.Subscribe()
	defer sub.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sub.C:
			b.record(s)
		}
	}
}

// record notes the lease of every node in s. An entry seen in a newer
// snapshot is not replaced by an older one.
func (b *nodeLeases) record(s *watch.Snapshot) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, lease := range s.NodeLeases {
		if e, ok := b.leases[id]; !ok || e.rev <= s.Revision {
			b.leases[id] = leaseSeen{id: lease, rev: s.Revision}
		}
	}
	if s.Revision > b.rev {
		b.rev = s.Revision
		close(b.changed)
		b.changed = make(chan struct{})
	}
}

// upTo waits until every snapshot up to revision rev has been recorded, so
// that a node that registered and vanished before rev is known.
func (b *nodeLeases) upTo(ctx context.Context, rev int64) error {
	if b == nil {
		return nil
	}
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for {
		b.mu.Lock()
		done, changed := b.rev >= rev, b.changed
		b.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout.C:
			return fmt.Errorf("the node leases are not recorded up to revision %d", rev)
		}
	}
}

// lease returns the last lease seen for node id.
func (b *nodeLeases) lease(id string) (leaseSeen, bool) {
	if b == nil {
		return leaseSeen{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.leases[id]
	return e, ok
}

// forget drops node id's entry unless it was seen after revision rev (the
// node registered again since).
func (b *nodeLeases) forget(id string, rev int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.leases[id]; ok && e.rev <= rev {
		delete(b.leases, id)
	}
}

// nodes lists the nodes the book knows.
func (b *nodeLeases) nodes() []string {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Sorted(maps.Keys(b.leases))
}

// unregistered is what a round found out about the nodes that own buckets
// (or are the source of a move) but are not registered in its snapshot.
type unregistered struct {
	// held are live but unregistered: the key is gone while the lease
	// lives, or the key holds no valid registration. Their buckets stay,
	// moves from them go on (commit on a release, abort on a timeout) and
	// they get nothing new.
	held map[string]string // node -> why, for the plan's warnings
	// wake is when the lease of a held node runs out (zero if none).
	wake time.Time
}

// findUnregistered looks at every owner and move source of cur that snap
// does not list as registered. One whose key exists with an invalid value
// (never valid for this watcher) is held: its lease lives. One whose last
// lease etcd still knows (TTL > 0) is held until that lease ends. The
// others are gone, as is one whose lease this monitor never saw. Each
// lease is asked about once per round.
func (m *monitor) findUnregistered(ctx context.Context, snap *watch.Snapshot, cur *schema.Assignment) (*unregistered, error) {
	u := &unregistered{held: map[string]string{}}
	if err := m.nodeLeases.upTo(ctx, snap.Revision); err != nil {
		return nil, err
	}
	candidates := map[string]bool{}
	if cur != nil {
		for _, n := range cur.Owners {
			candidates[n] = true
		}
		for _, mv := range cur.Moving {
			candidates[mv.From] = true
		}
	}
	delete(candidates, "")
	// Forget the leases of nodes that are gone and own nothing: nothing
	// depends on them any more (they are recorded again if they return).
	for _, id := range m.nodeLeases.nodes() {
		if _, registered := snap.Nodes[id]; !registered && !candidates[id] {
			m.nodeLeases.forget(id, snap.Revision)
		}
	}
	ttls := map[clientv3.LeaseID]int64{} // this round's answers
	now := time.Now()
	for _, id := range slices.Sorted(maps.Keys(candidates)) {
		if _, registered := snap.Nodes[id]; registered {
			m.unhold(id, "")
			continue
		}
		key := m.layout.NodeKey(id)
		if err, invalid := snap.NodeErrors[id]; invalid {
			u.held[id] = "its registration in etcd is invalid: its buckets stay where they are until it is valid or deleted"
			m.hold(id, 0, func() {
				m.log.Warn("a node that owns buckets has an invalid registration: not moving its buckets while its key exists",
					zap.String("key", key), zap.NamedError("invalid", err))
			})
			continue
		}
		seen, known := m.nodeLeases.lease(id)
		if !known || seen.id == clientv3.NoLease {
			m.unhold(id, "its lease is unknown")
			continue
		}
		ttl, asked := ttls[seen.id]
		if !asked {
			tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := m.cli.TimeToLive(tctx, seen.id)
			cancel()
			if err != nil {
				// Not knowing is not a reason to move: plan again later.
				return nil, fmt.Errorf("ask etcd about the lease %x of unregistered node %s: %w", int64(seen.id), id, err)
			}
			ttl = resp.TTL
			ttls[seen.id] = ttl
		}
		if ttl <= 0 {
			m.nodeLeases.forget(id, snap.Revision)
			m.unhold(id, "its lease ended")
			continue
		}
		u.held[id] = fmt.Sprintf("its registration was deleted by hand while its lease %x lives: its buckets stay where they are until the lease expires (at most %ds) or it registers again", int64(seen.id), ttl)
		m.hold(id, seen.id, func() {
			m.log.Warn("registration deleted by hand while its lease lives: not moving its buckets until the lease expires",
				zap.String("key", key), zap.String("lease", fmt.Sprintf("%x", int64(seen.id))), zap.Int64("ttl_seconds", ttl))
		})
		// etcd rounds the TTL down: the lease ends within TTL+1 s. A round
		// at TTL finds it ending (TTL 0) or renewed.
		if at := now.Add(time.Duration(ttl)*time.Second + 100*time.Millisecond); u.wake.IsZero() || at.Before(u.wake) {
			u.wake = at
		}
	}
	for id := range m.held {
		if !candidates[id] {
			m.unhold(id, "it owns nothing any more")
		}
	}
	return u, nil
}

// hold records that node id is held (under lease, 0 for an invalid
// registration) and logs it once, with warn, when that starts.
func (m *monitor) hold(id string, lease clientv3.LeaseID, warn func()) {
	if m.held == nil {
		m.held = map[string]clientv3.LeaseID{}
	}
	if l, ok := m.held[id]; ok && l == lease {
		return
	}
	m.held[id] = lease
	warn()
}

// unhold ends a hold, logging why, if node id was held.
func (m *monitor) unhold(id, why string) {
	if _, ok := m.held[id]; !ok {
		return
	}
	delete(m.held, id)
	if why == "" {
		why = "it registered again"
	}
	m.log.Info("an unregistered node is no longer held", zap.String("key", m.layout.NodeKey(id)), zap.String("because", why))
}
