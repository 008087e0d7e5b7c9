package schema

import (
	"encoding/json"
	"fmt"
	"net/url"
)

// Node is one dtable-server's registration, stored as JSON at
// <prefix>/nodes/<node_id> and attached to the registrar's lease.
type Node struct {
	NodeID string `json:"node_id"`
	// NodeURL is where end users' browsers reach the server.
	NodeURL string `json:"node_url"`
	// LocalNodeURL is where the proxy reaches the server (intranet).
	LocalNodeURL string `json:"local_node_url"`
	// RegisteredAt is when the registrar wrote this value (RFC 3339, informative).
	RegisteredAt string `json:"registered_at,omitempty"`
	// State is "" for an active node, or NodeLeaving while the node hands
	// its buckets off before a clean stop: it receives no bucket and the
	// monitor moves its buckets away through the handoff.
	State string `json:"state,omitempty"`
}

// NodeLeaving is the State of a node that is about to stop.
const NodeLeaving = "leaving"

// Leaving reports whether the node is handing its buckets off to stop.
func (n Node) Leaving() bool { return n.State == NodeLeaving }

// ValidateNodeID checks that id can name a node: 1..128 characters of
// letters, digits, '.', '_', '-' or ':'. It becomes the last segment of an
// etcd key and a metrics label, so nothing else is allowed.
func ValidateNodeID(id string) error {
	if id == "" {
		return fmt.Errorf("node id is empty")
	}
	if len(id) > 128 {
		return fmt.Errorf("node id %.20q… is %d characters long, at most 128 allowed", id, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' || c == ':') {
			return fmt.Errorf("node id %q has %q at position %d; allowed are letters, digits, '.', '_', '-', ':'", id, c, i+1)
		}
	}
	return nil
}

// ValidateNodeURL checks that s is an absolute http or https URL with a host.
// field names the setting in error messages ("node_url", "local_node_url").
func ValidateNodeURL(field, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", field)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%s %q is not a URL: %v", field, s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%s %q must start with http:// or https://", field, s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%s %q has no host", field, s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%s %q must not have a query or fragment", field, s)
	}
	return nil
}

// Validate checks every field of a registration.
func (n Node) Validate() error {
	if err := ValidateNodeID(n.NodeID); err != nil {
		return err
	}
	if err := ValidateNodeURL("node_url", n.NodeURL); err != nil {
		return err
	}
	if n.State != "" && n.State != NodeLeaving {
		return fmt.Errorf("state %q: want %q or none", n.State, NodeLeaving)
	}
	return ValidateNodeURL("local_node_url", n.LocalNodeURL)
}

// SameEndpoints reports whether two registrations name the same server.
func (n Node) SameEndpoints(o Node) bool {
	return n.NodeID == o.NodeID && n.NodeURL == o.NodeURL && n.LocalNodeURL == o.LocalNodeURL
}

// ParseNode decodes and validates the value of the node key for nodeID.
func ParseNode(nodeID string, value []byte) (Node, error) {
	var n Node
	if err := json.Unmarshal(value, &n); err != nil {
		return Node{}, fmt.Errorf("not a JSON node registration: %v", err)
	}
	if err := n.Validate(); err != nil {
		return Node{}, err
	}
	if n.NodeID != nodeID {
		return Node{}, fmt.Errorf("node_id %q does not match the key's node id %q", n.NodeID, nodeID)
	}
	return n, nil
}

// Encode returns the JSON value of a registration.
func (n Node) Encode() []byte {
	b, err := json.Marshal(n)
	if err != nil { // a struct of strings always marshals
		panic(err)
	}
	return b
}
