package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/planner"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// How balancing by load is told: in the log, in the answer to a request,
// and by the CLI.

// logLoad logs a round's moves by load with the predicted loads.
func (m *monitor) logLoad(d *decision, auto bool) {
	if d.load == nil || len(d.load.Moves) == 0 {
		return
	}
	moved := make([]string, 0, len(d.load.Moves))
	for _, mv := range d.load.Moves {
		moved = append(moved, fmt.Sprintf("%s:%s->%s(%.1f)", mv.Bucket, mv.From, mv.To, m.load.smooth[mv.Bucket]))
	}
	m.log.Info("moving buckets by load", zap.Bool("automatic", auto), zap.Strings("moved", moved),
		zap.Any("load_before", roundLoads(d.load.Before)), zap.Any("load_after", roundLoads(d.load.After)),
		zap.Float64("mean", round1(d.load.Mean)), zap.Bool("within_band", d.load.Within), zap.Strings("proxies", m.load.proxies))
}

// describeLoad fills a response with a load plan's before and after.
func (m *monitor) describeLoad(resp *monitorapi.Response, lp *planner.LoadPlan) {
	if lp == nil {
		return
	}
	resp.Load = &monitorapi.LoadSummary{Before: roundLoads(lp.Before), After: roundLoads(lp.After), Mean: round1(lp.Mean),
		Band: m.loadCfg.Low, Within: lp.Within, Proxies: slices.Clone(m.load.proxies)}
}

func roundLoads(l map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(l))
	for _, n := range slices.Sorted(maps.Keys(l)) {
		out[n] = round1(l[n])
	}
	return out
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

// printLoad prints a rebalance by load's load per node before and after.
func printLoad(w io.Writer, l *monitorapi.LoadSummary) {
	if l == nil {
		return
	}
	within := "within"
	if !l.Within {
		within = "NOT within (as close as the bound on moves and the bucket sizes allow)"
	}
	fmt.Fprintf(w, "load (smoothed score, summed over %d proxy report(s)): mean %.1f, goal ≤ %.2f × mean = %.1f: %s\n",
		len(l.Proxies), l.Mean, l.Band, l.Band*l.Mean, within)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tLOAD_BEFORE\tLOAD_AFTER\t×MEAN_AFTER")
	for _, n := range slices.Sorted(maps.Keys(l.Before)) {
		ratio := 0.0
		if l.Mean > 0 {
			ratio = l.After[n] / l.Mean
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.2f\n", n, l.Before[n], l.After[n], ratio)
	}
	tw.Flush()
}

// printBalanceMode adds to `monitor status` what "balanced" means now.
func printBalanceMode(w io.Writer, s schema.Settings) {
	by, auto := "bucket counts", "off"
	if s.ByLoad() {
		by = "load (bucket counts are not evened)"
	}
	if s.AutoLoadBalance {
		auto = "on"
		if !s.ByLoad() {
			auto = "on, but idle while balanced by bucket counts"
		}
	}
	fmt.Fprintf(w, "balanced by: %s; auto-load-balance: %s\n", by, auto)
}
