// Package watch keeps an up-to-date, immutable snapshot of the
// cluster state in etcd (node registrations and the bucket assignment) and
// tells subscribers about every change. The proxy, the monitor and the
// registrar all use it, so the watch logic exists once:
//
//   - list everything under the prefix at one revision, then watch what
//     comes after it (no event missed, none seen twice);
//   - on a compaction or a broken stream, list again and carry on;
//   - reject invalid values with a logged error naming the key, keeping the
//     last good state (a deleted assignment keeps the last good one too);
//   - publish each new state through an atomic pointer (readers take no lock)
//     and to subscribers, one snapshot per etcd revision, in order.
package watch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/schema"
)

// Config configures a Watcher.
type Config struct {
	Client *clientv3.Client
	Layout schema.Layout
	Logger *zap.Logger // nil: no logging
	// ProgressInterval is how often an idle watcher asks etcd to confirm the
	// stream is alive; after three intervals without an answer it counts as
	// disconnected (Status). Default 5s.
	ProgressInterval time.Duration
	// RequestTimeout bounds each list request. Default 5s.
	RequestTimeout time.Duration
	// RetryMin and RetryMax bound the back-off between failed attempts.
	// Defaults 100ms and 5s.
	RetryMin, RetryMax time.Duration
}

// Status describes the watcher's connection to etcd, for logs, metrics and
// admin views: how stale the snapshot may be.
type Status struct {
	Connected   bool      // the watch stream is up and etcd answered recently
	LastContact time.Time // when etcd last answered (list, event or progress)
	LastError   string    // the last failure, kept after recovery
	Relists     int64     // how many times the state was listed again after the first time
	Revision    int64     // the revision of the current snapshot
}

// Watcher follows the cluster state in etcd.
type Watcher struct {
	cfg    Config
	log    *zap.Logger
	cancel context.CancelFunc
	done   chan struct{}

	snap  atomic.Pointer[Snapshot]
	ready chan struct{}

	subMu sync.Mutex
	subs  map[*Subscription]struct{}

	statusMu sync.Mutex
	status   Status

	// testHookAfterList, if set, runs after each successful list and before
	// the watch starts, so tests can make changes in that window.
	testHookAfterList func(rev int64)
}

// New returns a watcher; Start begins the work.
func New(cfg Config) *Watcher {
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = 5 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Watcher{
		cfg:   cfg,
		log:   log.With(zap.String("prefix", cfg.Layout.Prefix)),
		done:  make(chan struct{}),
		ready: make(chan struct{}),
		subs:  map[*Subscription]struct{}{},
	}
}

// Start runs the watch in the background until Stop. It does not wait for
// etcd: use WaitReady for the first snapshot (Snapshot is nil until then).
func (w *Watcher) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() {
		defer close(w.done)
		w.run(ctx)
	}()
}

// Stop ends the watch and waits for it. Subscriptions stop receiving.
func (w *Watcher) Stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
	w.subMu.Lock()
	subs := w.subs
	w.subs = map[*Subscription]struct{}{}
	w.subMu.Unlock()
	for s := range subs {
		s.Close()
	}
}

// Snapshot returns the current state, or nil before the first list succeeded.
// It takes no lock and does not allocate.
func (w *Watcher) Snapshot() *Snapshot { return w.snap.Load() }

// WaitReady waits for the first snapshot or ctx.
func (w *Watcher) WaitReady(ctx context.Context) (*Snapshot, error) {
	select {
	case <-w.ready:
		return w.Snapshot(), nil
	case <-ctx.Done():
		st := w.Status()
		if st.LastError != "" {
			return nil, fmt.Errorf("no cluster state from etcd yet: %s", st.LastError)
		}
		return nil, fmt.Errorf("no cluster state from etcd yet: %w", ctx.Err())
	}
}

// Status reports the connection state.
func (w *Watcher) Status() Status {
	w.statusMu.Lock()
	defer w.statusMu.Unlock()
	st := w.status
	if st.Connected && time.Since(st.LastContact) > 3*w.cfg.ProgressInterval {
		st.Connected = false
	}
	return st
}

// Subscribe returns a subscription that first receives the current snapshot
// (if there is one) and then every later one, in order.
func (w *Watcher) Subscribe() *Subscription {
	var s *Subscription
	s = newSubscription(func() {
		w.subMu.Lock()
		delete(w.subs, s)
		w.subMu.Unlock()
	})
	w.subMu.Lock()
	w.subs[s] = struct{}{}
	if cur := w.snap.Load(); cur != nil {
		s.push(cur)
	}
	w.subMu.Unlock()
	return s
}

func (w *Watcher) publish(s *Snapshot) {
	w.subMu.Lock()
	w.snap.Store(s)
	for sub := range w.subs {
		sub.push(s)
	}
	w.subMu.Unlock()
	select {
	case <-w.ready:
	default:
		close(w.ready)
	}
}

// contact records an answer from etcd. Only the watch stream's answers
// (its creation included) make the watcher Connected: a list alone proves
// etcd answers reads, not that changes will arrive.
func (w *Watcher) contact(rev int64, watching bool) {
	w.statusMu.Lock()
	if watching {
		w.status.Connected = true
	}
	w.status.LastContact = time.Now()
	if rev > 0 {
		w.status.Revision = rev
	}
	w.statusMu.Unlock()
}

// failed records a broken list or watch; the loop lists again next.
func (w *Watcher) failed(err error) {
	w.statusMu.Lock()
	w.status.Connected = false
	w.status.LastError = err.Error()
	w.status.Relists++
	w.statusMu.Unlock()
}

// run lists and watches until ctx ends, starting over after any failure.
func (w *Watcher) run(ctx context.Context) {
	backoff := w.cfg.RetryMin
	for ctx.Err() == nil {
		rev, err := w.list(ctx)
		if err == nil {
			if w.testHookAfterList != nil {
				w.testHookAfterList(rev)
			}
			backoff = w.cfg.RetryMin
			err = w.watch(ctx, rev)
		}
		if ctx.Err() != nil {
			return
		}
		w.failed(err)
		w.log.Warn("etcd watch interrupted; listing again", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, w.cfg.RetryMax)
	}
}

// list reads everything under the prefix at one revision and publishes it.
func (w *Watcher) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer cancel()
	resp, err := w.cfg.Client.Get(lctx, w.cfg.Layout.Root(), clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", w.cfg.Layout.Root(), err)
	}
	prev := w.snap.Load()
	if prev == nil {
		prev = EmptySnapshot()
	}
	next := EmptySnapshot()
	next.Revision = resp.Header.Revision
	for _, kv := range resp.Kvs {
		w.applyPut(prev, next, kv)
	}
	if next.AssignmentModRevision == 0 && prev.Assignment != nil {
		// Deleted while the stream was broken: as for a deleted key seen
		// by the watch, the last valid assignment stays.
		next.Assignment = prev.Assignment
		w.assignmentDeleted(prev, next)
	}
	if next.SettingsModRevision == 0 && (prev.SettingsModRevision != 0 || errors.Is(prev.SettingsError, ErrSettingsDeleted)) {
		next.Settings = prev.Settings // deleted while the stream was broken
		w.settingsDeleted(prev, next)
	}
	w.contact(resp.Header.Revision, false)
	// A re-list after a broken stream often finds nothing new; subscribers
	// hear only of real changes.
	if cur := w.snap.Load(); cur == nil || !cur.sameState(next) {
		w.publish(next)
	}
	return resp.Header.Revision, nil
}

// watch follows the changes after rev (the listed revision) until the
// stream breaks. It watches from rev itself, not rev+1, and skips the
// events at rev, which the list already holds: etcd answers progress
// requests only for watchers whose start revision it has reached, so a
// watch from rev+1 would get no progress answer until the next write
// anywhere in etcd, and an idle cluster would look disconnected.
func (w *Watcher) watch(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := w.cfg.Client.Watch(wctx, w.cfg.Layout.Root(), clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithCreatedNotify())
	ticker := time.NewTicker(w.cfg.ProgressInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			// Ask for a progress notification on this stream: an answer
			// proves etcd and the stream are alive while nothing changes.
			_ = w.cfg.Client.RequestProgress(wctx)
		case resp, ok := <-ch:
			if !ok {
				return errors.New("watch channel closed")
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("watch fell behind a compaction at revision %d", resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch: %w", err)
			}
			if resp.Canceled {
				return errors.New("watch canceled by etcd")
			}
			w.contact(resp.Header.Revision, true)
			events := resp.Events
			for len(events) > 0 && events[0].Kv.ModRevision <= rev {
				events = events[1:] // already in the list
			}
			w.applyEvents(events)
		}
	}
}

// applyEvents publishes one snapshot per revision among events, in order.
func (w *Watcher) applyEvents(events []*clientv3.Event) {
	for i := 0; i < len(events); {
		rev := events[i].Kv.ModRevision
		prev := w.snap.Load()
		next := prev.clone()
		next.Revision = rev
		changed := false
		for ; i < len(events) && events[i].Kv.ModRevision == rev; i++ {
			ev := events[i]
			switch ev.Type {
			case mvccpb.PUT:
				changed = w.applyPut(prev, next, ev.Kv) || changed
			case mvccpb.DELETE:
				changed = w.applyDelete(next, string(ev.Kv.Key)) || changed
			}
		}
		if changed {
			w.publish(next)
		}
	}
}

// applyPut sets next's state for one key from its value, keeping prev's
// last good value if the new one is invalid. It reports whether the key is
// part of the cluster state.
func (w *Watcher) applyPut(prev, next *Snapshot, kv *mvccpb.KeyValue) bool {
	key := string(kv.Key)
	l := w.cfg.Layout
	switch {
	case key == l.AssignmentKey():
		next.AssignmentModRevision = kv.ModRevision
		a, err := schema.ParseAssignment(kv.Value)
		if err != nil {
			next.Assignment = prev.Assignment
			next.AssignmentError = err
			w.log.Error("invalid assignment in etcd; keeping the last good one",
				zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision), zap.Error(err))
			return true
		}
		next.Assignment = a
		next.AssignmentError = nil
		return true
	case key == l.SettingsKey():
		next.SettingsModRevision = kv.ModRevision
		st, err := schema.ParseSettings(kv.Value)
		if err != nil {
			next.Settings = prev.Settings
			next.SettingsError = err
			w.log.Error("invalid settings in etcd; keeping the last good ones",
				zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision), zap.Error(err))
			return true
		}
		next.Settings = st
		next.SettingsError = nil
		return true
	case strings.HasPrefix(key, l.NodesPrefix()):
		id, ok := l.NodeIDFromKey(key)
		if !ok {
			w.log.Warn("ignoring malformed node key", zap.String("key", key))
			return false
		}
		next.NodeCreateRevisions[id] = kv.CreateRevision
		n, err := schema.ParseNode(id, kv.Value)
		if err != nil {
			delete(next.Nodes, id)
			delete(next.NodeLeases, id)
			if old, had := prev.Nodes[id]; had {
				next.Nodes[id] = old
				next.NodeLeases[id] = prev.NodeLeases[id]
			}
			next.NodeErrors[id] = err
			w.log.Error("invalid node registration in etcd; keeping the last good one",
				zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision), zap.Error(err))
			return true
		}
		next.Nodes[id] = n
		next.NodeLeases[id] = clientv3.LeaseID(kv.Lease)
		delete(next.NodeErrors, id)
		return true
	case strings.HasPrefix(key, l.ReleasedPrefix()):
		b, ok := l.BucketFromReleasedKey(key)
		if !ok {
			w.log.Warn("ignoring malformed released key", zap.String("key", key))
			return false
		}
		r, err := schema.ParseReleased(kv.Value)
		if err != nil {
			delete(next.Released, b)
			w.log.Error("invalid release acknowledgement in etcd; ignoring it",
				zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision), zap.Error(err))
			return true
		}
		next.Released[b] = ReleasedKey{Released: r, ModRevision: kv.ModRevision}
		return true
	}
	return false
}

func (w *Watcher) applyDelete(next *Snapshot, key string) bool {
	l := w.cfg.Layout
	if key == l.AssignmentKey() {
		next.AssignmentModRevision = 0
		if next.Assignment == nil {
			// No valid value to keep: as if never written (the monitor
			// plans one, with a version above every earlier one).
			next.AssignmentError = nil
			w.log.Warn("assignment deleted from etcd (no valid one was seen before)", zap.String("key", key))
			return true
		}
		w.assignmentDeleted(next, next)
		return true
	}
	if key == l.SettingsKey() {
		w.settingsDeleted(next, next)
		return true
	}
	if id, ok := l.NodeIDFromKey(key); ok {
		delete(next.Nodes, id)
		delete(next.NodeErrors, id)
		delete(next.NodeLeases, id)
		delete(next.NodeCreateRevisions, id)
		return true
	}
	if b, ok := l.BucketFromReleasedKey(key); ok {
		delete(next.Released, b)
		return true
	}
	return false
}

// assignmentDeleted marks next's assignment key as deleted: like an invalid
// value, a delete does not replace the last valid assignment (next keeps
// it), so no reader forgets who owns what; the leading monitor writes it
// back (a fresh version, the same owners).
// It logs unless prev already said so (a re-list).
// settingsDeleted marks next's settings as deleted from etcd, keeping the
// last valid ones (next.Settings), and logs it once.
func (w *Watcher) settingsDeleted(prev, next *Snapshot) {
	already := errors.Is(prev.SettingsError, ErrSettingsDeleted)
	next.SettingsModRevision = 0
	next.SettingsError = ErrSettingsDeleted
	if !already {
		w.log.Error("settings deleted from etcd; keeping the last good ones (the leading monitor writes them back)",
			zap.String("key", w.cfg.Layout.SettingsKey()), zap.Strings("drained", next.Settings.Drained))
	}
}

func (w *Watcher) assignmentDeleted(prev, next *Snapshot) {
	already := errors.Is(prev.AssignmentError, ErrAssignmentDeleted)
	next.AssignmentModRevision = 0
	next.AssignmentError = ErrAssignmentDeleted
	if already {
		return
	}
	w.log.Error("assignment deleted from etcd; keeping the last good one",
		zap.String("key", w.cfg.Layout.AssignmentKey()), zap.Int64("last_good_version", next.Assignment.Version))
}
