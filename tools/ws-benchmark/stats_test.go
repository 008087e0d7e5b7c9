package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		t.Run(fmt.Sprintf("p%v", c.p), func(t *testing.T) {
			if got := percentile(ds, c.p); got != c.want {
				t.Errorf("p%v = %v, want %v", c.p, got, c.want)
			}
		})
	}
	if percentile(nil, 50) != 0 || summary(nil) != "–" {
		t.Error("empty input")
	}
	if got := percentile([]time.Duration{3, 1, 2}, 50); got != 2 {
		t.Errorf("p50 of 3 = %v", got)
	}
}

func TestProcStatusKB(t *testing.T) {
	status := "Name:\tcaddy\nVmPeak:\t  123 kB\nVmRSS:\t   45678 kB\nPPid:\t42\n"
	if got := procStatusKB(strings.NewReader(status), "VmRSS"); got != 45678 {
		t.Errorf("VmRSS = %d", got)
	}
	if got := procStatusKB(strings.NewReader(status), "PPid"); got != 42 {
		t.Errorf("PPid = %d", got)
	}
	if got := procStatusKB(strings.NewReader(status), "Pss"); got != -1 {
		t.Errorf("missing field = %d", got)
	}
	rollup := "00400000-7ffc rw-p 00000000 00:00 0 [rollup]\nRss:  1000 kB\nPss:   900 kB\n"
	if got := procStatusKB(strings.NewReader(rollup), "Pss"); got != 900 {
		t.Errorf("Pss = %d", got)
	}
}

func TestProcStatTicks(t *testing.T) {
	// Fields 14 and 15 (utime, stime) are 250 and 50; the name has a space
	// and a parenthesis.
	stat := "1234 (my (proc) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 1000 200 18446744073709551615"
	got, err := procStatTicks(stat)
	if err != nil || got != 300 {
		t.Errorf("ticks = %d, %v; want 300", got, err)
	}
	if _, err := procStatTicks("1234 (x) S 1"); err == nil {
		t.Error("short line accepted")
	}
}

const metricsText = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 8123
go_goroutines_extra 1
go_memstats_heap_inuse_bytes 1.2345e+08
caddy_dtable_hold_seconds_bucket{outcome="handoff_in_progress",le="0.005"} 7
caddy_dtable_hold_seconds_bucket{outcome="released",le="0.005"} 10
caddy_dtable_hold_seconds_bucket{outcome="released",le="0.01"} 30
caddy_dtable_hold_seconds_bucket{outcome="released",le="0.025"} 90
caddy_dtable_hold_seconds_bucket{outcome="released",le="+Inf"} 100
caddy_dtable_hold_seconds_count{outcome="released"} 100
`

func TestPromValue(t *testing.T) {
	if v, ok := promValue(metricsText, "go_goroutines"); !ok || v != 8123 {
		t.Errorf("go_goroutines = %v %v", v, ok)
	}
	if v, ok := promValue(metricsText, "go_memstats_heap_inuse_bytes"); !ok || v != 1.2345e8 {
		t.Errorf("heap = %v %v", v, ok)
	}
	if v, ok := promValue(metricsText, `caddy_dtable_hold_seconds_count{outcome="released"`); !ok || v != 100 {
		t.Errorf("count = %v %v", v, ok)
	}
	if _, ok := promValue(metricsText, "go_gorout"); ok {
		t.Error("a name prefix matched")
	}
}

func TestPromHistogram(t *testing.T) {
	h := promHistogram(metricsText, "caddy_dtable_hold_seconds", `outcome="released"`)
	if len(h.le) != 4 || h.total() != 100 {
		t.Fatalf("histogram %+v", h)
	}
	// p50: rank 50 in (0.01, 0.025], 20 of its 60 → 0.01 + 0.015/3.
	if got := h.quantile(0.5); math.Abs(got-0.015) > 1e-9 {
		t.Errorf("p50 = %v, want 0.015", got)
	}
	if got := h.quantile(0.05); math.Abs(got-0.0025) > 1e-9 {
		t.Errorf("p5 = %v, want 0.0025", got)
	}
	if got := h.quantile(0.99); got != 0.025 { // in +Inf: its lower bound
		t.Errorf("p99 = %v, want 0.025", got)
	}
	d := h.minus(histogram{le: h.le, count: []float64{10, 20, 50, 50}})
	if d.total() != 50 || d.count[0] != 0 || d.count[1] != 10 {
		t.Errorf("minus = %+v", d)
	}
	if !math.IsNaN((histogram{}).quantile(0.5)) {
		t.Error("empty histogram")
	}
}

func TestParseTableLog(t *testing.T) {
	line := `{"level":"info","ts":1763728200.123456,"logger":"dtable_bucket","msg":"routing table updated","prefix":"/dtable-cluster","version":42,"previous_version":41,"buckets_changed":1}`
	got, ok := parseTableLog(line)
	if !ok || got.version != 42 {
		t.Fatalf("parse = %+v %v", got, ok)
	}
	want := time.Unix(1763728200, 123456000)
	if d := got.ts.Sub(want); d < -time.Microsecond || d > time.Microsecond {
		t.Errorf("ts = %v, want %v", got.ts, want)
	}
	if _, ok := parseTableLog(`{"ts":1,"msg":"following the cluster in etcd"}`); ok {
		t.Error("another message parsed")
	}
}

func TestStreamsFor(t *testing.T) {
	if got := streamsFor(200000, 20000); got != 20000 {
		t.Errorf("ample limit: %d", got)
	}
	if got := streamsFor(20000, 20000); got != 8960 {
		t.Errorf("20000 limit: %d, want 8960", got)
	}
	if got := streamsFor(45000, 20000); got != 20000 {
		t.Errorf("45000 limit: %d, want 20000", got)
	}
}

func TestSpreadOf(t *testing.T) {
	if got := spreadOf([]time.Duration{5, 2, 9, 4}); got != 7 {
		t.Errorf("spread = %v, want 7", got)
	}
	if spreadOf(nil) != 0 {
		t.Error("empty")
	}
}
