// Package contract is the wire format between this project's parts and a
// dtable-server, as docs/server-contract.md specifies it: the registrar's
// notification to its server, the headers the proxy adds to every request,
// and the server's "not my bucket" answer. The registrar, the proxy and the
// stand-in server (internal/fakeserver) share these types so that they
// cannot drift apart.
package contract

import (
	"maps"
	"slices"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// Headers the proxy sets on every upstream request (client-sent values are
// replaced).
const (
	HeaderBucket      = "X-Dtable-Bucket"             // two hex digits
	HeaderBucketEpoch = "X-Dtable-Bucket-Epoch"       // the bucket's epoch under the assignment the proxy routed by
	HeaderVersion     = "X-Dtable-Assignment-Version" // that assignment's version
)

// StatusNotMine is the server's answer to a request for a bucket it does
// not hold at the request's epoch (releasing, fenced, not yet acquired, or
// another epoch): 421 Misdirected Request. The proxy retries such a
// request by its newest assignment within its hold window.
const StatusNotMine = 421

// NotMine is the JSON body of a StatusNotMine answer.
type NotMine struct {
	Node   string `json:"node"`
	Bucket string `json:"bucket"`
	Epoch  int64  `json:"epoch"`  // the epoch the server holds the bucket at; 0 if it does not
	Reason string `json:"reason"` // not_held, releasing, fenced, epoch
}

// Protocol is the notification protocol version the registrar speaks.
const Protocol = 2

// Notification is the JSON body the registrar POSTs to its server's
// notify URL. Each one carries the whole desired state, so a lost, late or
// repeated one does no harm. Protocol 1 servers read only NodeID, Version,
// PreviousVersion, Gained, Lost and Buckets.
type Notification struct {
	Protocol int    `json:"protocol"`
	NodeID   string `json:"node_id"`
	// Seq grows with every message the registrar sends (it starts from
	// the wall clock in nanoseconds, so a restarted registrar continues
	// above its predecessor). A server ignores a state message or a
	// heartbeat numbered below its last fence: one sent before the fence
	// but delivered after it must not give buckets back.
	Seq int64 `json:"seq"`
	// Version is the assignment version this state is taken from;
	// PreviousVersion the one the last accepted notification carried (0
	// for the first after the registrar started).
	Version         int64 `json:"version"`
	PreviousVersion int64 `json:"previous_version"`
	// Buckets are the buckets the node owns ("00".."ff"), Gained and Lost
	// the changes since PreviousVersion.
	Buckets []string `json:"buckets"`
	Gained  []string `json:"gained"`
	Lost    []string `json:"lost"`
	// Epochs are the owned buckets' epochs: serve a bucket only at this
	// epoch. A bucket being released is not in it.
	Epochs map[string]int64 `json:"epochs"`
	// Release lists the buckets to give up now: stop new operations, close
	// their clients, save, unload, then answer 2xx.
	Release map[string]ReleaseOrder `json:"release,omitempty"`
	// ServeForMS: serve until this message's receipt plus this many
	// milliseconds, unless a later message renews it; then fence. 0: no
	// deadline is known (no lease confirmed yet): hold nothing new.
	ServeForMS int64 `json:"serve_for_ms"`
	// Fence: drop every bucket now, without saving to shared storage.
	Fence  bool   `json:"fence,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Heartbeat: this message only renews ServeForMS; it carries no
	// state (sent beside a state message that may wait for a release).
	Heartbeat bool `json:"heartbeat,omitempty"`
}

// ReleaseOrder names the move a release is for; the server may log it.
type ReleaseOrder struct {
	Epoch int64  `json:"epoch"` // the move's epoch, as in the released/ key
	To    string `json:"to"`
}

// DesiredState fills n's Buckets, Epochs and Release from an assignment
// for node n.NodeID: a bucket the node owns and is not handing off is held
// at its epoch; a bucket it is handing off is to be released. Gained and
// Lost compare the held buckets with prevHeld (nil: none).
func (n *Notification) DesiredState(a *schema.Assignment, prevHeld map[string]int64) {
	n.Protocol = Protocol
	n.Buckets, n.Gained, n.Lost = []string{}, []string{}, []string{}
	n.Epochs = map[string]int64{}
	n.Release = nil
	if a != nil {
		n.Version = a.Version
		for b, owner := range a.Owners {
			if owner != n.NodeID {
				continue
			}
			name := bucket.Bucket(b).String()
			if m, moving := a.Moving[bucket.Bucket(b)]; moving {
				if n.Release == nil {
					n.Release = map[string]ReleaseOrder{}
				}
				n.Release[name] = ReleaseOrder{Epoch: m.Epoch, To: m.To}
				continue
			}
			n.Buckets = append(n.Buckets, name)
			n.Epochs[name] = a.Epochs[b]
		}
	}
	for name := range n.Epochs {
		if _, had := prevHeld[name]; !had {
			n.Gained = append(n.Gained, name)
		}
	}
	for name := range prevHeld {
		if _, has := n.Epochs[name]; !has {
			n.Lost = append(n.Lost, name)
		}
	}
	slices.Sort(n.Gained)
	slices.Sort(n.Lost)
}

// Held returns a copy of the buckets the notification says to hold.
func (n *Notification) Held() map[string]int64 { return maps.Clone(n.Epochs) }
