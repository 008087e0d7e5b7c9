package fakeserver

import (
	"fmt"
	"sort"
	"time"
)

// Overlaps checks the logs of several servers for the safety rule: no two
// servers hold one bucket, or serve a request for it, at overlapping
// instants. Holds and requests are compared with each other too: a
// request one server served while another held the bucket is as unsafe as
// two holds. It returns one line per violation (none: safe). An interval
// that has not ended counts as lasting until now. The servers must share
// a clock (run in one process), as the tests do.
func Overlaps(logs ...[]Interval) []string {
	now := time.Now()
	type span struct {
		Interval
		end time.Time
	}
	byKey := map[string][]span{} // bucket -> spans of both kinds
	for _, log := range logs {
		for _, iv := range log {
			if iv.Kind != "hold" && iv.Kind != "serve" || iv.Bucket == "" {
				continue
			}
			end := iv.End
			if end.IsZero() {
				end = now
			}
			byKey[iv.Bucket] = append(byKey[iv.Bucket], span{iv, end})
		}
	}
	var out []string
	for key, spans := range byKey {
		sort.Slice(spans, func(i, j int) bool { return spans[i].Start.Before(spans[j].Start) })
		// Sweep: remember, per server, the latest end seen so far; a span
		// that starts before another server's latest end overlaps it.
		latest := map[string]span{}
		for _, sp := range spans {
			for srv, prev := range latest {
				if srv != sp.Server && sp.Start.Before(prev.end) {
					out = append(out, fmt.Sprintf("bucket %s: %s %s [%s, %s] overlaps %s %s [%s, %s]", key,
						prev.Server, prev.Kind, stamp(prev.Start), stamp(prev.end), sp.Server, sp.Kind, stamp(sp.Start), stamp(sp.end)))
				}
			}
			if cur, ok := latest[sp.Server]; !ok || sp.end.After(cur.end) {
				latest[sp.Server] = sp
			}
		}
	}
	sort.Strings(out)
	return out
}

func stamp(t time.Time) string { return t.Format("15:04:05.000000") }
