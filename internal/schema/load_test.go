package schema

import (
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

func TestLoadReportRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 21, 10, 0, 30, 0, time.UTC)
	r := LoadReport{Proxy: "caddy@proxy-01", Interval: 30 * time.Second, At: at,
		Buckets: map[bucket.Bucket]BucketLoad{0x0c: {Requests: 41.5, BytesIn: 2048, BytesOut: 90112, WebSockets: 12}}}
	got, err := ParseLoadReport("caddy@proxy-01", r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Proxy != r.Proxy || got.Interval != r.Interval || !got.At.Equal(at) || len(got.Buckets) != 1 || got.Buckets[0x0c] != r.Buckets[0x0c] {
		t.Fatalf("round trip: got %+v, want %+v", got, r)
	}
	if !strings.Contains(string(r.Encode()), `"0c":{"requests":41.5,"bytes_in":2048,"bytes_out":90112,"websockets":12}`) {
		t.Fatalf("encoding: %s", r.Encode())
	}
}

func TestParseLoadReportRejects(t *testing.T) {
	ok := `"proxy":"p@h","interval_seconds":30,"at":"2026-11-21T10:00:30Z"`
	cases := map[string]string{
		"not JSON":            `{`,
		"proxy mismatch":      `{"proxy":"other","interval_seconds":30,"at":"2026-11-21T10:00:30Z"}`,
		"zero interval":       `{"proxy":"p@h","interval_seconds":0,"at":"2026-11-21T10:00:30Z"}`,
		"interval of a year":  `{"proxy":"p@h","interval_seconds":31536000,"at":"2026-11-21T10:00:30Z"}`,
		"no time":             `{"proxy":"p@h","interval_seconds":30}`,
		"bad bucket":          `{` + ok + `,"buckets":{"zz":{"requests":1}}}`,
		"bucket listed twice": `{` + ok + `,"buckets":{"0C":{"requests":1},"0c":{"requests":2}}}`,
		"negative rate":       `{` + ok + `,"buckets":{"0c":{"requests":-1}}}`,
		"rate not a number":   `{` + ok + `,"buckets":{"0c":{"requests":"many"}}}`,
	}
	for name, v := range cases {
		t.Run(name, func(t *testing.T) {
			if r, err := ParseLoadReport("p@h", []byte(v)); err == nil {
				t.Fatalf("accepted %s as %+v", v, r)
			}
		})
	}
}

func TestLoadKeys(t *testing.T) {
	l, _ := NewLayout("/c")
	if got := l.LoadKey("caddy@h1"); got != "/c/load/caddy@h1" {
		t.Fatalf("LoadKey = %q", got)
	}
	if id, ok := l.ProxyIDFromLoadKey("/c/load/caddy@h1"); !ok || id != "caddy@h1" {
		t.Fatalf("ProxyIDFromLoadKey = %q, %v", id, ok)
	}
	for _, k := range []string{"/c/load/", "/c/load/a/b", "/c/nodes/x", "/c/load/bad id"} {
		if id, ok := l.ProxyIDFromLoadKey(k); ok {
			t.Fatalf("ProxyIDFromLoadKey(%q) = %q, want rejected", k, id)
		}
	}
}

func TestSettingsBalanceBy(t *testing.T) {
	s, err := ParseSettings([]byte(`{"drained":[],"pins":{},"auto_rebalance":false}`))
	if err != nil || s.ByLoad() || s.AutoLoadBalance {
		t.Fatalf("an older value: %+v, %v; want count, auto load off", s, err)
	}
	if string(s.Encode()) != `{"drained":[],"pins":{},"auto_rebalance":false}` {
		t.Fatalf("count settings encode as %s; want the older value unchanged", s.Encode())
	}
	s.BalanceBy, s.AutoLoadBalance = BalanceByLoad, true
	back, err := ParseSettings(s.Encode())
	if err != nil || !back.ByLoad() || !back.AutoLoadBalance {
		t.Fatalf("round trip of %s: %+v, %v", s.Encode(), back, err)
	}
	if _, err := ParseSettings([]byte(`{"balance_by":"weight"}`)); err == nil {
		t.Fatal(`balance_by "weight" accepted`)
	}
}

func FuzzParseLoadReport(f *testing.F) {
	f.Add("caddy@p1", []byte(`{"proxy":"caddy@p1","interval_seconds":30,"at":"2026-11-21T10:00:30Z","buckets":{"0c":{"requests":41.5,"bytes_in":2048,"bytes_out":90112,"websockets":12}}}`))
	f.Add("p", []byte(`{"proxy":"p","interval_seconds":1e-9,"at":"2026-11-21T10:00:30+02:00","buckets":{}}`))
	f.Fuzz(func(t *testing.T, id string, in []byte) {
		r, err := ParseLoadReport(id, in)
		if err != nil {
			return
		}
		if r.Proxy != id || r.Interval <= 0 {
			t.Fatalf("accepted %s as %+v", in, r)
		}
		again, err := ParseLoadReport(id, r.Encode())
		if err != nil || again.Interval != r.Interval || !again.At.Equal(r.At) || len(again.Buckets) != len(r.Buckets) {
			t.Fatalf("round trip of %s: %+v %v", in, again, err)
		}
		for b, l := range r.Buckets {
			if again.Buckets[b] != l {
				t.Fatalf("round trip of %s: bucket %s %+v, was %+v", in, b, again.Buckets[b], l)
			}
		}
	})
}
