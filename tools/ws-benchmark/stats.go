package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// percentile returns the p-th percentile (0–100) of ds by the nearest-rank
// method (the smallest value with at least p % of the values at or below
// it); 0 for no values. ds is sorted in place.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	rank := int(math.Ceil(p / 100 * float64(len(ds))))
	if rank < 1 {
		rank = 1
	}
	return ds[min(rank, len(ds))-1]
}

// summary is "p50 / p99 / max" of ds, or "–" for none.
func summary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	return fmt.Sprintf("%s / %s / %s", fmtDur(percentile(ds, 50)), fmtDur(percentile(ds, 99)), fmtDur(percentile(ds, 100)))
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%d µs", d/time.Microsecond)
}

// procStatusKB reads a "Name:   123 kB" field of /proc/<pid>/status or
// smaps_rollup; -1 if absent.
func procStatusKB(r io.Reader, field string) int64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return -1
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		return v
	}
	return -1
}

// procStatTicks returns utime+stime (clock ticks) from the contents of
// /proc/<pid>/stat. The command name (field 2) is in parentheses and may
// hold spaces, so fields are counted after its closing parenthesis.
func procStatTicks(stat string) (int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name in %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("short stat line %q", stat)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad utime/stime in %q", stat)
	}
	return u + s, nil
}

// promValue returns the value of the first sample of a Prometheus text
// exposition whose name and labels begin with series (e.g.
// `go_goroutines` or `caddy_dtable_hold_seconds_count{outcome="released"`),
// and whether it was found.
func promValue(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, series) {
			continue
		}
		rest := line[len(series):]
		if strings.HasSuffix(series, "{") || strings.HasSuffix(series, ",") {
			// caller gave a label prefix; the value follows the closing brace
		} else if len(rest) > 0 && rest[0] != ' ' && rest[0] != '{' && rest[0] != ',' && rest[0] != '}' {
			continue // a longer name
		}
		j := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(strings.TrimSpace(line[j+1:]), 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}

// histogram is the cumulative buckets of one Prometheus histogram series.
type histogram struct {
	le    []float64 // upper bounds, ascending (+Inf last)
	count []float64 // cumulative counts
}

// promHistogram reads the _bucket lines of histogram name whose labels
// contain label (e.g. `outcome="released"`).
func promHistogram(text, name, label string) histogram {
	var h histogram
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"_bucket{") || !strings.Contains(line, label) {
			continue
		}
		i := strings.Index(line, `le="`)
		if i < 0 {
			continue
		}
		rest := line[i+4:]
		j := strings.IndexByte(rest, '"')
		if j < 0 {
			continue
		}
		le, err := strconv.ParseFloat(rest[:j], 64)
		if rest[:j] == "+Inf" {
			le, err = math.Inf(1), nil
		}
		k := strings.LastIndexByte(line, ' ')
		c, err2 := strconv.ParseFloat(line[k+1:], 64)
		if err != nil || err2 != nil {
			continue
		}
		h.le = append(h.le, le)
		h.count = append(h.count, c)
	}
	return h
}

// minus returns h - o bucket by bucket (the observations between two
// scrapes); o may be empty.
func (h histogram) minus(o histogram) histogram {
	d := histogram{le: h.le, count: make([]float64, len(h.count))}
	for i := range h.count {
		d.count[i] = h.count[i]
		if i < len(o.count) {
			d.count[i] -= o.count[i]
		}
	}
	return d
}

// total is the number of observations.
func (h histogram) total() float64 {
	if len(h.count) == 0 {
		return 0
	}
	return h.count[len(h.count)-1]
}

// quantile estimates the q-th quantile (0–1) by linear interpolation
// inside the bucket that holds it, as Prometheus' histogram_quantile does;
// it returns the bucket's lower bound for the +Inf bucket and NaN for an
// empty histogram.
func (h histogram) quantile(q float64) float64 {
	n := h.total()
	if n == 0 {
		return math.NaN()
	}
	rank := q * n
	lower, below := 0.0, 0.0
	for i, le := range h.le {
		if h.count[i] >= rank {
			if math.IsInf(le, 1) {
				return lower
			}
			in := h.count[i] - below
			if in <= 0 {
				return le
			}
			return lower + (le-lower)*(rank-below)/in
		}
		lower, below = le, h.count[i]
	}
	return lower
}

// caddyLogTable is one "routing table updated" line of Caddy's JSON log.
type caddyLogTable struct {
	ts      time.Time
	version int64
}

// parseTableLog reads a Caddy JSON log line; ok is false unless it is a
// "routing table updated" line with a version.
func parseTableLog(line string) (caddyLogTable, bool) {
	if !strings.Contains(line, `"msg":"routing table updated"`) {
		return caddyLogTable{}, false
	}
	ts, ok1 := jsonNumber(line, "ts")
	v, ok2 := jsonNumber(line, "version")
	if !ok1 || !ok2 {
		return caddyLogTable{}, false
	}
	sec, frac := math.Modf(ts)
	return caddyLogTable{ts: time.Unix(int64(sec), int64(frac*1e9)), version: int64(v)}, true
}

// jsonNumber finds "key":<number> in a flat JSON line.
func jsonNumber(line, key string) (float64, bool) {
	i := strings.Index(line, `"`+key+`":`)
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(key)+3:]
	j := strings.IndexAny(rest, ",}")
	if j < 0 {
		return 0, false
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(rest[:j]), 64)
	return v, err == nil
}
