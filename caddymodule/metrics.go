package caddymodule

import (
	"errors"
	"slices"
	"strings"
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
		Help: "Requests waiting now for a bucket's handoff, for its new owner to take it after a 421, or for a registered owner after its owner's registration went.",
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
		version: prometheus.NewDesc("caddy_dtable_assignment_version", "Version of the assignment the proxy routes by.", clusterLabels, nil),
		age:     prometheus.NewDesc("caddy_dtable_assignment_age_seconds", "Seconds since the routing table last changed.", clusterLabels, nil),
		up:      prometheus.NewDesc("caddy_dtable_etcd_connected", "1 if the etcd watch is up and etcd answered recently, else 0.", clusterLabels, nil),
		nodes:   prometheus.NewDesc("caddy_dtable_nodes", "Registered nodes.", clusterLabels, nil),
	}
)

// clusterLabels name a followed cluster: its key prefix and its etcd
// endpoints (etcdLabel). Several shared followers can follow one cluster
// (the proxy site names etcd by endpoints, the admin site by config; the
// endpoints in another order; other credentials): the collector reports
// each cluster once, so their series never collide.
var clusterLabels = []string{"prefix", "etcd"}

// etcdLabel is the etcd label of a cluster: its endpoints without scheme
// or trailing slash, lower case, sorted, without repeats, comma-separated,
// so that every way of writing one endpoint list gives one label.
func etcdLabel(endpoints []string) string {
	var eps []string
	for _, ep := range endpoints {
		ep = strings.ToLower(strings.TrimRight(ep, "/"))
		ep = strings.TrimPrefix(strings.TrimPrefix(ep, "http://"), "https://")
		eps = append(eps, ep)
	}
	slices.Sort(eps)
	return strings.Join(slices.Compact(eps), ",")
}

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

// Collect reports each followed cluster (prefix and etcd label) once: of
// the followers of one cluster, the one whose view is the freshest (etcd
// connected, then the newest assignment, then the newest table).
func (c *followerCollector) Collect(ch chan<- prometheus.Metric) {
	type view struct {
		version   int64
		builtAt   time.Time
		connected bool
		nodes     int
	}
	fresher := func(a, b view) bool {
		if a.connected != b.connected {
			return a.connected
		}
		if a.version != b.version {
			return a.version > b.version
		}
		return a.builtAt.After(b.builtAt)
	}
	clusters := map[[2]string]view{}
	forEachFollower(func(fw *follower) {
		t := fw.table.Load()
		v := view{version: t.version, builtAt: t.builtAt, connected: fw.watcher.Status().Connected}
		if t.snap != nil {
			v.nodes = len(t.snap.Nodes)
		}
		k := [2]string{fw.layout.Prefix, fw.etcdLabel}
		if seen, ok := clusters[k]; !ok || fresher(v, seen) {
			clusters[k] = v
		}
	})
	for k, v := range clusters {
		connected := 0.0
		if v.connected {
			connected = 1
		}
		ch <- prometheus.MustNewConstMetric(c.version, prometheus.GaugeValue, float64(v.version), k[0], k[1])
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, time.Since(v.builtAt).Seconds(), k[0], k[1])
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, connected, k[0], k[1])
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(v.nodes), k[0], k[1])
	}
}
