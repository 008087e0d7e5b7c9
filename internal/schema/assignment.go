package schema

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// Assignment is the bucket -> node map stored as one JSON value at
// <prefix>/assignment:
//
//	{"version": 7, "buckets": {"00": "dtable-server-01", …, "ff": "dtable-server-02"},
//	 "epochs": {"00": 1, …, "ff": 6}}
//
// Version grows by one on every change. A bucket missing from "buckets" is
// unassigned. A bucket's epoch is the version at which it last changed
// owner: the fencing token a server and the proxy compare, so that a
// request routed by an older owner's tenure is recognised as such. Fields this code does not know are kept in Extra and written
// back unchanged, so newer writers can add fields (a per-bucket handoff
// state, load figures) without older readers losing them.
type Assignment struct {
	Version int64
	Owners  [bucket.Count]string // node id per bucket; "" = unassigned
	// Epochs holds, per assigned bucket, the version at which it last
	// changed owner; 0 where it is not recorded (an assignment written
	// before epochs existed, or an unassigned bucket).
	Epochs [bucket.Count]int64
	// Moving holds the moves in progress and Queued the planned moves
	// waiting for a slot (see handoff.go); nil when there are none.
	Moving map[bucket.Bucket]MoveState
	Queued map[bucket.Bucket]QueuedMove
	Extra  map[string]json.RawMessage
}

// The JSON fields besides version and buckets that this code reads; any
// other field is kept in Extra.
const (
	fieldEpochs = "epochs"
	fieldMoving = "moving"
	fieldQueued = "queued"
)

// Owned returns the buckets assigned to nodeID, in order.
func (a *Assignment) Owned(nodeID string) []bucket.Bucket {
	var out []bucket.Bucket
	for b, n := range a.Owners {
		if n == nodeID {
			out = append(out, bucket.Bucket(b))
		}
	}
	return out
}

// Counts returns how many buckets each node owns (unassigned ones are not counted).
func (a *Assignment) Counts() map[string]int {
	c := map[string]int{}
	for _, n := range a.Owners {
		if n != "" {
			c[n]++
		}
	}
	return c
}

// Clone returns a deep copy.
func (a *Assignment) Clone() *Assignment {
	c := *a
	c.Moving = maps.Clone(a.Moving)
	c.Queued = maps.Clone(a.Queued)
	if a.Extra != nil {
		c.Extra = make(map[string]json.RawMessage, len(a.Extra))
		for k, v := range a.Extra {
			c.Extra[k] = append(json.RawMessage(nil), v...)
		}
	}
	return &c
}

// Validate checks version and node ids.
func (a *Assignment) Validate() error {
	if a.Version < 1 {
		return fmt.Errorf("version %d: must be 1 or more", a.Version)
	}
	for b, n := range a.Owners {
		e := a.Epochs[b]
		if n == "" {
			if e != 0 {
				return fmt.Errorf("bucket %s: epoch %d for an unassigned bucket", bucket.Bucket(b), e)
			}
			continue
		}
		if err := ValidateNodeID(n); err != nil {
			return fmt.Errorf("bucket %s: %v", bucket.Bucket(b), err)
		}
		if e < 0 || e > a.Version {
			return fmt.Errorf("bucket %s: epoch %d: want 1 to the version (%d)", bucket.Bucket(b), e, a.Version)
		}
	}
	return a.validateHandoff()
}

// NextEpochs sets the epochs of a new assignment a that follows prev (nil
// for the first one): a bucket keeps prev's epoch while its owner stays the
// same, and takes a's version when its owner changes or prev recorded none.
func (a *Assignment) NextEpochs(prev *Assignment) {
	for b, n := range a.Owners {
		switch {
		case n == "":
			a.Epochs[b] = 0
		case prev != nil && prev.Owners[b] == n && prev.Epochs[b] > 0:
			a.Epochs[b] = prev.Epochs[b]
		default:
			a.Epochs[b] = a.Version
		}
	}
}

// Encode returns the JSON value: version, buckets, epochs, moving, queued,
// then any extra fields, each in a fixed order.
func (a *Assignment) Encode() []byte {
	buf := fmt.Appendf(nil, `{"version":%d,"buckets":{`, a.Version)
	first := true
	for b, n := range a.Owners {
		if n == "" {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		id, _ := json.Marshal(n)
		buf = fmt.Appendf(buf, `"%s":%s`, bucket.Bucket(b), id)
	}
	buf = append(buf, '}')
	epochs := map[bucket.Bucket]int64{}
	for b, e := range a.Epochs {
		if e != 0 {
			epochs[bucket.Bucket(b)] = e
		}
	}
	encodeBucketMap(&buf, fieldEpochs, epochs)
	encodeBucketMap(&buf, fieldMoving, a.Moving)
	encodeBucketMap(&buf, fieldQueued, a.Queued)
	keys := slices.Sorted(maps.Keys(a.Extra))
	for _, k := range keys {
		name, _ := json.Marshal(k)
		buf = fmt.Appendf(buf, ",%s:%s", name, a.Extra[k])
	}
	return append(buf, '}')
}

// ParseAssignment decodes and validates an assignment value. Errors say
// which field or bucket is wrong.
func ParseAssignment(value []byte) (*Assignment, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(value, &fields); err != nil {
		return nil, fmt.Errorf("not a JSON object: %v", err)
	}
	if fields == nil {
		return nil, fmt.Errorf("not a JSON object: null")
	}
	a := &Assignment{}
	rawVersion, ok := fields["version"]
	if !ok {
		return nil, fmt.Errorf(`field "version" is missing`)
	}
	if err := json.Unmarshal(rawVersion, &a.Version); err != nil {
		return nil, fmt.Errorf(`field "version" %s: want a whole number`, rawVersion)
	}
	rawBuckets, ok := fields["buckets"]
	if !ok {
		return nil, fmt.Errorf(`field "buckets" is missing`)
	}
	var owners map[string]string
	if err := json.Unmarshal(rawBuckets, &owners); err != nil || owners == nil {
		return nil, fmt.Errorf(`field "buckets": want an object of bucket -> node id strings`)
	}
	for name, node := range owners {
		b, err := bucket.Parse(name)
		if err != nil {
			return nil, fmt.Errorf(`field "buckets": %v`, err)
		}
		if a.Owners[b] != "" {
			return nil, fmt.Errorf(`field "buckets": bucket %s is listed twice (keys differ only in case)`, b)
		}
		if node == "" {
			return nil, fmt.Errorf(`field "buckets": bucket %s has an empty node id`, b)
		}
		a.Owners[b] = node
	}
	if raw, ok := fields[fieldEpochs]; ok {
		epochs, err := parseBucketMap[int64](fieldEpochs, raw)
		if err != nil {
			return nil, err
		}
		for b, e := range epochs {
			if e < 1 {
				return nil, fmt.Errorf(`field "epochs": bucket %s: epoch %d: want 1 or more`, b, e)
			}
			a.Epochs[b] = e
		}
	}
	if raw, ok := fields[fieldMoving]; ok {
		var err error
		if a.Moving, err = parseBucketMap[MoveState](fieldMoving, raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := fields[fieldQueued]; ok {
		var err error
		if a.Queued, err = parseBucketMap[QueuedMove](fieldQueued, raw); err != nil {
			return nil, err
		}
	}
	for k, v := range fields {
		if k == "version" || k == "buckets" || k == fieldEpochs || k == fieldMoving || k == fieldQueued {
			continue
		}
		if a.Extra == nil {
			a.Extra = map[string]json.RawMessage{}
		}
		a.Extra[k] = v
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return a, nil
}

// Move is one bucket changing owner: in a plan and in an operator's
// answer.
type Move struct {
	Bucket bucket.Bucket `json:"bucket"`
	From   string        `json:"from"` // "" = was unassigned
	To     string        `json:"to"`   // "" = now unassigned
	Reason string        `json:"reason,omitempty"`
}

// SalvageAssignment reads what it can from an assignment value that
// ParseAssignment rejected, so a repair moves only the buckets that were
// really lost: every entry with a valid bucket name and a valid node id is
// kept, and each problem is described. The result has no Extra fields and
// may have Version 0.
func SalvageAssignment(value []byte) (*Assignment, []string) {
	a := &Assignment{}
	var problems []string
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(value, &fields); err != nil || fields == nil {
		return a, []string{fmt.Sprintf("not a JSON object (%d bytes): nothing salvaged", len(value))}
	}
	if err := json.Unmarshal(fields["version"], &a.Version); err != nil || a.Version < 0 {
		problems = append(problems, fmt.Sprintf("version %s unreadable", fields["version"]))
		a.Version = 0
	}
	var entries map[string]json.RawMessage
	if err := json.Unmarshal(fields["buckets"], &entries); err != nil {
		return a, append(problems, `"buckets" is not an object: nothing salvaged`)
	}
	names := make([]string, 0, len(entries))
	for k := range entries {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		b, err := bucket.Parse(name)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		var node string
		if err := json.Unmarshal(entries[name], &node); err != nil || ValidateNodeID(node) != nil {
			problems = append(problems, fmt.Sprintf("bucket %s: invalid owner %s", b, entries[name]))
			continue
		}
		if a.Owners[b] != "" && a.Owners[b] != node {
			problems = append(problems, fmt.Sprintf("bucket %s: listed twice with different owners", b))
			a.Owners[b] = ""
			continue
		}
		a.Owners[b] = node
	}
	salvageEpochs(a, fields[fieldEpochs])
	return a, problems
}

// salvageEpochs keeps every readable epoch of a salvaged bucket; a bucket
// without one gets a new epoch when the repair is written (NextEpochs).
func salvageEpochs(a *Assignment, raw json.RawMessage) {
	var epochs map[string]json.RawMessage
	if json.Unmarshal(raw, &epochs) != nil {
		return
	}
	for name, v := range epochs {
		b, err := bucket.Parse(name)
		var e int64
		if err != nil || json.Unmarshal(v, &e) != nil || a.Owners[b] == "" || e < 1 || e > a.Version {
			continue
		}
		a.Epochs[b] = e
	}
}
