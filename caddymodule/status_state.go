package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/statusview"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// liveState is what the status page shows, sent whole in every state
// event of GET /events: the status view, every bucket, the recent moves,
// and this proxy's view of etcd. Times are absolute (the page computes
// ages against Now, the proxy's clock when the state was built).
type liveState struct {
	Now time.Time `json:"now"`
	statusview.Status
	// Nodes and Buckets shadow and extend the status view's.
	Nodes          []liveNode   `json:"nodes"`
	Buckets        []liveBucket `json:"buckets"`
	LeaderError    string       `json:"leader_error,omitempty"`
	Etcd           []string     `json:"etcd"`
	EtcdConnected  bool         `json:"etcd_connected"`
	LastContact    time.Time    `json:"last_contact"`
	LastError      string       `json:"last_error,omitempty"`
	TableBuiltAt   time.Time    `json:"table_built_at"` // when the routing table last changed
	RecentMoves    []moveEvent  `json:"recent_moves"`   // newest first
	MovesSeenSince time.Time    `json:"moves_seen_since"`
}

// liveNode is a node with its share of the load, when loads are reported.
type liveNode struct {
	statusview.Node
	LoadShare *float64 `json:"load_share,omitempty"` // 0..1 of the cluster's load on this node's buckets
}

// liveBucket is a bucket with its move's details and load.
type liveBucket struct {
	statusview.Bucket
	MovingSince  *time.Time `json:"moving_since,omitempty"`
	MovingReason string     `json:"moving_reason,omitempty"`
	QueuedReason string     `json:"queued_reason,omitempty"`
	Load         *float64   `json:"load,omitempty"`
}

// liveStateKey changes whenever the state a viewer sees does: a new
// snapshot (every etcd change, the routing table's time with it), another
// leader, etcd connection or error, a new move event, a changed load
// report.
type liveStateKey struct {
	table      *routeTable
	leader     string
	leaderErr  string
	connected  bool
	lastError  string
	movesTotal uint64
	loads      loadVersion
}

// loadCacheAge is how long the status page's view of the load reports
// is reused before they are read from etcd again: a proxy reports every
// 30 s by default, so a few seconds is fresh enough. (A variable for
// tests.)
var loadCacheAge = 5 * time.Second

// loadCache is the follower's shared view of every proxy's load report
// (<prefix>/load/) for the status page: each bucket's score, summed over
// the reports, with the default weights (schema.DefaultLoad*). Like
// leaderCache, it is read by the status hub's goroutine only, at most
// every loadCacheAge and only while someone watches: the reports are not
// in the watcher's snapshots (a load-only change must not wake routing).
type loadCache struct {
	loads   map[bucket.Bucket]float64 // nil: no valid report
	version loadVersion               // of the reports read, for liveStateKey
	at      time.Time
}

// loadVersion changes when the set of load reports does: a report written
// raises the newest mod revision, one deleted lowers the count. (etcd's
// own revision would change with any write anywhere, and resend the
// page's state on every read.)
type loadVersion struct {
	newest  int64
	reports int
}

// get returns each bucket's load, or nil when no proxy reports any (the
// page then shows none), and the version of the reports. An invalid
// report is left out, as the monitor leaves it out; an unreachable etcd
// keeps the last view.
func (c *loadCache) get(fw *follower) (map[bucket.Bucket]float64, loadVersion) {
	if !c.at.IsZero() && time.Since(c.at) < loadCacheAge {
		return c.loads, c.version
	}
	c.at = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := fw.cli.Get(ctx, fw.layout.LoadPrefix(), clientv3.WithPrefix())
	if err != nil {
		return c.loads, c.version
	}
	var loads map[bucket.Bucket]float64
	version := loadVersion{reports: len(resp.Kvs)}
	for _, kv := range resp.Kvs {
		version.newest = max(version.newest, kv.ModRevision)
		id, ok := fw.layout.ProxyIDFromLoadKey(string(kv.Key))
		if !ok {
			continue
		}
		r, err := schema.ParseLoadReport(id, kv.Value)
		if err != nil {
			continue // the monitor logs it; the page shows the valid ones
		}
		if loads == nil {
			loads = make(map[bucket.Bucket]float64, bucket.Count)
		}
		for b, l := range r.Buckets {
			loads[b] += l.Score(schema.DefaultLoadWSWeight, schema.DefaultLoadBytesPerUnit)
		}
	}
	c.loads, c.version = loads, version
	return c.loads, c.version
}

// leaderCacheAge is how long the status page's view of the leading
// monitor is reused before it is read from etcd again.
const leaderCacheAge = 2 * time.Second

// leaderCache is the follower's shared view of the leading monitor for
// the status page: read from etcd at most every leaderCacheAge, by the
// status hub's goroutine only (so it needs no lock), and only while
// someone watches.
type leaderCache struct {
	id, err string
	at      time.Time
}

func (c *leaderCache) get(fw *follower) (string, string) {
	if !c.at.IsZero() && time.Since(c.at) < leaderCacheAge {
		return c.id, c.err
	}
	// Bounded: the state must go out during an etcd outage too.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	id, err := monitorapi.Leader(ctx, fw.cli, fw.layout)
	c.id, c.err, c.at = id, "", time.Now()
	if err != nil {
		c.err = fmt.Sprintf("unknown: %v", err)
	}
	return c.id, c.err
}

// liveState builds the status page's state from the current table. Only
// the status hub's goroutine calls it.
func (fw *follower) liveState() (any, []byte) {
	t := fw.table.Load()
	snap := fw.snapshot()
	st := fw.watcher.Status()
	leader, leaderErr := fw.leader.get(fw)
	moves, total := fw.moves.recent()
	s := liveState{Now: time.Now(), Status: statusview.NewStatus(fw.layout.Prefix, snap), LeaderError: leaderErr,
		Etcd: fw.endpoints, EtcdConnected: st.Connected, LastContact: st.LastContact, LastError: st.LastError,
		TableBuiltAt: t.builtAt, RecentMoves: moves, MovesSeenSince: fw.moves.since}
	s.Leader = leader
	loads, loadsVersion := fw.loads.get(fw)
	s.Buckets = liveBuckets(snap, loads)
	s.Nodes = liveNodes(s.Status.Nodes, snap, loads)
	data, err := json.Marshal(s)
	if err != nil { // only plain fields: cannot happen, but say so rather than send nothing
		data, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	return liveStateKey{table: t, leader: leader, leaderErr: leaderErr, connected: st.Connected,
		lastError: st.LastError, movesTotal: total, loads: loadsVersion}, data
}

func liveBuckets(snap *watch.Snapshot, loads map[bucket.Bucket]float64) []liveBucket {
	views := statusview.Buckets(snap)
	out := make([]liveBucket, len(views))
	for i, v := range views {
		b := bucket.Bucket(i)
		out[i].Bucket = v
		if a := snap.Assignment; a != nil {
			if m, ok := a.Moving[b]; ok {
				since := m.Since
				out[i].MovingSince, out[i].MovingReason = &since, m.Reason
			}
			if q, ok := a.Queued[b]; ok {
				out[i].QueuedReason = q.Reason
			}
		}
		if l, ok := loads[b]; ok {
			out[i].Load = &l
		}
	}
	return out
}

// liveNodes adds each node's share of the load (the load of the buckets
// it owns over the cluster's), when loads are reported.
func liveNodes(nodes []statusview.Node, snap *watch.Snapshot, loads map[bucket.Bucket]float64) []liveNode {
	out := make([]liveNode, len(nodes))
	perNode, total := map[string]float64{}, 0.0
	if len(loads) > 0 && snap.Assignment != nil {
		for b, l := range loads {
			perNode[snap.Assignment.Owners[b]] += l
			total += l
		}
	}
	for i, n := range nodes {
		out[i].Node = n
		if len(loads) > 0 {
			share := 0.0
			if total > 0 {
				share = perNode[n.NodeID] / total
			}
			out[i].LoadShare = &share
		}
	}
	return out
}
