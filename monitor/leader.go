package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/leases"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/planner"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

var (
	// errNotLeader: our election key is gone or was replaced; stop writing.
	errNotLeader = errors.New("no longer the leader")
	// errStale: the assignment or settings changed since the snapshot the
	// plan was made on; plan again on a newer one.
	errStale = errors.New("cluster state changed meanwhile")
)

// lead keeps the assignment right while this monitor leads: on every
// change the watcher reports, every interval, and for every operator
// request. It returns when ctx ends or leadership is lost.
func (m *monitor) lead(ctx context.Context, l *leadership) error {
	sub := m.watcher.Subscribe()
	defer sub.Close()
	requests := m.watchRequests(ctx)
	// A requests watch that closes (etcd has no leader, the connection
	// broke) is re-created after a back-off, not at once: the ticker
	// covers the gap.
	var rewatch <-chan time.Time
	rewatchIn := minRewatch
	ticker := time.NewTicker(m.interval)
	defer ticker.Stop()
	// wake runs a round when nothing else would: the settle wait before a
	// first assignment, a handoff timeout, the end of a cooldown.
	var wake <-chan time.Time
	var wakeAt time.Time
	// stepped is the revision of the newest state reconciled: a change
	// queued on the subscription that it already covers is skipped.
	var stepped int64
	step := func(snap *watch.Snapshot) error {
		if snap != nil {
			stepped = max(stepped, snap.Revision)
		}
		if m.testHookStep != nil {
			m.testHookStep(snap)
		}
		wait, err := m.reconcile(ctx, l, snap)
		if at := time.Now().Add(wait); wait > 0 && (wake == nil || at.Before(wakeAt)) {
			wake, wakeAt = time.After(wait), at
		}
		return err
	}
	if err := m.processRequests(ctx, l); err != nil {
		return err
	}
	for {
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sub.C:
			// Each queued snapshot is a whole state: only the latest
			// matters, so a burst of changes costs one round, not one per
			// change, and no round plans on a state already outdated (a
			// node that has just left).
			snap := m.watcher.Snapshot()
			if snap.Revision < l.lastWrite || snap.Revision <= stepped {
				continue // from before our own last write, or already reconciled
			}
			err = step(snap)
		case <-wake:
			wake = nil
			err = step(m.watcher.Snapshot())
		case <-ticker.C:
			if err = step(m.watcher.Snapshot()); err == nil {
				err = m.processRequests(ctx, l)
			}
		case wr, ok := <-requests:
			if !ok {
				requests, rewatch = nil, time.After(rewatchIn)
				rewatchIn = min(2*rewatchIn, maxRewatch)
			} else if wr.Err() == nil {
				rewatchIn = minRewatch
			}
			err = m.processRequests(ctx, l)
		case <-rewatch:
			rewatch, requests = nil, m.watchRequests(ctx)
			err = m.processRequests(ctx, l)
		}
		if errors.Is(err, errNotLeader) {
			return err
		}
		if err != nil && !errors.Is(err, errStale) {
			m.log.Warn("leader step failed; retrying at the next change or tick", zap.Error(err))
		}
	}
}

// The back-off of re-creating a requests watch that closed.
const (
	minRewatch = 200 * time.Millisecond
	maxRewatch = 5 * time.Second
)

// watchRequests notifies of new requests; requests are read by a list, so
// the watch is only a trigger and may be lost without harm. It says when
// it is up (created notify), which resets the back-off.
func (m *monitor) watchRequests(ctx context.Context) <-chan clientv3.WatchResponse {
	if m.testHookRequestWatch != nil {
		return m.testHookRequestWatch(ctx)
	}
	return m.cli.Watch(clientv3.WithRequireLeader(ctx), m.layout.RequestsPrefix(),
		clientv3.WithPrefix(), clientv3.WithFilterDelete(), clientv3.WithCreatedNotify())
}

// current returns the assignment to plan from. If the value in etcd is
// invalid or was deleted, it is the last valid one this monitor saw or,
// failing that, what can be salvaged from the invalid value, and repair
// is true: the value must be rewritten even if nothing moves, with a
// version greater than any this monitor saw.
//
// With no valid assignment known (a first start, or a monitor that starts
// while the key is deleted or corrupt), the version to write next is above
// snap.Revision: see freshVersionFloor.
func (m *monitor) current(ctx context.Context, snap *watch.Snapshot) (cur *schema.Assignment, repair bool, err error) {
	if snap.Assignment != nil {
		m.versionSeen = max(m.versionSeen, snap.Assignment.Version)
	} else {
		m.versionSeen = max(m.versionSeen, freshVersionFloor(snap))
	}
	if snap.AssignmentError == nil {
		if snap.Assignment == nil {
			// Nothing to plan from, but the version must still start above
			// every one written before: an empty assignment carries it.
			return &schema.Assignment{Version: m.versionSeen}, false, nil
		}
		return snap.Assignment, false, nil
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := m.cli.Get(gctx, m.layout.AssignmentKey())
	if err != nil {
		return nil, false, err
	}
	var raw []byte
	if len(resp.Kvs) > 0 {
		raw = resp.Kvs[0].Value
	}
	salvaged, problems := schema.SalvageAssignment(raw)
	m.versionSeen = max(m.versionSeen, salvaged.Version)
	cur = snap.Assignment
	from := "the last valid assignment"
	if cur == nil {
		cur, from = salvaged, "what could be salvaged from the invalid value"
	}
	cur = cur.Clone()
	cur.Version = m.versionSeen // the next write must be newer than any version seen
	if errors.Is(snap.AssignmentError, watch.ErrAssignmentDeleted) && snap.Assignment != nil {
		m.log.Error("the assignment was deleted from etcd; writing the last valid one back (nothing moves for it)",
			zap.String("key", m.layout.AssignmentKey()), zap.Int64("last_valid_version", snap.Assignment.Version),
			zap.Int64("next_version", cur.Version+1))
		return cur, true, nil
	}
	m.log.Error("the assignment in etcd is invalid; repairing it",
		zap.String("key", m.layout.AssignmentKey()), zap.NamedError("invalid", snap.AssignmentError),
		zap.Strings("problems", problems), zap.String("planning_from", from),
		zap.Int("buckets_known", 256-len(cur.Owned(""))))
	return cur, true, nil
}

// freshVersionFloor is a version at least as high as any the monitor ever
// wrote, for a monitor that knows no valid assignment: the etcd revision of
// the snapshot. It holds because every version the monitor writes is at
// most the etcd revision of its write: a first assignment is written with
// this floor + 1 at a later revision, and each later write adds 1 to the
// version while the revision grows by at least 1. Unlike reading the
// key's history, it survives compaction.
func freshVersionFloor(snap *watch.Snapshot) int64 {
	return snap.Revision
}

// reconcile plans from snap and writes the result if anything must change.
// It returns how long to wait before planning a first assignment (settle).
func (m *monitor) reconcile(ctx context.Context, l *leadership, snap *watch.Snapshot) (time.Duration, error) {
	if snap == nil {
		return 0, nil
	}
	cur, repair, err := m.current(ctx, snap)
	if err != nil {
		return 0, err
	}
	live := slices.Sorted(maps.Keys(snap.Nodes))
	if wait, hold := m.settling(live, snap.Assignment == nil); hold {
		return wait, nil
	}
	if errors.Is(snap.SettingsError, watch.ErrSettingsDeleted) {
		return 0, m.restoreSettings(ctx, l, snap) // the next round plans on them
	}
	rebalance, balanceWait, mode := m.balancing(ctx, live, snap.Settings)
	d, err := m.decide(ctx, snap, cur, snap.Settings, rebalance, repair, mode)
	if errors.Is(err, planner.ErrNoEligibleNode) {
		// Nothing new starts, but the moves in progress still commit or
		// abort (d advances them).
		m.log.Error("every live node is drained or leaving: no bucket is given a new owner", zap.Strings("live", live))
		if d == nil {
			return 0, nil
		}
	} else if err != nil {
		return 0, err
	}
	if d.next == nil {
		if len(d.deleteReleased) > 0 { // stale acknowledgements only
			_, err = m.write(ctx, l, snap, nil, nil, d.deleteReleased, d.guards...)
		}
		return minWait(m.nextWake(cur, d.wake), balanceWait), err
	}
	rev, err := m.write(ctx, l, snap, d.next, nil, d.deleteReleased, d.guards...)
	if err != nil {
		return 0, err
	}
	m.afterWrite(d)
	m.logChange("assignment updated", cur, d.next, d.plan, rev, repair)
	m.logLoad(d, true)
	m.logStep(d)
	return minWait(m.nextWake(d.next, d.wake), balanceWait), nil
}

// settling says whether reconcile holds off planning with these live
// nodes (none, or the settle time after they appeared has not passed),
// and for how long (0: until the nodes change). first says no assignment
// exists yet.
func (m *monitor) settling(live []string, first bool) (wait time.Duration, hold bool) {
	if len(live) == 0 {
		m.firstNodesSeen = time.Time{}
		if !m.noNodesLogged {
			m.log.Error("no live node registered: the assignment is left as it is")
			m.noNodesLogged = true
		}
		return 0, true
	}
	m.noNodesLogged = false
	if m.firstNodesSeen.IsZero() {
		m.firstNodesSeen = time.Now()
	}
	// For -settle after nodes appear (this monitor's start, or the first
	// node back after none was live: a whole-cluster restart longer than
	// the TTL), wait for the servers that start together, so that they
	// share evenly and each gets its own buckets back rather than the
	// first one back getting them all.
	if time.Since(m.firstNodesSeen) < m.settle {
		if wait := m.settle - time.Since(m.firstNodesSeen); wait > 0 {
			m.log.Info("waiting for more nodes to register before assigning", zap.Bool("first_assignment", first),
				zap.Strings("live", live), zap.Duration("in", wait))
			return wait, true
		}
	}
	return 0, false
}

// restoreSettings writes the last valid settings back after they were
// deleted: a slip (a delete by hand) must not undo the operator's drains
// and pins.
func (m *monitor) restoreSettings(ctx context.Context, l *leadership, snap *watch.Snapshot) error {
	settings := snap.Settings.Clone()
	if _, err := m.write(ctx, l, snap, nil, &settings, nil); err != nil {
		return err
	}
	m.log.Error("the settings were deleted from etcd; wrote the last valid ones back",
		zap.String("key", m.layout.SettingsKey()), zap.Strings("drained", settings.Drained))
	return nil
}

// balancing says how this round balances: whether it evens out bucket
// counts (and if not yet, in how long), and whether by load. It samples
// the load reports.
func (m *monitor) balancing(ctx context.Context, live []string, settings schema.Settings) (rebalance bool, balanceWait time.Duration, mode loadMode) {
	rebalance, balanceWait = m.balanceDue(live, settings.AutoRebalance)
	m.sampleLoad(ctx, time.Now(), false)
	mode = loadOff
	if settings.ByLoad() {
		// Balanced by load: evening out bucket counts would undo it.
		rebalance, balanceWait = false, 0
		if settings.AutoLoadBalance {
			mode = loadAuto
		}
	}
	return rebalance, balanceWait, mode
}

// balanceDue says whether this round should even out bucket counts: with
// auto-rebalance, always; otherwise once the set of live nodes has not
// changed for rebalanceAfter (a node that joined, or came back after a
// clean stop, then gets its share; during a rolling restart nothing is
// evened until the last node is back). It returns how long until that is
// due, 0 if it is due or disabled.
func (m *monitor) balanceDue(live []string, auto bool) (bool, time.Duration) {
	key := strings.Join(live, "\x00")
	if key != m.membership {
		m.membership, m.membershipSince = key, time.Now()
	}
	if auto {
		return true, 0
	}
	if m.rebalanceAfter <= 0 {
		return false, 0
	}
	if wait := m.rebalanceAfter - time.Since(m.membershipSince); wait > 0 {
		return false, wait
	}
	return true, 0
}

// minWait is the earlier of two waits, 0 meaning none.
func minWait(a, b time.Duration) time.Duration {
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}

func (m *monitor) logChange(msg string, cur, next *schema.Assignment, plan *planner.Plan, rev int64, repair bool) {
	prev := int64(0)
	if cur != nil {
		prev = cur.Version
	}
	reasons := map[string]int{}
	moved := make([]string, 0, len(plan.Moves))
	for _, mv := range plan.Moves {
		reasons[mv.Reason]++
		moved = append(moved, fmt.Sprintf("%s:%s->%s", mv.Bucket, orNone(mv.From), mv.To))
	}
	m.log.Info(msg, zap.Int64("version", next.Version), zap.Int64("previous_version", prev),
		zap.Int64("revision", rev), zap.Bool("repair", repair), zap.Any("reasons", reasons),
		zap.Int("moves", len(plan.Moves)), zap.Any("moves_per_node", movesPerNode(plan.Moves)),
		zap.Any("counts", plan.Counts()), zap.Strings("moved", moved), zap.Strings("warnings", plan.Warnings))
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// write commits changes in one transaction that succeeds only while this
// monitor leads (its election key has the create revision it won with)
// and, unless snap is nil, the assignment and settings are as in snap,
// and every guard holds (a decision's guards: the nodes it treats as gone
// are unregistered, the release keys it deletes are as it saw them). A
// nil snap may only go with no assignment or settings change.
func (m *monitor) write(ctx context.Context, l *leadership, snap *watch.Snapshot,
	next *schema.Assignment, settings *schema.Settings, extra []clientv3.Op, guards ...clientv3.Cmp) (int64, error) {
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)}
	cmps = append(cmps, guards...)
	if snap != nil {
		cmps = append(cmps,
			clientv3.Compare(clientv3.ModRevision(m.layout.AssignmentKey()), "=", snap.AssignmentModRevision),
			clientv3.Compare(clientv3.ModRevision(m.layout.SettingsKey()), "=", snap.SettingsModRevision))
	} else if next != nil || settings != nil {
		panic("monitor: a change written without the snapshot it was planned on")
	}
	var ops []clientv3.Op
	if next != nil {
		ops = append(ops, clientv3.OpPut(m.layout.AssignmentKey(), string(next.Encode())))
	}
	if settings != nil {
		ops = append(ops, clientv3.OpPut(m.layout.SettingsKey(), string(settings.Encode())))
	}
	ops = append(ops, extra...)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	txn, err := m.cli.Txn(wctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(l.key)).Commit()
	if err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	if !txn.Succeeded {
		kvs := txn.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].CreateRevision != l.rev {
			return 0, errNotLeader
		}
		return 0, errStale
	}
	if next != nil || settings != nil {
		l.lastWrite = txn.Header.Revision
	}
	return txn.Header.Revision, nil
}

// processRequests carries out every pending operator request, oldest first.
func (m *monitor) processRequests(ctx context.Context, l *leadership) error {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := m.cli.Get(gctx, m.layout.RequestsPrefix(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	cancel()
	if err != nil {
		return fmt.Errorf("list requests: %w", err)
	}
	for _, kv := range resp.Kvs {
		if err := m.handleRequest(ctx, l, kv); err != nil {
			return err
		}
	}
	return nil
}

// handleRequest answers one request. The answer, the request's removal and
// any change it makes are one transaction.
func (m *monitor) handleRequest(ctx context.Context, l *leadership, kv *mvccpb.KeyValue) error {
	r := &pendingRequest{kv: kv, id: strings.TrimPrefix(string(kv.Key), m.layout.RequestsPrefix())}
	if err := json.Unmarshal(kv.Value, &r.req); err != nil {
		return m.respond(ctx, l, kv, r.id, nil, &monitorapi.Response{Error: fmt.Sprintf("unreadable request: %v", err)}, nil, nil, nil, nil)
	}
	r.resp = &monitorapi.Response{Op: r.req.Op, DryRun: r.req.DryRun}
	if err := r.req.Validate(); err != nil {
		r.resp.Error = err.Error()
		return m.respond(ctx, l, kv, r.id, nil, r.resp, nil, nil, nil, nil)
	}
	r.log = m.log.With(zap.String("request", r.id), zap.String("op", r.req.Op), zap.String("from", r.req.From), zap.Bool("dry_run", r.req.DryRun))
	for attempt := 0; ; attempt++ {
		p, err := m.planRequest(ctx, l, r)
		if errors.Is(err, planner.ErrNoEligibleNode) || errors.Is(err, errNoLoadReports) {
			r.resp.Error = fmt.Sprintf("%v: the assignment is left as it is", err)
			r.log.Warn("request refused", zap.String("error", r.resp.Error))
			return m.respond(ctx, l, kv, r.id, nil, r.resp, nil, nil, nil, nil)
		}
		if err != nil {
			return err // etcd trouble: the request stays, and is tried again
		}
		err = m.carryOut(ctx, l, r, p)
		if errors.Is(err, errStale) && m.withdrawn(ctx, kv) {
			r.log.Info("request withdrawn by its sender before it was carried out; nothing done")
			return nil
		}
		if errors.Is(err, errStale) && attempt < 5 {
			continue // plan again on the newer state
		}
		return err
	}
}

// pendingRequest is an operator request being carried out, with the
// response it builds up.
type pendingRequest struct {
	kv   *mvccpb.KeyValue
	id   string
	req  monitorapi.Request
	resp *monitorapi.Response
	log  *zap.Logger
}

// requestPlan is a request planned on one snapshot.
type requestPlan struct {
	snap            *watch.Snapshot
	cur             *schema.Assignment // the assignment planned from (empty, with the version floor, if there is none)
	repair          bool               // the assignment in etcd is invalid
	settings        schema.Settings    // as the request makes them
	settingsChanged bool
	d               *decision
}

// planRequest plans r on a snapshot that includes this monitor's last
// write, and notes the versions and warnings in r's response.
func (m *monitor) planRequest(ctx context.Context, l *leadership, r *pendingRequest) (*requestPlan, error) {
	snap, err := m.freshSnapshot(ctx, l.lastWrite)
	if err != nil {
		return nil, err
	}
	p := &requestPlan{snap: snap, settings: snap.Settings.Clone()}
	p.settingsChanged = applyOp(&p.settings, r.req)
	p.cur, p.repair, err = m.current(ctx, snap)
	if err != nil {
		return nil, err
	}
	// A fresh answer each attempt: a retry on a newer state must not keep
	// the warnings, waves or success of the one before.
	*r.resp = monitorapi.Response{Op: r.req.Op, DryRun: r.req.DryRun}
	req, resp := r.req, r.resp
	if snap.Assignment != nil { // else p.cur only carries the version floor: nothing was written
		resp.PreviousVersion, resp.Version = p.cur.Version, p.cur.Version
	}
	live := slices.Sorted(maps.Keys(snap.Nodes))
	if (req.Op == monitorapi.OpDrain || req.Op == monitorapi.OpPin) && !slices.Contains(live, req.Node) {
		resp.Warnings = append(resp.Warnings, fmt.Sprintf("node %s is not registered now", req.Node))
	}
	byLoad := req.Op == monitorapi.OpRebalance && req.By == monitorapi.ByLoad
	// A rebalance by count evens counts; so does auto-rebalance, unless
	// the cluster is balanced by load (it would undo the load moves).
	rebalance := (req.Op == monitorapi.OpRebalance && !byLoad) || (p.settings.AutoRebalance && !p.settings.ByLoad())
	mode := loadOff
	if byLoad {
		m.sampleLoad(ctx, time.Now(), true)
		mode = loadRequested
	}
	p.d, err = m.decide(ctx, snap, p.cur, p.settings, rebalance, p.repair, mode)
	return p, err
}

// carryOut answers a planned request and, unless it is a dry run, makes
// its change, in one transaction (respond); errStale if the state it was
// planned on changed meanwhile.
func (m *monitor) carryOut(ctx context.Context, l *leadership, r *pendingRequest, p *requestPlan) error {
	d := p.d
	describe(r.resp, d.plan)
	m.describeLoad(r.resp, d.load)
	describeHandoff(r.resp, d, m.limits)
	next := d.next
	var newSettings *schema.Settings
	if p.settingsChanged {
		newSettings = &p.settings
	}
	var consume []clientv3.Op
	var guards []clientv3.Cmp
	if r.req.DryRun {
		next, newSettings = nil, nil
	} else {
		consume, guards = d.deleteReleased, d.guards
		if next != nil {
			r.resp.Version = next.Version
		}
	}
	r.resp.OK = true
	if err := m.respond(ctx, l, r.kv, r.id, p.snap, r.resp, next, newSettings, consume, guards); err != nil {
		return err
	}
	r.log.Info("request done", zap.Int("moves", len(r.resp.Moves)), zap.Int64("version", r.resp.Version))
	if next != nil {
		m.afterWrite(d)
		m.logChange("assignment updated by request", p.cur, next, d.plan, l.lastWrite, p.repair)
		m.logLoad(d, false)
		m.logStep(d)
	}
	return nil
}

// applyOp changes settings as req asks; it reports whether they changed.
func applyOp(s *schema.Settings, req monitorapi.Request) bool {
	before := string(s.Encode())
	switch req.Op {
	case monitorapi.OpDrain:
		if !s.IsDrained(req.Node) {
			s.Drained = append(s.Drained, req.Node)
		}
	case monitorapi.OpUndrain:
		s.Drained = slices.DeleteFunc(s.Drained, func(n string) bool { return n == req.Node })
	case monitorapi.OpPin:
		b, _ := bucket.Parse(req.Bucket)
		if s.Pins == nil {
			s.Pins = map[bucket.Bucket]string{}
		}
		s.Pins[b] = req.Node
	case monitorapi.OpUnpin:
		b, _ := bucket.Parse(req.Bucket)
		delete(s.Pins, b)
	case monitorapi.OpAutoRebalance:
		s.AutoRebalance = req.Enabled
	case monitorapi.OpRebalance:
		// The last rebalance says what "balanced" means from now on.
		s.BalanceBy = ""
		if req.By == monitorapi.ByLoad {
			s.BalanceBy = schema.BalanceByLoad
		}
	case monitorapi.OpAutoLoadBalance:
		s.AutoLoadBalance = req.Enabled
		if req.Enabled {
			s.BalanceBy = schema.BalanceByLoad
		}
	}
	return string(s.Encode()) != before
}

// describe fills a response with a plan's moves and counts.
func describe(resp *monitorapi.Response, plan *planner.Plan) {
	resp.Moves = append([]schema.Move{}, plan.Moves...) // [] rather than null in JSON
	resp.MovesPerNode = movesPerNode(plan.Moves)
	resp.Counts = plan.Counts()
	resp.Warnings = append(resp.Warnings, plan.Warnings...)
}

func movesPerNode(moves []schema.Move) map[string]monitorapi.NodeMoves {
	per := map[string]monitorapi.NodeMoves{}
	for _, mv := range moves {
		if mv.From != "" {
			x := per[mv.From]
			x.Lost++
			per[mv.From] = x
		}
		x := per[mv.To]
		x.Gained++
		per[mv.To] = x
	}
	return per
}

// respond writes the response (under a one-minute lease) and deletes the
// request, together with any assignment and settings change and more ops,
// in one fenced transaction (with the decision's guards). With snap nil
// (an answer that changes nothing and was not planned, e.g. a refusal)
// only leadership is checked.
func (m *monitor) respond(ctx context.Context, l *leadership, req *mvccpb.KeyValue, id string, snap *watch.Snapshot,
	resp *monitorapi.Response, next *schema.Assignment, settings *schema.Settings, more []clientv3.Op, guards []clientv3.Cmp) error {
	resp.ID, resp.Leader = id, m.id
	body, _ := json.Marshal(resp)
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	lease, err := m.cli.Grant(gctx, 60)
	cancel()
	if err != nil {
		return fmt.Errorf("answer request %s: %w", id, err)
	}
	reqKey := string(req.Key)
	ops := []clientv3.Op{
		clientv3.OpPut(m.layout.ResponsesPrefix()+id, string(body), clientv3.WithLease(lease.ID)),
		clientv3.OpDelete(reqKey),
	}
	ops = append(ops, more...)
	// The request must still be there: a sender that gave up revokes it,
	// and a withdrawn request is not carried out.
	guards = append(guards, clientv3.Compare(clientv3.CreateRevision(reqKey), "=", req.CreateRevision))
	_, err = m.write(ctx, l, snap, next, settings, ops, guards...)
	if err != nil {
		// Not answered: the answer's lease would only linger.
		_ = leases.Revoke(m.cli, lease.ID, m.log)
	}
	return err
}

// withdrawn reports whether a request is gone from etcd (its sender gave
// up and revoked it) or was replaced.
func (m *monitor) withdrawn(ctx context.Context, req *mvccpb.KeyValue) bool {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := m.cli.Get(gctx, string(req.Key))
	return err == nil && (len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != req.CreateRevision)
}

// freshSnapshot returns the watcher's snapshot once it includes our own
// last write (the watcher may lag behind a write by a few milliseconds).
func (m *monitor) freshSnapshot(ctx context.Context, minRev int64) (*watch.Snapshot, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := m.watcher.Snapshot()
		if s != nil && s.Revision >= minRev {
			return s, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the cluster watcher is behind our own write at revision %d", minRev)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
