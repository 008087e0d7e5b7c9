package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/leases"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// registerLoadReport adds a handler's load report settings to its
// follower until the returned function takes them back (the handler's
// Cleanup). The publisher follows the settings registered last that are
// still there, and with none it publishes nothing (its key goes with its
// lease). So a reload applies the new config's settings (its handlers
// register before the old ones are cleaned up), a reload that fails
// leaves the running config's settings in force (the failed config's
// handlers are cleaned up), and a config without dtable_bucket_proxy
// stops the report even while its operator site keeps the follower.
func (fw *follower) registerLoadReport(s loadReportSettings) (unregister func()) {
	r := &s
	fw.loadMu.Lock()
	fw.loadRegs = append(fw.loadRegs, r)
	fw.applyLoadReportLocked()
	fw.loadMu.Unlock()
	return func() {
		fw.loadMu.Lock()
		fw.loadRegs = slices.DeleteFunc(fw.loadRegs, func(x *loadReportSettings) bool { return x == r })
		fw.applyLoadReportLocked()
		fw.loadMu.Unlock()
	}
}

// applyLoadReportLocked hands the settings in force to the publisher.
func (fw *follower) applyLoadReportLocked() {
	s := loadReportSettings{off: true}
	if n := len(fw.loadRegs); n > 0 {
		s = *fw.loadRegs[n-1]
	}
	fw.loadCfg.Store(&s)
	select {
	case fw.loadWake <- struct{}{}:
	default:
	}
}

// loadPublisher is the follower's one writer of its load key. It keeps
// the counters' previous read, to turn them into rates, and the lease
// its key lives under.
type loadPublisher struct {
	fw      *follower
	active  loadReportSettings // what the lease and key were made for
	lease   clientv3.LeaseID   // 0: none granted (or lost)
	prev    [bucket.Count]bucketLoadSample
	prevAt  time.Time
	lastErr string // the last failure logged, so a lasting one is logged once
}

// reportLoad publishes the load report every interval until the follower
// stops; then it revokes the lease, so the key goes at once.
func (fw *follower) reportLoad() {
	defer close(fw.loadDone)
	p := &loadPublisher{fw: fw, prevAt: time.Now()}
	fw.load.sample(&p.prev)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	defer p.revoke()
	for {
		select {
		case <-fw.stop:
			return
		case <-fw.loadWake:
			cfg := *fw.loadCfg.Load()
			if cfg == p.active && p.active.interval > 0 {
				continue
			}
			p.revoke() // a new id or TTL: the old key goes with its lease
			p.active = cfg
			fw.load.sample(&p.prev) // the first report covers its own interval only
			p.prevAt = time.Now()
			if cfg.off {
				timer.Stop()
				continue
			}
			timer.Reset(cfg.interval)
		case <-timer.C:
			p.publish()
			timer.Reset(p.active.interval)
		}
	}
}

// publish writes one report: the rates since the previous one.
func (p *loadPublisher) publish() {
	fw := p.fw
	var cur [bucket.Count]bucketLoadSample
	now := time.Now()
	fw.load.sample(&cur)
	secs := max(now.Sub(p.prevAt).Seconds(), 0.001)
	r := schema.LoadReport{Proxy: p.active.id, Interval: p.active.interval, At: now, Buckets: map[bucket.Bucket]schema.BucketLoad{}}
	for b := range bucket.Count {
		c, o := cur[b], p.prev[b]
		l := schema.BucketLoad{Requests: rate(c.requests-o.requests, secs), BytesIn: rate(c.bytesIn-o.bytesIn, secs),
			BytesOut: rate(c.bytesOut-o.bytesOut, secs), WebSockets: float64(max(c.websockets, 0))}
		if !l.Zero() {
			r.Buckets[bucket.Bucket(b)] = l
		}
	}
	p.prev, p.prevAt = cur, now
	if err := p.put(r.Encode()); err != nil {
		if msg := err.Error(); msg != p.lastErr {
			fw.log.Warn("could not publish the load report; trying again next interval",
				zap.String("key", fw.layout.LoadKey(p.active.id)), zap.Error(err))
			p.lastErr = msg
		}
		return
	}
	if p.lastErr != "" {
		fw.log.Info("load report published again", zap.String("key", fw.layout.LoadKey(p.active.id)))
		p.lastErr = ""
	}
}

// rate is n per second over secs, rounded to a thousandth (the JSON stays short).
func rate(n uint64, secs float64) float64 { return math.Round(float64(n)/secs*1000) / 1000 }

// put writes the report under the lease, granting one (TTL three
// intervals) if there is none or it expired; each report renews it.
func (p *loadPublisher) put(value []byte) error {
	fw := p.fw
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if p.lease != 0 {
		if _, err := fw.cli.KeepAliveOnce(ctx, p.lease); errors.Is(err, rpctypes.ErrLeaseNotFound) {
			p.lease = 0 // expired (etcd unreachable longer than the TTL): grant another
		} else if err != nil {
			return fmt.Errorf("renew lease: %w", err)
		}
	}
	if p.lease == 0 {
		ttl := int64(math.Ceil(3 * p.active.interval.Seconds()))
		g, err := fw.cli.Grant(ctx, max(ttl, 1))
		if err != nil {
			return fmt.Errorf("grant lease: %w", err)
		}
		p.lease = g.ID
	}
	if _, err := fw.cli.Put(ctx, fw.layout.LoadKey(p.active.id), string(value), clientv3.WithLease(p.lease)); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	return nil
}

// revoke ends the lease, so the key is deleted at once (final release,
// or a new id or interval).
func (p *loadPublisher) revoke() {
	if p.lease == 0 {
		return
	}
	// Logged here rather than by Revoke, to name the key that lingers.
	if err := leases.Revoke(p.fw.cli, p.lease, nil); err != nil {
		p.fw.log.Warn("could not revoke the load report's lease; its key expires with it",
			zap.String("key", p.fw.layout.LoadKey(p.active.id)), zap.Error(err))
	}
	p.lease = 0
}
