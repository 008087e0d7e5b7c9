package caddymodule

import (
	"testing"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// TestLoadCountersSample reads what was added, per bucket, and leaves the
// counters as they are (the publisher turns differences into rates).
func TestLoadCountersSample(t *testing.T) {
	var c loadCounters
	c[0x5c].requests.Add(3)
	c[0x5c].bytesIn.Add(100)
	c[0x5c].bytesOut.Add(2000)
	c[0x10].websockets.Add(2)
	c[0x10].websockets.Add(-1)
	var s [bucket.Count]bucketLoadSample
	c.sample(&s)
	if s[0x5c] != (bucketLoadSample{requests: 3, bytesIn: 100, bytesOut: 2000}) || s[0x10].websockets != 1 || s[0x00] != (bucketLoadSample{}) {
		t.Fatalf("samples: 5c %+v, 10 %+v, 00 %+v", s[0x5c], s[0x10], s[0x00])
	}
	if c[0x5c].requests.Load() != 3 {
		t.Fatal("sampling changed the counters")
	}
}

// BenchmarkLoadCounting is what counting adds to one request on the hot
// path (a request, body bytes in, two writes out), all requests in one
// bucket (the worst case: every core on one counter), in parallel.
func BenchmarkLoadCounting(b *testing.B) {
	var c loadCounters
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		l := &c[0x5c]
		for pb.Next() {
			l.requests.Add(1)
			l.bytesIn.Add(22)
			l.bytesOut.Add(512)
			l.bytesOut.Add(2)
		}
	})
}
