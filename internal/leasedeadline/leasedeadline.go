// Package leasedeadline tells a registrar until when its server may serve:
// a deadline that is always before etcd can expire the node's lease, so a
// server cut off from etcd stops serving before anyone else may take its
// buckets (docs/server-contract.md, "Deadlines").
//
// etcd expires a lease no earlier than TTL after the last renewal it
// received, and a leader change only extends leases. The tracker renews
// the lease itself (one keep-alive, answered by the leader with the full
// TTL) and records, on the monotonic clock, when it *sent* the renewal:
// the lease cannot expire before sent + TTL. (Asking LeaseTimeToLive
// instead would do without a renewal, but it answers in whole seconds
// that have already run down, which leaves little room for short TTLs.)
// The deadline is that minus a margin for the message to the server,
// pauses and clock-rate error. While answers keep coming, the deadline
// moves forward; when they stop, it stays, and Expired fires when it
// passes.
package leasedeadline

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultMargin is the margin for a TTL: a quarter of it, at least 2 s
// (90 s -> 22.5 s), at most half of it.
func DefaultMargin(ttl time.Duration) time.Duration {
	return min(max(ttl/4, 2*time.Second), ttl/2)
}

// Tracker follows one lease.
type Tracker struct {
	cli    *clientv3.Client
	lease  clientv3.LeaseID
	margin time.Duration
	// Interval is the time between questions; default TTL/6.
	interval time.Duration

	mu       sync.Mutex
	deadline time.Time // zero until the first answer
	changed  chan struct{}
	expired  chan struct{}
}

// New returns a tracker for lease with the given TTL and margin.
func New(cli *clientv3.Client, lease clientv3.LeaseID, ttl, margin time.Duration) *Tracker {
	return &Tracker{cli: cli, lease: lease, margin: margin, interval: max(ttl/6, 100*time.Millisecond),
		changed: make(chan struct{}, 1), expired: make(chan struct{})}
}

// Deadline returns the current deadline, or false before the first answer.
func (t *Tracker) Deadline() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deadline, !t.deadline.IsZero()
}

// Changed receives a value whenever the deadline moves (coalesced).
func (t *Tracker) Changed() <-chan struct{} { return t.changed }

// Expired is closed once the deadline has passed without a renewal, or
// when etcd says the lease is gone.
func (t *Tracker) Expired() <-chan struct{} { return t.expired }

// Run asks etcd every interval until ctx ends or the deadline expires.
// It asks once more when the deadline comes, so a deadline that an answer
// would have moved does not expire.
func (t *Tracker) Run(ctx context.Context) {
	for {
		lost := t.ask(ctx)
		d, ok := t.Deadline()
		if lost || ok && !time.Now().Before(d) {
			close(t.expired)
			return
		}
		wait := t.interval
		if ok {
			wait = min(wait, time.Until(d))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// ask renews the deadline from one answer; true if the lease is gone.
func (t *Tracker) ask(ctx context.Context) bool {
	sent := time.Now()
	// Never wait past the deadline for an answer: Run must see it expire
	// in time (the margin covers this 100ms floor).
	timeout := t.interval
	if d, ok := t.Deadline(); ok {
		timeout = min(timeout, max(time.Until(d), 100*time.Millisecond))
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := t.cli.KeepAliveOnce(rctx, t.lease)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return true // revoked or expired
	}
	if err != nil {
		return false // no answer: the deadline stays where it was
	}
	if resp.TTL <= 0 {
		return true
	}
	d := sent.Add(time.Duration(resp.TTL)*time.Second - t.margin)
	t.mu.Lock()
	moved := d.After(t.deadline)
	if moved {
		t.deadline = d
	}
	t.mu.Unlock()
	if moved {
		select {
		case t.changed <- struct{}{}:
		default:
		}
	}
	return false
}
