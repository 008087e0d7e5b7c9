package caddymodule

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/etcdclient"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// watchProgressInterval is how often an idle watch checks etcd is there;
// three missed answers count as disconnected. Tests shorten it.
var watchProgressInterval = 5 * time.Second

// followers holds one follower per (etcd settings, prefix), shared by
// every handler of every loaded config: a config reload provisions the new
// handlers (LoadOrNew finds the running follower) before it cleans up the
// old ones (Delete), so a reload neither reconnects nor re-lists.
var followers = caddy.NewUsagePool()

// followerSeq numbers the followers in the order they start.
var followerSeq atomic.Uint64

// acquireFollower returns the shared follower for cfg, starting it if none
// runs; release it with followers.Delete(key) in Cleanup. It never waits for
// etcd, so `caddy validate` does not block on it.
func acquireFollower(cfg EtcdConfig) (*follower, string, error) {
	opts, layout, err := cfg.resolve()
	if err != nil {
		return nil, "", err
	}
	key := opts.PoolKey() + "\x00" + layout.Prefix
	v, _, err := followers.LoadOrNew(key, func() (caddy.Destructor, error) { return startFollower(opts, layout) })
	if err != nil {
		return nil, "", err
	}
	return v.(*follower), key, nil
}

// followerRef is a module's hold on its shared follower: taken in Provision,
// released in Cleanup.
type followerRef struct {
	follower *follower
	poolKey  string
}

// join registers the metrics in the config's registry and acquires the
// shared follower for cfg (starting it if none runs; never waiting for etcd).
func (r *followerRef) join(ctx caddy.Context, cfg EtcdConfig) error {
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	var err error
	r.follower, r.poolKey, err = acquireFollower(cfg)
	return err
}

// release lets go of the shared follower; the last user stops it.
func (r *followerRef) release() error {
	if r.poolKey == "" {
		return nil
	}
	_, err := followers.Delete(r.poolKey)
	r.poolKey = ""
	return err
}

// forEachFollower calls fn for every running shared follower.
func forEachFollower(fn func(*follower)) {
	followers.Range(func(_, v any) bool {
		fn(v.(*follower))
		return true
	})
}

// follower follows one cluster in etcd and keeps its routing table.
type follower struct {
	layout    schema.Layout
	endpoints []string
	etcdLabel string // the endpoints as the metrics label them (etcdLabel)
	seq       uint64 // order of start, to list followers in a stable order
	cli       *clientv3.Client
	watcher   *watch.Watcher
	log       *zap.Logger

	// table is replaced whole on every change; requests read it without locks.
	table atomic.Pointer[routeTable]
	// rr spreads requests without a UUID over the nodes.
	rr atomic.Uint64

	// streamsMu orders stream registration against table changes and
	// Destruct, so a WebSocket opened to a bucket's old owner is always
	// closed.
	streamsMu sync.Mutex
	streams   [bucket.Count]map[*stream]struct{}
	destroyed bool // Destruct ran: no table change will close streams any more

	// For the status page (GET /events): the moves this proxy saw, the
	// viewers' shared state and its cached leading monitor.
	moves  *moveHistory
	live   *statusHub
	leader leaderCache // used by live's goroutine only
	loads  loadCache   // likewise
	// load counts each bucket's traffic; the publisher (reportLoad)
	// writes it to <prefix>/load/<id> as configured by the handler
	// registered last (loadCfg; nil until one is), woken by loadWake.
	load     loadCounters
	loadCfg  atomic.Pointer[loadReportSettings]
	loadMu   sync.Mutex            // guards loadRegs
	loadRegs []*loadReportSettings // each provisioned handler's, in order (registerLoadReport)
	loadWake chan struct{}
	loadDone chan struct{}

	stop chan struct{}
	done chan struct{}
}

// stream is an open WebSocket (or other upgraded) connection.
type stream struct {
	route  *route
	cancel context.CancelFunc
}

func startFollower(opts etcdclient.Options, layout schema.Layout) (*follower, error) {
	log := caddy.Log().Named("dtable_bucket").With(zap.String("prefix", layout.Prefix))
	cli, err := opts.New(log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	if err != nil {
		return nil, err
	}
	fw := &follower{
		layout: layout, endpoints: opts.Endpoints, etcdLabel: etcdLabel(opts.Endpoints), seq: followerSeq.Add(1), cli: cli, log: log,
		watcher: watch.New(watch.Config{Client: cli, Layout: layout, Logger: log.Named("watch"),
			ProgressInterval: watchProgressInterval}),
		stop: make(chan struct{}), done: make(chan struct{}),
		loadWake: make(chan struct{}, 1), loadDone: make(chan struct{}),
	}
	fw.table.Store(buildTable(fw, nil, nil))
	fw.moves = newMoveHistory()
	fw.live = newStatusHub(statusRefreshInterval, fw.liveState)
	fw.watcher.Start()
	go fw.follow()
	go fw.reportLoad()
	log.Info("following the cluster in etcd", zap.Strings("etcd", opts.Endpoints))
	return fw, nil
}

// Destruct stops following etcd; the pool calls it when no config uses
// the cluster any more. It closes the follower's open streams: once it
// stops, no table change would close them when their bucket moves, and a
// WebSocket kept across a reload (stream_close_delay) would go on
// reaching the old owner. A reload that keeps the etcd settings keeps the
// follower, and its streams; one that changes them (endpoints, their
// order, TLS, auth, prefix) starts another follower and ends these
// streams: the clients reconnect through the new one.
func (fw *follower) Destruct() error {
	fw.streamsMu.Lock()
	fw.destroyed = true
	closed := 0
	for b := range fw.streams {
		for s := range fw.streams[b] {
			s.cancel()
			closed++
		}
		fw.streams[b] = nil
	}
	fw.streamsMu.Unlock()
	if closed > 0 {
		streamsClosedTotal.Add(float64(closed))
		fw.log.Info("closed the WebSocket streams of a follower no config uses any more (its etcd settings changed); clients reconnect",
			zap.Int("streams_closed", closed))
	}
	close(fw.stop)
	<-fw.done
	fw.live.close() // ends the status page streams
	<-fw.loadDone   // it revokes the load key's lease: needs the client
	fw.watcher.Stop()
	return fw.cli.Close()
}

// follow rebuilds the routing table on every snapshot and, while etcd is
// unreachable, says every so often that routing goes on with the last
// known assignment.
func (fw *follower) follow() {
	defer close(fw.done)
	sub := fw.watcher.Subscribe()
	defer sub.Close()
	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-fw.stop:
			return
		case snap := <-sub.C:
			prev := fw.table.Load()
			fw.install(buildTable(fw, snap, prev))
			fw.moves.record(prev.snap, snap, time.Now())
			fw.live.changed()
		case <-ticker.C:
			if st := fw.watcher.Status(); !st.Connected {
				t := fw.table.Load()
				fw.log.Warn("etcd unreachable: routing with the last known assignment",
					zap.Int64("version", t.version), zap.Duration("unchanged_for", time.Since(t.builtAt).Round(time.Second)),
					zap.Time("last_contact", st.LastContact), zap.String("last_error", st.LastError))
			}
		}
	}
}

// install publishes a new table (built on the current one: only this
// goroutine installs), then, for every bucket whose route changed, wakes
// the requests waiting for it (by closing its changed channel) and closes
// its streams that the new route does not allow: every stream of a bucket
// whose move starts (the old owner is about to release it and closes its
// own socket.io clients), and every stream to a node that no longer owns
// the bucket. Other streams stay open, also when only the bucket's epoch
// changed (an assignment that gains epochs; the owner keeps serving).
func (fw *follower) install(next *routeTable) {
	fw.streamsMu.Lock()
	prev := fw.table.Swap(next)
	var changed, closed int
	var outcomes handoffOutcomes
	var lost unroutableBuckets
	for b := range bucket.Count {
		p, n := &prev.routes[b], &next.routes[b]
		if p.changed == n.changed {
			continue
		}
		close(p.changed)
		changed++
		outcomes.add(p, n)
		lost.add(p, n)
		for s := range fw.streams[b] {
			if n.moving || !s.route.sameTarget(n) {
				s.cancel()
				delete(fw.streams[b], s)
				closed++
			}
		}
	}
	fw.streamsMu.Unlock()
	streamsClosedTotal.Add(float64(closed))
	outcomes.record()
	if prev.version != next.version || changed > 0 {
		fw.log.Info("routing table updated", zap.Int64("version", next.version), zap.Int64("previous_version", prev.version),
			zap.Int("buckets_changed", changed), zap.Int("streams_closed", closed), zap.Int("nodes", len(next.anyNode)),
			zap.Int("moves_started", outcomes.started), zap.Int("handoffs_committed", outcomes.committed),
			zap.Int("handoffs_aborted", outcomes.aborted), zap.Int("handoffs_forced", outcomes.forced))
	}
	lost.log(fw.log, next.version)
}

// unroutableBuckets collects the buckets a table change leaves without a
// routable owner, by reason and owner, so that each such change is logged
// once (their requests are answered 503 until it changes again; they do
// not log).
type unroutableBuckets map[[2]string][]string

func (u *unroutableBuckets) add(p, n *route) {
	if n.ok || (!p.ok && p.reason == n.reason && p.nodeID == n.nodeID) {
		return
	}
	if *u == nil {
		*u = unroutableBuckets{}
	}
	k := [2]string{n.reason, n.nodeID}
	(*u)[k] = append((*u)[k], n.bucket.String())
}

func (u unroutableBuckets) log(log *zap.Logger, version int64) {
	for _, k := range slices.SortedFunc(maps.Keys(u), func(a, b [2]string) int { return cmp.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) }) {
		log.Warn("buckets without a routable owner", zap.String("reason", k[0]), zap.String("node", k[1]),
			zap.Strings("buckets", u[k]), zap.Int64("version", version))
	}
}

// handoffOutcomes counts what one table change did to the buckets'
// handoffs, as this proxy sees them (it may miss a state that lasted
// shorter than a watch round trip: a move it never saw start counts as
// forced).
type handoffOutcomes struct {
	started, committed, aborted, forced int
	durations                           []time.Duration // of the committed ones, from MoveState.Since
}

// add classifies the change of one bucket's route from p to n.
func (o *handoffOutcomes) add(p, n *route) {
	if n.moving && (!p.moving || p.nodeID != n.nodeID) {
		o.started++
	}
	switch {
	case p.nodeID == "" || n.nodeID == "":
		// no assignment yet, or a bucket (un)assigned: not a handoff
	case p.moving && p.nodeID != n.nodeID:
		o.committed++
		o.durations = append(o.durations, max(0, time.Since(p.moveSince)))
	case p.moving && !n.moving:
		o.aborted++
	case !p.moving && p.nodeID != n.nodeID:
		o.forced++
	}
}

// record adds the outcomes to the metrics.
func (o *handoffOutcomes) record() {
	handoffsTotal.WithLabelValues("committed").Add(float64(o.committed))
	handoffsTotal.WithLabelValues("aborted").Add(float64(o.aborted))
	handoffsTotal.WithLabelValues("forced").Add(float64(o.forced))
	for _, d := range o.durations {
		handoffSeconds.Observe(d.Seconds())
	}
}

// lookup returns the route of bucket b in the current table, without
// locks or allocation.
func (fw *follower) lookup(b bucket.Bucket) (*routeTable, *route) {
	t := fw.table.Load()
	return t, &t.routes[b]
}

// openStream picks bucket b's route for an upgraded connection and, if
// the route is routable and its bucket is not moving, registers cancel to
// be called when the bucket starts moving or changes owner (install). The
// returned function unregisters it. A moving bucket's stream is not registered: its
// request is held first (DtableBucket.serveBucket) and opens again. A
// stream opened on a follower that was destroyed (a request still served
// by a config being unloaded) is cancelled at once: nothing would close
// it when its bucket moves.
func (fw *follower) openStream(b bucket.Bucket, cancel context.CancelFunc) (*routeTable, *route, func()) {
	fw.streamsMu.Lock()
	defer fw.streamsMu.Unlock()
	t := fw.table.Load()
	rt := &t.routes[b]
	if fw.destroyed {
		cancel()
		return t, rt, func() {}
	}
	if !rt.ok || rt.moving {
		return t, rt, func() {}
	}
	// The stream keeps its own copy of the route: a WebSocket lives for
	// hours, and a pointer into the table would keep the whole table
	// (256 routes) alive for each assignment version a stream outlives.
	own := *rt
	rt = &own
	s := &stream{route: rt, cancel: cancel}
	if fw.streams[b] == nil {
		fw.streams[b] = map[*stream]struct{}{}
	}
	fw.streams[b][s] = struct{}{}
	return t, rt, func() {
		fw.streamsMu.Lock()
		delete(fw.streams[b], s)
		fw.streamsMu.Unlock()
	}
}
