package schema

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// LoadPrefix is where proxies publish what they measure
// (<prefix>/load/<proxy_id>), each key under its proxy's lease.
func (l Layout) LoadPrefix() string { return l.Prefix + "/load/" }

// LoadKey is the load report of one proxy.
func (l Layout) LoadKey(proxyID string) string { return l.LoadPrefix() + proxyID }

// ProxyIDFromLoadKey returns the proxy id of a load key, or false if key
// is not one.
func (l Layout) ProxyIDFromLoadKey(key string) (string, bool) {
	id, ok := strings.CutPrefix(key, l.LoadPrefix())
	if !ok || ValidateProxyID(id) != nil {
		return "", false
	}
	return id, true
}

// ValidateProxyID checks a proxy id: the same characters as a node id
// plus "@" (the default is "caddy@<hostname>").
func ValidateProxyID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("proxy id %q: want 1-128 characters", id)
	}
	for _, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-:@", c)
		if !ok {
			return fmt.Errorf("proxy id %q: character %q not allowed (letters, digits, '.', '_', '-', ':', '@')", id, c)
		}
	}
	return nil
}

// BucketLoad is what one proxy measured for one bucket over its last
// interval: Requests, BytesIn and BytesOut are rates per second (requests
// begun, request body bytes read, response bytes written, by the proxy);
// WebSockets is a gauge, the upgraded connections open at the end of the
// interval.
type BucketLoad struct {
	Requests   float64 `json:"requests"`
	BytesIn    float64 `json:"bytes_in"`
	BytesOut   float64 `json:"bytes_out"`
	WebSockets float64 `json:"websockets"`
}

// The load score's default weights: what one open WebSocket weighs, in
// requests per second, and how many bytes per second (in and out) weigh
// as much as one request per second. The monitor's -load-ws-weight and
// -load-bytes-per-unit change them for its planning; the status page
// shows scores with these defaults.
const (
	DefaultLoadWSWeight     = 1
	DefaultLoadBytesPerUnit = 64 << 10
)

// Score is the measurement as one number: requests/s + wsWeight × open
// WebSockets + (bytes in + out)/s ÷ bytesPerUnit.
func (b BucketLoad) Score(wsWeight, bytesPerUnit float64) float64 {
	return b.Requests + wsWeight*b.WebSockets + (b.BytesIn+b.BytesOut)/bytesPerUnit
}

// Zero reports whether nothing was measured.
func (b BucketLoad) Zero() bool { return b == BucketLoad{} }

// LoadReport is the value of <prefix>/load/<proxy_id>: one proxy's
// measurement of every bucket with traffic over its last interval
// (buckets without any are left out):
//
//	{"proxy": "caddy@proxy-01", "interval_seconds": 30, "at": "2026-11-21T10:00:30Z",
//	 "buckets": {"0c": {"requests": 41.5, "bytes_in": 2048, "bytes_out": 90112, "websockets": 12}}}
type LoadReport struct {
	Proxy    string
	Interval time.Duration
	At       time.Time
	Buckets  map[bucket.Bucket]BucketLoad
}

type loadReportJSON struct {
	Proxy           string                `json:"proxy"`
	IntervalSeconds float64               `json:"interval_seconds"`
	At              string                `json:"at"`
	Buckets         map[string]BucketLoad `json:"buckets"`
}

// Encode returns the JSON value.
func (r LoadReport) Encode() []byte {
	j := loadReportJSON{Proxy: r.Proxy, IntervalSeconds: r.Interval.Seconds(),
		At: r.At.UTC().Format(time.RFC3339Nano), Buckets: make(map[string]BucketLoad, len(r.Buckets))}
	for b, l := range r.Buckets {
		j.Buckets[b.String()] = l
	}
	out, err := json.Marshal(j)
	if err != nil {
		panic(err)
	}
	return out
}

// ParseLoadReport decodes and validates the load report of proxy id (the
// key's last segment): every number finite and ≥ 0, a positive interval,
// a time, known buckets, and the proxy named as in its key.
func ParseLoadReport(id string, value []byte) (LoadReport, error) {
	var j loadReportJSON
	if err := json.Unmarshal(value, &j); err != nil {
		return LoadReport{}, fmt.Errorf("not a JSON load report: %v", err)
	}
	if j.Proxy != id {
		return LoadReport{}, fmt.Errorf(`field "proxy": %q, want %q (the key's last segment)`, j.Proxy, id)
	}
	// At most a day, and at least a millisecond: a duration can hold it.
	if !(j.IntervalSeconds >= 0.001 && j.IntervalSeconds <= 86400) {
		return LoadReport{}, fmt.Errorf(`field "interval_seconds": %v, want a number of seconds from 0.001 to 86400`, j.IntervalSeconds)
	}
	at, err := time.Parse(time.RFC3339Nano, j.At)
	if err != nil {
		return LoadReport{}, fmt.Errorf(`field "at": %v`, err)
	}
	r := LoadReport{Proxy: id, Interval: time.Duration(j.IntervalSeconds * float64(time.Second)), At: at,
		Buckets: make(map[bucket.Bucket]BucketLoad, len(j.Buckets))}
	for _, name := range slices.Sorted(maps.Keys(j.Buckets)) {
		b, err := bucket.Parse(name)
		if err != nil {
			return LoadReport{}, fmt.Errorf(`field "buckets": %v`, err)
		}
		if _, dup := r.Buckets[b]; dup {
			return LoadReport{}, fmt.Errorf(`field "buckets": bucket %s is listed twice`, b)
		}
		l := j.Buckets[name]
		for _, v := range []struct {
			name string
			v    float64
		}{{"requests", l.Requests}, {"bytes_in", l.BytesIn}, {"bytes_out", l.BytesOut}, {"websockets", l.WebSockets}} {
			if v.v < 0 || math.IsNaN(v.v) || math.IsInf(v.v, 0) {
				return LoadReport{}, fmt.Errorf(`field "buckets": bucket %s: %s is %v, want a finite number ≥ 0`, b, v.name, v.v)
			}
		}
		r.Buckets[b] = l
	}
	return r, nil
}
