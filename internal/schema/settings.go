package schema

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// Settings are the operator's instructions to the monitor, stored as one
// JSON value at <prefix>/settings and written by the leading monitor when it
// carries out a request:
//
//	{"drained": ["dtable-server-03"], "pins": {"0a": "dtable-server-01"}, "auto_rebalance": false,
//	 "balance_by": "load", "auto_load_balance": true}
type Settings struct {
	// Drained nodes stay registered but own no bucket (e.g. before maintenance).
	Drained []string
	// Pins keep a bucket on a node while that node is live and not drained.
	Pins map[bucket.Bucket]string
	// AutoRebalance evens out bucket counts on every change (a node joining
	// then takes buckets from the others); off by default, for stability.
	AutoRebalance bool
	// BalanceBy is what "balanced" means: BalanceByCount (the default: even
	// bucket counts) or BalanceByLoad (even load as the proxies measure
	// it). The last rebalance request sets it. While it is "load", bucket
	// counts are not evened (that would undo the load moves): no periodic
	// or automatic count rebalance.
	BalanceBy string
	// AutoLoadBalance moves buckets by load on its own, with hysteresis
	// (monitor flags -load-high, -load-low); only while BalanceBy is
	// "load". Off by default.
	AutoLoadBalance bool
}

// What a rebalance evens out (Settings.BalanceBy).
const (
	BalanceByCount = "count"
	BalanceByLoad  = "load"
)

// ByLoad reports whether the cluster is balanced by load.
func (s Settings) ByLoad() bool { return s.BalanceBy == BalanceByLoad }

type settingsJSON struct {
	Drained       []string          `json:"drained"`
	Pins          map[string]string `json:"pins"`
	AutoRebalance bool              `json:"auto_rebalance"`
	// Added with load balancing; absent in older values (count, off).
	BalanceBy       string `json:"balance_by,omitempty"`
	AutoLoadBalance bool   `json:"auto_load_balance,omitempty"`
}

// IsDrained reports whether node is drained.
func (s Settings) IsDrained(node string) bool { return slices.Contains(s.Drained, node) }

// Clone returns a deep copy.
func (s Settings) Clone() Settings {
	c := s
	c.Drained = slices.Clone(s.Drained)
	if s.Pins != nil {
		c.Pins = make(map[bucket.Bucket]string, len(s.Pins))
		for b, n := range s.Pins {
			c.Pins[b] = n
		}
	}
	return c
}

// Encode returns the JSON value, with drained nodes sorted.
func (s Settings) Encode() []byte {
	j := settingsJSON{Drained: slices.Sorted(slices.Values(s.Drained)), Pins: map[string]string{}, AutoRebalance: s.AutoRebalance,
		AutoLoadBalance: s.AutoLoadBalance}
	if s.BalanceBy == BalanceByLoad {
		j.BalanceBy = BalanceByLoad // "count" is the default: left out, so older values stay byte-identical
	}
	if j.Drained == nil {
		j.Drained = []string{}
	}
	for b, n := range s.Pins {
		j.Pins[b.String()] = n
	}
	out, err := json.Marshal(j)
	if err != nil {
		panic(err)
	}
	return out
}

// ParseSettings decodes and validates a settings value.
func ParseSettings(value []byte) (Settings, error) {
	var j settingsJSON
	if err := json.Unmarshal(value, &j); err != nil {
		return Settings{}, fmt.Errorf("not a JSON settings object: %v", err)
	}
	s := Settings{AutoRebalance: j.AutoRebalance, AutoLoadBalance: j.AutoLoadBalance}
	switch j.BalanceBy {
	case "", BalanceByCount:
	case BalanceByLoad:
		s.BalanceBy = BalanceByLoad
	default:
		return Settings{}, fmt.Errorf(`field "balance_by": %q, want "count" or "load"`, j.BalanceBy)
	}
	for _, n := range j.Drained {
		if err := ValidateNodeID(n); err != nil {
			return Settings{}, fmt.Errorf(`field "drained": %v`, err)
		}
		if !slices.Contains(s.Drained, n) {
			s.Drained = append(s.Drained, n)
		}
	}
	slices.Sort(s.Drained)
	for name, n := range j.Pins {
		b, err := bucket.Parse(name)
		if err != nil {
			return Settings{}, fmt.Errorf(`field "pins": %v`, err)
		}
		if err := ValidateNodeID(n); err != nil {
			return Settings{}, fmt.Errorf(`field "pins": bucket %s: %v`, b, err)
		}
		if s.Pins == nil {
			s.Pins = map[bucket.Bucket]string{}
		}
		if _, dup := s.Pins[b]; dup {
			return Settings{}, fmt.Errorf(`field "pins": bucket %s is listed twice`, b)
		}
		s.Pins[b] = n
	}
	return s, nil
}
