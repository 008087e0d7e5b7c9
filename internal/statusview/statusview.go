// Package statusview turns a cluster snapshot into the read-only views
// that operators see: `monitor status`, the proxy's admin site and Caddy's
// admin API. One shape everywhere, JSON-encodable.
package statusview

import (
	"maps"
	"slices"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// Node states in a view.
const (
	StateLive          = "live"           // registered, receives buckets
	StateDrained       = "drained"        // registered, receives nothing
	StateNotRegistered = "not_registered" // owns buckets but has no registration (dead, or its value is invalid)
	StateLeaving       = "leaving"        // registered, handing its buckets off before a clean stop
)

// Node is one node in a view.
type Node struct {
	NodeID       string `json:"node_id"`
	NodeURL      string `json:"node_url,omitempty"`
	LocalNodeURL string `json:"local_node_url,omitempty"`
	State        string `json:"state"`
	Buckets      int    `json:"buckets"`
	Error        string `json:"error,omitempty"` // why its registration in etcd was rejected
}

// Status is the whole cluster at a glance.
type Status struct {
	Prefix          string            `json:"prefix"`
	Revision        int64             `json:"revision"`
	Version         int64             `json:"version"` // 0: no assignment
	AssignmentError string            `json:"assignment_error,omitempty"`
	Leader          string            `json:"leader,omitempty"`
	Nodes           []Node            `json:"nodes"`
	Unassigned      int               `json:"unassigned"`
	Drained         []string          `json:"drained"`
	Pins            map[string]string `json:"pins"`
	AutoRebalance   bool              `json:"auto_rebalance"`
	SettingsError   string            `json:"settings_error,omitempty"`
	// Moving lists the handoffs in progress, oldest first; Queued counts
	// the planned moves waiting for a slot.
	Moving []Handoff `json:"moving"`
	Queued int       `json:"queued"`
}

// Handoff is a handoff in progress.
type Handoff struct {
	Bucket string    `json:"bucket"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Epoch  int64     `json:"epoch"`
	Since  time.Time `json:"since"`
	AgeMS  int64     `json:"age_ms"`
	Reason string    `json:"reason,omitempty"`
}

// Bucket is one bucket's owner.
type Bucket struct {
	Bucket       string `json:"bucket"`
	NodeID       string `json:"node_id"`                  // "" if unassigned
	Routable     bool   `json:"routable"`                 // the owner is registered
	LocalNodeURL string `json:"local_node_url,omitempty"` // where the proxy sends it
	Epoch        int64  `json:"epoch,omitempty"`          // the version at which it last changed owner
	MovingTo     string `json:"moving_to,omitempty"`      // a handoff to this node is in progress
	MovingAgeMS  int64  `json:"moving_age_ms,omitempty"`  // since when
	QueuedTo     string `json:"queued_to,omitempty"`      // a planned move waits for a slot
}

// NewStatus builds the status view of snap.
func NewStatus(prefix string, snap *watch.Snapshot) Status {
	st := Status{Prefix: prefix, Revision: snap.Revision, Nodes: []Node{}, Pins: map[string]string{}, Moving: []Handoff{},
		Drained: append([]string{}, snap.Settings.Drained...), AutoRebalance: snap.Settings.AutoRebalance}
	if snap.AssignmentError != nil {
		st.AssignmentError = snap.AssignmentError.Error()
	}
	if snap.SettingsError != nil {
		st.SettingsError = snap.SettingsError.Error()
	}
	for b, n := range snap.Settings.Pins {
		st.Pins[b.String()] = n
	}
	counts := map[string]int{}
	if a := snap.Assignment; a != nil {
		st.Version = a.Version
		counts = a.Counts()
		st.Unassigned = len(a.Owned(""))
		st.Queued = len(a.Queued)
		now := time.Now()
		for _, b := range slices.Sorted(maps.Keys(a.Moving)) {
			m := a.Moving[b]
			st.Moving = append(st.Moving, Handoff{Bucket: b.String(), From: m.From, To: m.To, Epoch: m.Epoch,
				Since: m.Since, AgeMS: now.Sub(m.Since).Milliseconds(), Reason: m.Reason})
		}
		slices.SortStableFunc(st.Moving, func(x, y Handoff) int { return x.Since.Compare(y.Since) })
	} else {
		st.Unassigned = bucket.Count
	}
	ids := map[string]bool{}
	for id := range snap.Nodes {
		ids[id] = true
	}
	for id := range counts {
		ids[id] = true
	}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		v := Node{NodeID: id, Buckets: counts[id], State: StateNotRegistered}
		if n, ok := snap.Nodes[id]; ok {
			v.NodeURL, v.LocalNodeURL, v.State = n.NodeURL, n.LocalNodeURL, StateLive
			if snap.Settings.IsDrained(id) {
				v.State = StateDrained
			}
			if n.Leaving() {
				v.State = StateLeaving
			}
		}
		if err := snap.NodeErrors[id]; err != nil {
			v.Error = err.Error()
		}
		st.Nodes = append(st.Nodes, v)
	}
	return st
}

// Buckets lists all 256 buckets and their owners.
func Buckets(snap *watch.Snapshot) []Bucket {
	out := make([]Bucket, bucket.Count)
	for i := range out {
		b := bucket.Bucket(i)
		out[i] = Bucket{Bucket: b.String()}
		if snap.Assignment == nil {
			continue
		}
		a := snap.Assignment
		out[i].NodeID, out[i].Epoch = a.Owners[b], a.Epochs[b]
		if m, ok := a.Moving[b]; ok {
			out[i].MovingTo, out[i].MovingAgeMS = m.To, time.Since(m.Since).Milliseconds()
		}
		if q, ok := a.Queued[b]; ok {
			out[i].QueuedTo = q.To
		}
		if n, ok := snap.Owner(b); ok {
			out[i].Routable, out[i].LocalNodeURL = true, n.LocalNodeURL
		}
	}
	return out
}
