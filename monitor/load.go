package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// loadSettings are the monitor's load balancing flags (README, "Load
// balancing").
type loadSettings struct {
	// The score of a bucket: requests/s + WSWeight × open WebSockets +
	// (bytes in + bytes out)/s ÷ BytesPerUnit, summed over the proxies.
	WSWeight     float64
	BytesPerUnit float64
	// HalfLife of the exponential smoothing of each bucket's score.
	HalfLife time.Duration
	// Sample: how often the leader reads the proxies' reports.
	Sample time.Duration
	// High and Low: automatic mode acts when the hottest node is above
	// High × the mean and moves buckets until every node is at most
	// Low × the mean (a rebalance by load on request aims at Low too).
	High, Low float64
	// MaxMoves bounds the moves of one round by load.
	MaxMoves int
	// Cooldown: a bucket moved by load does not move by load again
	// (automatically) for this long; Pause: after any aborted move,
	// automatic mode waits this long.
	Cooldown, Pause time.Duration
	// MinMean: automatic mode does nothing while the mean node score is
	// below this (an idle cluster's noise is not worth a move).
	MinMean float64
}

// defaultLoadSettings are the flags' defaults.
var defaultLoadSettings = loadSettings{WSWeight: schema.DefaultLoadWSWeight, BytesPerUnit: schema.DefaultLoadBytesPerUnit, HalfLife: 2 * time.Minute, Sample: 10 * time.Second,
	High: 1.25, Low: 1.10, MaxMoves: 8, Cooldown: 10 * time.Minute, Pause: 5 * time.Minute, MinMean: 1}

// check says what is wrong with the settings, if anything.
func (s loadSettings) check() error {
	switch {
	case s.WSWeight < 0 || s.BytesPerUnit <= 0:
		return fmt.Errorf("-load-ws-weight must not be negative and -load-bytes-per-unit must be positive")
	case s.HalfLife <= 0 || s.Sample <= 0:
		return fmt.Errorf("-load-half-life and -load-sample must be positive")
	case !(s.Low >= 1) || !(s.High > s.Low):
		return fmt.Errorf("want 1 ≤ -load-low < -load-high (got %v and %v)", s.Low, s.High)
	case s.MaxMoves < 1 || s.Cooldown < 0 || s.Pause < 0 || s.MinMean < 0:
		return fmt.Errorf("-load-max-moves must be at least 1; -load-cooldown, -load-pause and -load-min-mean not negative")
	}
	return nil
}

// score is one proxy's measurement of a bucket as one number.
func (s loadSettings) score(l schema.BucketLoad) float64 {
	return l.Score(s.WSWeight, s.BytesPerUnit)
}

// loadTracker keeps the smoothed load score of every bucket, from the
// proxies' reports under <prefix>/load/. It reads them with one list per
// sample, not through the cluster watcher: a report changes every
// interval, and the routing and planning that follow the watcher have no
// use for it (a load-only change must not wake them). Only the leader's
// run goroutine uses it.
type loadTracker struct {
	cfg     loadSettings
	smooth  [bucket.Count]float64 // the smoothed score; valid once sampled
	raw     [bucket.Count]float64 // the last sample's sum over the reports
	sampled time.Time             // when smooth was last updated; zero: never, or no report since
	read    time.Time             // when the reports were last read
	proxies []string              // whose reports the last sample summed
	// rejected remembers the invalid reports logged (key -> mod
	// revision), so that each bad value is logged once.
	rejected map[string]int64
}

func newLoadTracker(cfg loadSettings) *loadTracker {
	return &loadTracker{cfg: cfg, rejected: map[string]int64{}}
}

// due says whether a new sample should be read.
func (t *loadTracker) due(now time.Time) bool {
	return t.read.IsZero() || now.Sub(t.read) >= t.cfg.Sample
}

// refresh reads the reports and folds them into the smoothed scores.
// A report that does not parse is logged (once per value) and left out;
// so is one whose key is not a valid proxy id. A proxy whose key is gone
// (its lease ended) is simply not in the sum any more.
func (t *loadTracker) refresh(ctx context.Context, cli *clientv3.Client, layout schema.Layout, log *zap.Logger, now time.Time) error {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, layout.LoadPrefix(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read the load reports: %w", err)
	}
	var raw [bucket.Count]float64
	proxies := []string{}
	seen := map[string]bool{}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		seen[key] = true
		id, ok := layout.ProxyIDFromLoadKey(key)
		var r schema.LoadReport
		if ok {
			r, err = schema.ParseLoadReport(id, kv.Value)
		} else {
			err = fmt.Errorf("not a valid proxy id")
		}
		if err != nil {
			if t.rejected[key] != kv.ModRevision {
				log.Error("invalid load report in etcd; leaving it out", zap.String("key", key),
					zap.Int64("mod_revision", kv.ModRevision), zap.Error(err))
				t.rejected[key] = kv.ModRevision
			}
			continue
		}
		delete(t.rejected, key)
		proxies = append(proxies, id)
		for b, l := range r.Buckets {
			raw[b] += t.cfg.score(l)
		}
	}
	for key := range t.rejected {
		if !seen[key] {
			delete(t.rejected, key)
		}
	}
	slices.Sort(proxies)
	t.read, t.proxies = now, proxies
	if len(proxies) == 0 {
		// No data is not zero load: start afresh from the next report
		// rather than ramp up from zero over several half-lives.
		t.sampled, t.smooth, t.raw = time.Time{}, [bucket.Count]float64{}, [bucket.Count]float64{}
		return nil
	}
	t.fold(raw, now)
	return nil
}

// fold adds one sample to the smoothed scores: an exponentially weighted
// moving average whose weight follows the time since the last sample, so
// that irregular samples weigh what they cover: after one half-life a
// change in load shows half, after two three quarters. The first sample
// is taken as it is.
func (t *loadTracker) fold(raw [bucket.Count]float64, now time.Time) {
	if t.sampled.IsZero() {
		t.smooth = raw
	} else {
		alpha := 1 - math.Exp2(-now.Sub(t.sampled).Seconds()/t.cfg.HalfLife.Seconds())
		for b := range raw {
			t.smooth[b] += alpha * (raw[b] - t.smooth[b])
		}
	}
	t.raw, t.sampled = raw, now
}

// addFlags defines the load balancing flags on fs, with s as defaults.
func (s *loadSettings) addFlags(fs *flag.FlagSet) {
	fs.Float64Var(&s.WSWeight, "load-ws-weight", s.WSWeight, "load score: what one open WebSocket weighs, in requests per second")
	fs.Float64Var(&s.BytesPerUnit, "load-bytes-per-unit", s.BytesPerUnit, "load score: bytes per second (in + out) that weigh one request per second")
	fs.DurationVar(&s.HalfLife, "load-half-life", s.HalfLife, "half-life of the smoothing of each bucket's load score")
	fs.DurationVar(&s.Sample, "load-sample", s.Sample, "how often the leader reads the proxies' load reports")
	fs.Float64Var(&s.High, "load-high", s.High, "automatic load balancing acts when the hottest node is above this × the mean")
	fs.Float64Var(&s.Low, "load-low", s.Low, "load balancing moves buckets until every node is at most this × the mean")
	fs.IntVar(&s.MaxMoves, "load-max-moves", s.MaxMoves, "most buckets one round of load balancing moves")
	fs.DurationVar(&s.Cooldown, "load-cooldown", s.Cooldown, "automatic mode: a bucket moved by load does not move by load again for this long")
	fs.DurationVar(&s.Pause, "load-pause", s.Pause, "automatic mode: after any aborted handoff, move nothing by load for this long")
	fs.Float64Var(&s.MinMean, "load-min-mean", s.MinMean, "automatic mode: do nothing while the mean node load score is below this")
}
