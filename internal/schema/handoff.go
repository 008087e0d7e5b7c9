package schema

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// MoveState is a move in progress, in the assignment's "moving" field:
//
//	"moving": {"0c": {"from": "n1", "to": "n2", "epoch": 12, "since": "2026-11-21T10:00:00Z"}}
//
// While a bucket moves, Owners keeps From: the old owner serves until it
// has released the bucket, and the move commits only then (see
// docs/server-contract.md).
type MoveState struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Epoch is the assignment version that started the move; the old
	// owner's release acknowledgement names it.
	Epoch int64 `json:"epoch"`
	// Since is when the move started, for the handoff timeout and for
	// operators. A re-target keeps it: the timeout measures the old
	// owner's release, which a new target does not restart.
	Since time.Time `json:"since"`
	// Reason says why the bucket moves (planner.Reason*), for operators.
	Reason string `json:"reason,omitempty"`
}

// QueuedMove is a planned move waiting for a slot under the throttle, in
// the assignment's "queued" field, so that a monitor failover resumes it.
type QueuedMove struct {
	To     string `json:"to"`
	Reason string `json:"reason,omitempty"`
	// AbortedVersion is the assignment version that aborted the bucket's
	// last handoff because its old owner did not release in time (0:
	// none since it was queued). It lets a caller that waits for a move
	// (the monitor CLI's -wait) tell an aborted move, which waits out the
	// cooldown here, from one still waiting for its first slot.
	AbortedVersion int64 `json:"aborted_version,omitempty"`
}

// Released acknowledges that the old owner has released a bucket, stored
// at <prefix>/released/<bucket> under the old owner's lease:
//
//	{"from": "n1", "epoch": 12}
type Released struct {
	From  string `json:"from"`
	Epoch int64  `json:"epoch"`
}

// Matches reports whether r acknowledges the move m.
func (r Released) Matches(m MoveState) bool { return r.From == m.From && r.Epoch == m.Epoch }

// ParseReleased decodes and validates a release acknowledgement.
func ParseReleased(value []byte) (Released, error) {
	var r Released
	if err := json.Unmarshal(value, &r); err != nil {
		return Released{}, fmt.Errorf("not a JSON release acknowledgement: %v", err)
	}
	if err := ValidateNodeID(r.From); err != nil {
		return Released{}, fmt.Errorf("from: %v", err)
	}
	if r.Epoch < 1 {
		return Released{}, fmt.Errorf("epoch %d: want 1 or more", r.Epoch)
	}
	return r, nil
}

// Encode returns the JSON value of a release acknowledgement.
func (r Released) Encode() []byte {
	b, _ := json.Marshal(r) // a string and a number always marshal
	return b
}

// Effective returns who will own b once the moves in progress and the
// queued ones are done: what a planner balances.
func (a *Assignment) Effective(b bucket.Bucket) string {
	if m, ok := a.Moving[b]; ok {
		return m.To
	}
	if q, ok := a.Queued[b]; ok {
		return q.To
	}
	return a.Owners[b]
}

// validateHandoff checks the moving and queued fields against the owners.
func (a *Assignment) validateHandoff() error {
	for b, m := range a.Moving {
		switch {
		case a.Owners[b] == "" || m.From != a.Owners[b]:
			return fmt.Errorf("moving bucket %s: from %q is not its owner %q", b, m.From, a.Owners[b])
		case ValidateNodeID(m.To) != nil:
			return fmt.Errorf("moving bucket %s: to: %v", b, ValidateNodeID(m.To))
		case m.To == m.From:
			return fmt.Errorf("moving bucket %s: from and to are both %q", b, m.To)
		case m.Epoch < 1 || m.Epoch > a.Version:
			return fmt.Errorf("moving bucket %s: epoch %d: want 1 to the version (%d)", b, m.Epoch, a.Version)
		case m.Since.IsZero():
			return fmt.Errorf("moving bucket %s: since is missing", b)
		}
	}
	for b, q := range a.Queued {
		if _, moving := a.Moving[b]; moving {
			return fmt.Errorf("queued bucket %s is also moving", b)
		}
		if err := ValidateNodeID(q.To); err != nil {
			return fmt.Errorf("queued bucket %s: to: %v", b, err)
		}
		if q.To == a.Owners[b] {
			return fmt.Errorf("queued bucket %s: already owned by %q", b, q.To)
		}
		if q.AbortedVersion < 0 || q.AbortedVersion > a.Version {
			return fmt.Errorf("queued bucket %s: aborted_version %d: want 0 (none) to the version (%d)", b, q.AbortedVersion, a.Version)
		}
	}
	return nil
}

// parseBucketMap decodes a JSON object of bucket -> T.
func parseBucketMap[T any](field string, raw json.RawMessage) (map[bucket.Bucket]T, error) {
	var m map[string]T
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, fmt.Errorf("field %q: want an object keyed by bucket", field)
	}
	out := make(map[bucket.Bucket]T, len(m))
	for name, v := range m {
		b, err := bucket.Parse(name)
		if err != nil {
			return nil, fmt.Errorf("field %q: %v", field, err)
		}
		if _, dup := out[b]; dup {
			return nil, fmt.Errorf("field %q: bucket %s is listed twice (keys differ only in case)", field, b)
		}
		out[b] = v
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// encodeBucketMap writes ,"field":{...} in bucket order; nothing if empty.
func encodeBucketMap[T any](buf *[]byte, field string, m map[bucket.Bucket]T) {
	if len(m) == 0 {
		return
	}
	keys := make([]bucket.Bucket, 0, len(m))
	for b := range m {
		keys = append(keys, b)
	}
	slices.Sort(keys)
	*buf = fmt.Appendf(*buf, `,%q:{`, field)
	for i, b := range keys {
		if i > 0 {
			*buf = append(*buf, ',')
		}
		v, _ := json.Marshal(m[b])
		*buf = fmt.Appendf(*buf, `"%s":%s`, b, v)
	}
	*buf = append(*buf, '}')
}
