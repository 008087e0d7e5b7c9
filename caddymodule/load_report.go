package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// LoadReportConfig is the load_report setting of the dtable_bucket
// handler: how this proxy publishes what it measures per bucket
// (<prefix>/load/<id>, read by the monitor to balance by load).
type LoadReportConfig struct {
	// Off: publish nothing (the counting goes on; it costs a few atomic
	// adds per request).
	Off bool `json:"off,omitempty"`
	// Interval between reports; default 30s. The key lives under a lease
	// of three intervals, so a proxy that stops is forgotten that long
	// after its last report.
	Interval caddy.Duration `json:"interval,omitempty"`
	// ID names this proxy in the key; default "caddy@<hostname>". Give
	// each proxy process its own (two on one host need one each).
	ID string `json:"id,omitempty"`
}

// defaultLoadInterval is the report interval when none is configured.
const defaultLoadInterval = 30 * time.Second

// loadReportSettings is a resolved LoadReportConfig.
type loadReportSettings struct {
	off      bool
	interval time.Duration
	id       string
}

// resolve applies the defaults and checks the id.
func (c *LoadReportConfig) resolve() (loadReportSettings, error) {
	s := loadReportSettings{interval: defaultLoadInterval, id: defaultProxyID()}
	if c == nil {
		return s, nil
	}
	s.off = c.Off
	if c.Interval < 0 {
		return s, fmt.Errorf("load_report interval %v: want a positive duration", time.Duration(c.Interval))
	}
	if c.Interval > 0 {
		s.interval = time.Duration(c.Interval)
	}
	if c.ID != "" {
		if err := schema.ValidateProxyID(c.ID); err != nil {
			return s, fmt.Errorf("load_report id: %v", err)
		}
		s.id = c.ID
	}
	return s, nil
}

// defaultProxyID is "caddy@<hostname>", with characters a proxy id does
// not allow replaced by "-".
func defaultProxyID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-:", r) {
			return r
		}
		return '-'
	}, host)
	return "caddy@" + host[:min(len(host), 120)]
}

// configureLoadReport applies a handler's load report settings to its
// follower: the config provisioned last wins (a reload applies its own),
// and the publisher takes them at once.
func (fw *follower) configureLoadReport(s loadReportSettings) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := p.fw.cli.Revoke(ctx, p.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		p.fw.log.Warn("could not revoke the load report's lease; its key expires with it",
			zap.String("key", p.fw.layout.LoadKey(p.active.id)), zap.Error(err))
	}
	p.lease = 0
}

// parseLoadReport reads the arguments of the load_report subdirective:
//
//	load_report off
//	load_report <interval> [<proxy id>]
func parseLoadReport(args []string) (*LoadReportConfig, error) {
	switch {
	case len(args) == 1 && args[0] == "off":
		return &LoadReportConfig{Off: true}, nil
	case len(args) == 0 || len(args) > 2:
		return nil, errors.New("want off, or an interval and optionally a proxy id (load_report 30s caddy@proxy-01)")
	}
	dur, err := caddy.ParseDuration(args[0])
	if err != nil || dur <= 0 {
		return nil, fmt.Errorf("interval %q: want a positive duration or off", args[0])
	}
	c := &LoadReportConfig{Interval: caddy.Duration(dur)}
	if len(args) == 2 {
		if err := schema.ValidateProxyID(args[1]); err != nil {
			return nil, err
		}
		c.ID = args[1]
	}
	return c, nil
}
