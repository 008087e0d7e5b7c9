// Package monitorapi is the operator request protocol between clients (the
// monitor CLI, the Caddy admin site) and the leading monitor. Both sides
// talk only through etcd, so a request reaches whichever monitor leads:
//
//  1. the client writes a Request at <prefix>/requests/<id> under a lease
//     slightly longer than its timeout (an unanswered request disappears);
//  2. the leader carries it out and, in the same transaction as any change
//     it makes, writes a Response at <prefix>/responses/<id> (under a
//     one-minute lease) and deletes the request;
//  3. the client watches the response key from the revision of its write.
//
// With no monitor running, Send fails after its timeout with ErrNoMonitor.
package monitorapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/leases"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// Operations a request can ask for.
const (
	OpRebalance     = "rebalance"      // even out bucket counts with the fewest moves
	OpDrain         = "drain"          // Node keeps nothing
	OpUndrain       = "undrain"        // Node may receive buckets again
	OpPin           = "pin"            // Bucket stays on Node
	OpUnpin         = "unpin"          // Bucket is free again
	OpAutoRebalance = "auto_rebalance" // Enabled switches rebalancing on every change
	// OpAutoLoadBalance: Enabled switches balancing by load on its own,
	// with hysteresis; on also makes load what "balanced" means.
	OpAutoLoadBalance = "auto_load_balance"
)

// What a rebalance evens out (Request.By).
const (
	ByCount = "count" // bucket counts (the default)
	ByLoad  = "load"  // the load the proxies measure
)

// Request asks the leading monitor for one operation.
type Request struct {
	ID        string `json:"id"`
	Op        string `json:"op"`
	DryRun    bool   `json:"dry_run,omitempty"`
	Node      string `json:"node,omitempty"`
	Bucket    string `json:"bucket,omitempty"`
	Enabled   bool   `json:"enabled,omitempty"`
	From      string `json:"from,omitempty"` // who asks, for the log: "monitor-cli@host", "caddy@host"
	CreatedAt string `json:"created_at,omitempty"`
	// By is what a rebalance evens out: ByCount ("" means the same) or
	// ByLoad. The last rebalance carried out sets the cluster's criterion
	// (schema.Settings.BalanceBy).
	By string `json:"by,omitempty"`
}

// NodeMoves counts the buckets a node gains and loses.
type NodeMoves struct {
	Gained int `json:"gained"`
	Lost   int `json:"lost"`
}

// Response is the leader's answer.
type Response struct {
	ID     string `json:"id"`
	Op     string `json:"op"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	DryRun bool   `json:"dry_run"`
	Leader string `json:"leader"`
	// PreviousVersion is the assignment version the request was planned
	// on; Version the one after it (the same when nothing moved or for a
	// dry run).
	PreviousVersion int64                `json:"previous_version"`
	Version         int64                `json:"version"`
	Moves           []schema.Move        `json:"moves"`
	MovesPerNode    map[string]NodeMoves `json:"moves_per_node"`
	Counts          map[string]int       `json:"counts"` // buckets per node after
	Warnings        []string             `json:"warnings,omitempty"`
	// How the moves proceed (every move from a live node is a handoff):
	// Direct moves had no live old owner and are done; Started ones are
	// handing off now; Queued ones wait for a slot under the throttle;
	// Waves estimates how many rounds of handoffs that takes, and
	// WavesWithin (a Go duration, e.g. "11m0s") bounds how long: Waves
	// times the leader's -handoff-timeout, as a wave lasts as long as its
	// slowest release and a release that takes longer aborts. A caller
	// that waits watches <prefix>/assignment until the buckets of Started
	// and Queued are no longer moving or queued, or are queued again with
	// an aborted_version newer than Version (aborted).
	Direct      []schema.Move `json:"direct,omitempty"`
	Started     []schema.Move `json:"started,omitempty"`
	Queued      []schema.Move `json:"queued,omitempty"`
	Waves       int           `json:"waves,omitempty"`
	WavesWithin string        `json:"waves_within,omitempty"`
	// Load is filled for a rebalance by load (dry runs too): the load
	// per node before and after the planned moves.
	Load *LoadSummary `json:"load,omitempty"`
	// Outcome is filled by a caller that waited for the handoffs (the CLI
	// with -wait); the monitor leaves it empty.
	Outcome *Outcome `json:"outcome,omitempty"`
}

// LoadSummary is what a rebalance by load saw and predicts. Loads are
// smoothed load scores (README, "Load balancing"); the mean is over the
// nodes that may hold buckets; Band is the goal (every node ≤ Band ×
// Mean), Within whether the plan reaches it.
type LoadSummary struct {
	Before  map[string]float64 `json:"before"`
	After   map[string]float64 `json:"after"`
	Mean    float64            `json:"mean"`
	Band    float64            `json:"band"`
	Within  bool               `json:"within"`
	Proxies []string           `json:"proxies"` // whose reports the load is summed from
}

// Outcome is how the handoffs of a response ended, as seen by a caller
// that waited for them.
type Outcome struct {
	Committed []schema.Move `json:"committed"`           // the bucket is now on To
	Aborted   []schema.Move `json:"aborted"`             // the bucket stayed on From
	Pending   []schema.Move `json:"pending"`             // still moving or queued when the wait ended
	Elsewhere []schema.Move `json:"elsewhere,omitempty"` // a later plan sent the bucket to a third node
	Waited    string        `json:"waited"`              // how long, e.g. "4.2s"
}

// ErrNoMonitor: no monitor answered in time.
var ErrNoMonitor = errors.New("no monitor answered")

// Validate checks that a request names what its operation needs.
func (r *Request) Validate() error {
	switch r.By {
	case "", ByCount, ByLoad:
	default:
		return fmt.Errorf("%s: by %q: want %q or %q", r.Op, r.By, ByCount, ByLoad)
	}
	if r.By != "" && r.Op != OpRebalance {
		return fmt.Errorf("%s: by is only for %s", r.Op, OpRebalance)
	}
	switch r.Op {
	case OpRebalance, OpAutoRebalance, OpAutoLoadBalance:
	case OpDrain, OpUndrain:
		if err := schema.ValidateNodeID(r.Node); err != nil {
			return fmt.Errorf("%s: %v", r.Op, err)
		}
	case OpPin:
		if err := schema.ValidateNodeID(r.Node); err != nil {
			return fmt.Errorf("pin: %v", err)
		}
		fallthrough
	case OpUnpin:
		if len(r.Bucket) != 2 {
			return fmt.Errorf("%s: bucket %q: want two hex digits 00..ff", r.Op, r.Bucket)
		}
	default:
		return fmt.Errorf("unknown operation %q", r.Op)
	}
	return nil
}

// Send writes req, waits for the leader's response until ctx ends, and
// returns it. The request's ID and CreatedAt are filled in. A response
// with OK false is returned together with an error carrying its message.
func Send(ctx context.Context, cli *clientv3.Client, layout schema.Layout, req Request) (*Response, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	req.ID = newID()
	req.CreatedAt = time.Now().UTC().Format(time.RFC3339Nano)
	body, _ := json.Marshal(req)

	ttl := int64(30)
	if dl, ok := ctx.Deadline(); ok {
		ttl = int64(math.Ceil(time.Until(dl).Seconds())) + 5
	}
	lease, err := cli.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	respKey := layout.ResponsesPrefix() + req.ID
	put, err := cli.Put(ctx, layout.RequestsPrefix()+req.ID, string(body), clientv3.WithLease(lease.ID))
	if err != nil {
		return nil, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range cli.Watch(wctx, respKey, clientv3.WithRev(put.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			break
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			var resp Response
			if err := json.Unmarshal(ev.Kv.Value, &resp); err != nil {
				return nil, fmt.Errorf("unreadable response at %s: %v", respKey, err)
			}
			if !resp.OK {
				return &resp, fmt.Errorf("%s refused by monitor %s: %s", req.Op, resp.Leader, resp.Error)
			}
			return &resp, nil
		}
	}
	// Withdraw the unanswered request so a monitor starting later does not
	// carry out something its sender gave up on. If the revoke fails, the
	// request expires with its lease.
	_ = leases.Revoke(cli, lease.ID, nil)
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	leader, lerr := Leader(rctx, cli, layout)
	switch {
	case lerr != nil:
		return nil, fmt.Errorf("%w to the %s request in time (could not read the leader: %v)", ErrNoMonitor, req.Op, lerr)
	case leader == "":
		return nil, fmt.Errorf("%w to the %s request in time: no monitor is running (none holds %s)", ErrNoMonitor, req.Op, layout.ElectionPrefix())
	default:
		return nil, fmt.Errorf("%w to the %s request in time: monitor %q leads but did not answer", ErrNoMonitor, req.Op, leader)
	}
}

// Leader returns the id of the leading monitor, or "" if none campaigns.
func Leader(ctx context.Context, cli *clientv3.Client, layout schema.Layout) (string, error) {
	resp, err := cli.Get(ctx, layout.ElectionPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}
