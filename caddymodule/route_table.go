package caddymodule

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// route is where one bucket's requests go. Routes live inside an immutable
// routeTable, so a *route stays valid as long as anyone holds it.
type route struct {
	bucket bucket.Bucket
	ok     bool   // false: not routable now; reason says why
	reason string // for 503 bodies and the routing_errors metric

	nodeID     string
	dial       string // host:port of local_node_url
	scheme     string // "http" or "https"
	pathPrefix string // local_node_url's path without the trailing "/"; "" for "/"
	requests   prometheus.Counter
	follower   *follower // whose table this route is in
}

// routeTable is the routing state built from one cluster snapshot.
type routeTable struct {
	version    int64  // assignment version; 0 if none
	versionStr string // the same, formatted once for the fencing header
	routes     [bucket.Count]route
	// anyNode lists the routable owners, for requests that carry no UUID:
	// a registered node that owns buckets in the current assignment.
	anyNode []*route
	builtAt time.Time
	snap    *watch.Snapshot
}

// Reasons a request cannot be routed (also the routing_errors metric's
// "reason" label).
const (
	reasonNoAssignment  = "no_assignment"
	reasonUnassigned    = "bucket_unassigned"
	reasonNotRegistered = "owner_not_registered"
	reasonBadNodeURL    = "owner_url_invalid"
	reasonMissingUUID   = "missing_uuid"
	reasonMalformedUUID = "malformed_uuid"
	reasonNoNode        = "no_node"
	reasonMoved         = "moved_during_request"
)

// buildTable turns a snapshot of fw's cluster into routes.
func buildTable(fw *follower, snap *watch.Snapshot) *routeTable {
	t := &routeTable{builtAt: time.Now(), snap: snap}
	if snap == nil || snap.Assignment == nil {
		for b := range t.routes {
			t.routes[b] = route{bucket: bucket.Bucket(b), reason: reasonNoAssignment, follower: fw}
		}
		return t
	}
	t.version = snap.Assignment.Version
	t.versionStr = strconv.FormatInt(t.version, 10)
	endpoints := map[string]route{}
	for id, n := range snap.Nodes {
		endpoints[id] = nodeRoute(n)
	}
	first := map[string]*route{} // each routable owner's first bucket
	for b := range t.routes {
		id := snap.Assignment.Owners[b]
		r := route{nodeID: id}
		switch ep, registered := endpoints[id]; {
		case id == "":
			r.reason = reasonUnassigned
		case !registered:
			r.reason = reasonNotRegistered
		default:
			r = ep
		}
		r.bucket, r.follower = bucket.Bucket(b), fw
		t.routes[b] = r
		if _, seen := first[id]; r.ok && !seen {
			first[id] = &t.routes[b]
		}
	}
	for _, id := range slices.Sorted(maps.Keys(first)) {
		t.anyNode = append(t.anyNode, first[id])
	}
	return t
}

// nodeRoute splits a node's local_node_url into what the proxy needs.
func nodeRoute(n schema.Node) route {
	r := route{nodeID: n.NodeID, requests: requestsTotal.WithLabelValues(n.NodeID)}
	u, err := url.Parse(n.LocalNodeURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		r.reason = reasonBadNodeURL
		return r
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	r.ok = true
	r.dial = net.JoinHostPort(u.Hostname(), port)
	r.scheme = u.Scheme
	r.pathPrefix = strings.TrimRight(u.Path, "/")
	return r
}

// sameTarget reports whether two routes send to the same place.
func (r *route) sameTarget(o *route) bool {
	return r.ok == o.ok && r.nodeID == o.nodeID && r.dial == o.dial && r.pathPrefix == o.pathPrefix && r.scheme == o.scheme
}

// describe is the 503 body for an unroutable bucket.
func (r *route) describe(version int64) string {
	switch r.reason {
	case reasonNoAssignment:
		return fmt.Sprintf("bucket %s: no assignment yet (no monitor has written one, or etcd has not been read yet)", r.bucket)
	case reasonUnassigned:
		return fmt.Sprintf("bucket %s: not assigned to any node in assignment version %d", r.bucket, version)
	case reasonNotRegistered:
		return fmt.Sprintf("bucket %s: its owner %s (assignment version %d) is not registered (down, or its registration expired)", r.bucket, r.nodeID, version)
	case reasonBadNodeURL:
		return fmt.Sprintf("bucket %s: its owner %s has an unusable local_node_url", r.bucket, r.nodeID)
	}
	return fmt.Sprintf("bucket %s: not routable (%s)", r.bucket, r.reason)
}
