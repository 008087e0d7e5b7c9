package caddymodule

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics live in Caddy's Prometheus registry (served on the admin
// endpoint's /metrics). They are labelled by node or reason, never by base
// UUID, so their number stays small.
var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "requests_total",
		Help: "Requests routed, by the node that owns their bucket.",
	}, []string{"node"})
	routingErrorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "routing_errors_total",
		Help: "Requests not routed, by reason.",
	}, []string{"reason"})
	streamsClosedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "streams_closed_total",
		Help: "WebSocket streams closed because their bucket started moving or changed owner.",
	})
	heldRequests = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "held_requests",
		Help: "Requests waiting now for a bucket's handoff (or for its new owner to take it, after a 421).",
	})
	holdSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "hold_seconds",
		Help: "Time a request spent held, by outcome: released (sent on), or the routing error reason it ended with.",
		// 1 ms to 8 s: a handoff takes a save's time; handoff_wait defaults to 5 s.
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	}, []string{"outcome"})
	notOwnerTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "not_owner_answers_total",
		Help: "421 (not my bucket) answers from upstream nodes, each retried by the newest assignment or answered 503.",
	}, []string{"node"})
	handoffsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "handoffs_total",
		Help: "Bucket owner changes seen by this proxy: committed (after a moving phase), aborted (moving ended, same owner), forced (owner changed without a moving phase).",
	}, []string{"outcome"})
	handoffSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "dtable", Name: "handoff_seconds",
		Help: "Time from a move's start (its since, on the monitor's clock) to its commit seen by this proxy.",
		// 50 ms to 102 s: a release saves the bucket's dirty bases; -handoff-timeout defaults to a minute.
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
	})
	followerStates = &followerCollector{
		version: prometheus.NewDesc("caddy_dtable_assignment_version", "Version of the assignment the proxy routes by.", []string{"prefix"}, nil),
		age:     prometheus.NewDesc("caddy_dtable_assignment_age_seconds", "Seconds since the routing table last changed.", []string{"prefix"}, nil),
		up:      prometheus.NewDesc("caddy_dtable_etcd_connected", "1 if the etcd watch is up and etcd answered recently, else 0.", []string{"prefix"}, nil),
		nodes:   prometheus.NewDesc("caddy_dtable_nodes", "Registered nodes.", []string{"prefix"}, nil),
	}
)

// errorCounter returns the counter of one routing error reason.
func errorCounter(reason string) prometheus.Counter {
	return routingErrorsTotal.WithLabelValues(reason)
}

// registerMetrics adds the collectors to a config's registry; each config
// load has its own registry, the collectors are shared.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{requestsTotal, routingErrorsTotal, streamsClosedTotal,
		heldRequests, holdSeconds, notOwnerTotal, handoffsTotal, handoffSeconds, followerStates} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// followerCollector reports each shared follower's state at scrape time.
type followerCollector struct {
	version, age, up, nodes *prometheus.Desc
}

func (c *followerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.version
	ch <- c.age
	ch <- c.up
	ch <- c.nodes
}

func (c *followerCollector) Collect(ch chan<- prometheus.Metric) {
	forEachFollower(func(fw *follower) {
		t := fw.table.Load()
		connected := 0.0
		if fw.watcher.Status().Connected {
			connected = 1
		}
		ch <- prometheus.MustNewConstMetric(c.version, prometheus.GaugeValue, float64(t.version), fw.layout.Prefix)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, time.Since(t.builtAt).Seconds(), fw.layout.Prefix)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, connected, fw.layout.Prefix)
		n := 0
		if t.snap != nil {
			n = len(t.snap.Nodes)
		}
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(n), fw.layout.Prefix)
	})
}
