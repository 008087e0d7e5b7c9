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
		Help: "WebSocket streams closed because their bucket moved to another node.",
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
	for _, c := range []prometheus.Collector{requestsTotal, routingErrorsTotal, streamsClosedTotal, followerStates} {
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
