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
	nodeIDVal  any    // nodeID as a placeholder value, converted once per table (setRoutePlaceholders)
	dial       string // host:port of local_node_url
	scheme     string // "http" or "https"
	pathPrefix string // local_node_url's path without the trailing "/"; "" for "/"
	requests   prometheus.Counter
	follower   *follower // whose table this route is in

	// epoch is the bucket's epoch (Assignment.Epochs), the fencing token
	// a server compares with X-Dtable-Bucket-Epoch; epochStr is the same,
	// formatted once per table so the request path does not format it.
	epoch    int64
	epochStr string
	// moving: the bucket is handing off from nodeID to moveTo (since
	// moveSince, the monitor's clock). Its requests are held until the
	// move commits or aborts, and its streams were closed when it started.
	moving    bool
	moveTo    string
	moveSince time.Time
	// since is when the route took its state: the build time of the
	// first table in which it was as it is (see carryChannels). A request
	// for a bucket whose owner just left the registry is held only while
	// that is recent.
	since time.Time
	// changed is closed when a newer table changes this bucket's route
	// (see sameState); requests waiting for the bucket select on it. Tables
	// that leave the route as it was share the channel, so a table change
	// wakes only the waiters of the buckets it changes.
	changed chan struct{}
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
	// The request could name another base than the one the proxy reads:
	// dot segments, encoded slashes, empty segments before the UUID,
	// conflicting UUIDs (see uuidFinder).
	reasonAmbiguous = "ambiguous_request"
	reasonNoNode    = "no_node"
	// The route changed between the handler and the dial more often than
	// maxReroutes, or after part of the body was sent (else the request is
	// sent again by the newest table).
	reasonMoved = "moved_during_request"
	// reverse_proxy ended with 503 and no answer to pass on (the owner
	// marked down by passive health checks, max_requests).
	reasonUpstreamUnavailable = "upstream_unavailable"
	// A request for a moving bucket was held and the move neither
	// committed nor aborted within handoff_wait.
	reasonHandoff = "handoff_in_progress"
	// Too many requests were held already (handoff_max_held_per_bucket,
	// handoff_max_held).
	reasonHoldOverflow = "hold_overflow"
	// The client went away while its request was held.
	reasonHoldCancelled = "hold_cancelled"
	// The owner answered 421 (not my bucket) until handoff_wait passed, or
	// the request's body was too large to send again.
	reasonNotOwner = "not_owner"
)

// buildTable turns a snapshot of fw's cluster into routes. prev is the
// table it will replace (nil for the first): a route that stays as it was
// keeps prev's changed channel, every other route gets a new one, and
// install closes the replaced channels once the new table is published.
func buildTable(fw *follower, snap *watch.Snapshot, prev *routeTable) *routeTable {
	t := &routeTable{builtAt: time.Now(), snap: snap}
	if snap == nil || snap.Assignment == nil {
		for b := range t.routes {
			t.routes[b] = route{bucket: bucket.Bucket(b), reason: reasonNoAssignment, follower: fw}
		}
		t.carryChannels(prev)
		return t
	}
	a := snap.Assignment
	t.version = a.Version
	t.versionStr = strconv.FormatInt(t.version, 10)
	endpoints := map[string]route{}
	for id, n := range snap.Nodes {
		endpoints[id] = nodeRoute(n)
	}
	epochStrs := map[int64]string{} // buckets share epochs; format each once
	first := map[string]*route{}    // each routable owner's first bucket
	for b := range t.routes {
		id := a.Owners[b]
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
		if e := a.Epochs[b]; e > 0 {
			s, ok := epochStrs[e]
			if !ok {
				s = strconv.FormatInt(e, 10)
				epochStrs[e] = s
			}
			r.epoch, r.epochStr = e, s
		}
		if m, moving := a.Moving[bucket.Bucket(b)]; moving {
			r.moving, r.moveTo, r.moveSince = true, m.To, m.Since
		}
		t.routes[b] = r
		if _, seen := first[id]; r.ok && !seen {
			first[id] = &t.routes[b]
		}
	}
	for _, id := range slices.Sorted(maps.Keys(first)) {
		t.anyNode = append(t.anyNode, first[id])
	}
	t.carryChannels(prev)
	return t
}

// carryChannels gives each route prev's changed channel and since if the
// route is the same in both tables, else a new channel and this table's
// build time.
func (t *routeTable) carryChannels(prev *routeTable) {
	for b := range t.routes {
		r := &t.routes[b]
		if prev != nil && prev.routes[b].changed != nil && prev.routes[b].sameState(r) {
			r.changed, r.since = prev.routes[b].changed, prev.routes[b].since
		} else {
			r.changed, r.since = make(chan struct{}), t.builtAt
		}
	}
}

// nodeRoute splits a node's local_node_url into what the proxy needs.
func nodeRoute(n schema.Node) route {
	r := route{nodeID: n.NodeID, nodeIDVal: n.NodeID, requests: requestsTotal.WithLabelValues(n.NodeID)}
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

// sameState reports whether two routes of one bucket would treat a
// request alike: same target, epoch and handoff state (a re-targeted move,
// From -> To changing only To, counts as the same: its requests stay held).
func (r *route) sameState(o *route) bool {
	return r.sameTarget(o) && r.reason == o.reason && r.epoch == o.epoch && r.moving == o.moving
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
