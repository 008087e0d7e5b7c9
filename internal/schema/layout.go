// Package schema defines the cluster state kept in etcd: where it lives (the
// key layout, a public interface documented in README.md), what the values
// look like, and how they are checked. It does no I/O.
package schema

import (
	"fmt"
	"strings"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// DefaultPrefix is the etcd key prefix used when none is configured.
const DefaultPrefix = "/dtable-cluster"

// Layout names the etcd keys of one cluster. Every key lives under Prefix.
type Layout struct {
	Prefix string // normalized: starts with "/", no trailing "/"
}

// NewLayout checks and normalizes a key prefix ("" means DefaultPrefix).
func NewLayout(prefix string) (Layout, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	p := strings.TrimRight(prefix, "/")
	if !strings.HasPrefix(p, "/") || p == "" {
		return Layout{}, fmt.Errorf("invalid etcd prefix %q: it must start with '/' and name a path, e.g. %q", prefix, DefaultPrefix)
	}
	if strings.ContainsAny(p, " \t\n") || strings.Contains(p, "//") {
		return Layout{}, fmt.Errorf("invalid etcd prefix %q: no whitespace or empty path segments", prefix)
	}
	return Layout{Prefix: p}, nil
}

// Root is the prefix under which everything of the cluster lives, with a
// trailing slash, for prefix reads and watches.
func (l Layout) Root() string { return l.Prefix + "/" }

// NodesPrefix is the prefix of the node registrations.
func (l Layout) NodesPrefix() string { return l.Prefix + "/nodes/" }

// NodeKey is the key a registrar writes for one node, attached to its lease.
func (l Layout) NodeKey(nodeID string) string { return l.NodesPrefix() + nodeID }

// AssignmentKey holds the bucket -> node assignment; only the monitor writes it.
func (l Layout) AssignmentKey() string { return l.Prefix + "/assignment" }

// SettingsKey holds the operator's drains, pins and auto-rebalance switch.
func (l Layout) SettingsKey() string { return l.Prefix + "/settings" }

// ElectionPrefix is where monitors campaign for leadership
// (concurrency.Election keys: <prefix>/monitor/election/<lease id>).
func (l Layout) ElectionPrefix() string { return l.Prefix + "/monitor/election" }

// RequestsPrefix is where operator requests to the leading monitor are
// written (<prefix>/requests/<id>), each under a short lease.
func (l Layout) RequestsPrefix() string { return l.Prefix + "/requests/" }

// ResponsesPrefix is where the leading monitor answers them
// (<prefix>/responses/<id>), each under a short lease.
func (l Layout) ResponsesPrefix() string { return l.Prefix + "/responses/" }

// NodeIDFromKey returns the node id of a node key, or false if key is not one.
func (l Layout) NodeIDFromKey(key string) (string, bool) {
	id, ok := strings.CutPrefix(key, l.NodesPrefix())
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", false
	}
	return id, true
}

// ReleasedPrefix is where old owners acknowledge releases
// (<prefix>/released/<bucket>), each under the old owner's lease.
func (l Layout) ReleasedPrefix() string { return l.Prefix + "/released/" }

// ReleasedKey is the release acknowledgement of one bucket.
func (l Layout) ReleasedKey(b bucket.Bucket) string { return l.ReleasedPrefix() + b.String() }

// BucketFromReleasedKey returns the bucket of a released key, or false if
// key is not one.
func (l Layout) BucketFromReleasedKey(key string) (bucket.Bucket, bool) {
	name, ok := strings.CutPrefix(key, l.ReleasedPrefix())
	if !ok || len(name) != 2 {
		return 0, false
	}
	b, err := bucket.Parse(name)
	return b, err == nil
}
