package caddymodule

import (
	"sync/atomic"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// bucketLoad counts one bucket's traffic through this proxy, for the load
// report (load_report.go). The request path only adds to atomics: no lock
// and no allocation per request. The counters only grow (the WebSocket
// gauge excepted); the publisher turns the difference between two reads
// into rates, so nothing ever resets them under a request's feet.
type bucketLoad struct {
	requests   atomic.Uint64 // requests begun for the bucket (routed or not)
	bytesIn    atomic.Uint64 // request body bytes read from clients
	bytesOut   atomic.Uint64 // response bytes written to clients (not WebSocket frames: see websockets)
	websockets atomic.Int64  // upgraded connections open now
	// The counters of neighbouring buckets are written by different
	// requests on different cores: one cache line each, so they do not
	// slow each other down (false sharing).
	_ [64 - 4*8]byte
}

// loadCounters are the counters of every bucket. A follower owns one set,
// shared by every handler of every loaded config, so a config reload
// neither loses nor resets them.
type loadCounters [bucket.Count]bucketLoad

// bucketLoadSample is one read of a bucket's counters.
type bucketLoadSample struct {
	requests, bytesIn, bytesOut uint64
	websockets                  int64
}

// sample reads every bucket's counters (each bucket's four reads are not
// one atomic snapshot; a request counted between them shows up in the
// next interval instead, which is all a rate needs).
func (c *loadCounters) sample(out *[bucket.Count]bucketLoadSample) {
	for b := range c {
		l := &c[b]
		out[b] = bucketLoadSample{requests: l.requests.Load(), bytesIn: l.bytesIn.Load(),
			bytesOut: l.bytesOut.Load(), websockets: l.websockets.Load()}
	}
}
