// Package fakeserver is a stand-in dtable-server for tests and the local
// cluster. It answers every HTTP request with its name and what it
// received (path, query, Host, the proxy's headers) as JSON, and echoes
// WebSocket messages prefixed with its name ("n1:hello").
//
// It also implements the server side of docs/server-contract.md, so tests
// can prove that no two servers hold one bucket at once: it takes the
// registrar's notifications (protocol 1 and 2) at NotifyPath, holds the
// buckets it is given at their epochs, marks bases dirty on writes (each
// base of a bucket on its own), saves (SaveDelay, if any base of the
// bucket is dirty) and unloads on a release, fences at its deadline, and, in
// strict mode, answers 421 to a request for a bucket it does not hold at
// the request's epoch. Every hold and every served request is logged with
// its bucket, epoch and times (Log, and GET LogPath as JSON).
package fakeserver

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/contract"
)

// Answer is the JSON body of every served HTTP request.
type Answer struct {
	Node    string `json:"node"`
	Method  string `json:"method"`
	Path    string `json:"path"`
	Query   string `json:"query"`
	Host    string `json:"host"`
	Bucket  string `json:"bucket"`  // X-Dtable-Bucket as received
	Version string `json:"version"` // X-Dtable-Assignment-Version as received
	Epoch   string `json:"epoch"`   // X-Dtable-Bucket-Epoch as received
}

// Default paths of the contract endpoints.
const (
	NotifyPath = "/_cluster/notify"
	LogPath    = "/_fake/log"
)

// Config describes one stand-in server.
type Config struct {
	Name string
	// Strict serves only buckets held at the request's epoch (the server
	// contract); otherwise every request is served (and still logged).
	Strict bool
	// SaveDelay is how long saving takes on release, when any base of the
	// bucket is dirty (the bases are saved together).
	SaveDelay time.Duration
	// RefuseRelease makes the server answer 503 to a notification that
	// orders a release, and keep serving the buckets: a server that never
	// acknowledges, for tests of the handoff timeout.
	RefuseRelease bool
}

// Interval is one entry of the log: a hold (Kind "hold": from acquiring a
// bucket to having released it, or fenced) or a served request (Kind
// "serve"). End is zero while it lasts.
type Interval struct {
	Server string    `json:"server"`
	Kind   string    `json:"kind"`
	Bucket string    `json:"bucket"`
	Epoch  int64     `json:"epoch"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	How    string    `json:"how,omitempty"` // for a hold: released, fenced, dropped
	// Saved is, for a released hold, how many dirty bases were saved.
	Saved int `json:"saved,omitempty"`
}

// Server is a stand-in dtable-server; it is an http.Handler.
type Server struct {
	cfg Config
	up  websocket.Upgrader

	mu       sync.Mutex
	changed  *sync.Cond // signalled when a request ends (a release waits for them)
	held     map[string]*holding
	deadline time.Time // fence then; zero: none known
	timer    *time.Timer
	log      []Interval
	notified int // notifications applied

	// fenceSeq is the Seq of the last fence: older messages are ignored.
	fenceSeq int64
	// hasState: a state message was applied since start or the last
	// fence; until then a heartbeat asks for one (409).
	hasState bool
	// wanted are the buckets the last state message said to hold, and
	// canAcquire whether it allowed taking new ones: a bucket released
	// while a later message wants it back (an aborted move) is taken again.
	wanted     map[string]int64
	canAcquire bool
}

// holding is one held bucket.
type holding struct {
	name      string // the bucket
	epoch     int64
	releasing bool
	dirty     map[string]bool // bases written since loaded ("": a write naming no base)
	inflight  int
	logIndex  int // its "hold" entry in the log
	sockets   map[*websocket.Conn]struct{}
	done      chan struct{} // closed when the hold ends
	how       string        // how it ended: released, fenced, dropped
}

// New returns a stand-in server.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, held: map[string]*holding{}}
	s.changed = sync.NewCond(&s.mu)
	s.up = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	return s
}

// Handler returns a lenient stand-in server named name (serves everything).
func Handler(name string) http.Handler { return New(Config{Name: name}) }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case NotifyPath:
		s.notify(w, r)
		return
	case LogPath:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.Log())
		return
	}
	b, base := requestBucket(r)
	epoch, _ := strconv.ParseInt(r.Header.Get(contract.HeaderBucketEpoch), 10, 64)
	entry, h, refusal := s.begin(b, epoch)
	if refusal != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(contract.StatusNotMine)
		json.NewEncoder(w).Encode(refusal)
		return
	}
	defer s.end(entry, h)
	if websocket.IsWebSocketUpgrade(r) {
		s.echo(w, r, h)
		return
	}
	if h != nil && r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.mu.Lock()
		h.dirty[base] = true
		s.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(Answer{
		Node: s.cfg.Name, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host,
		Bucket: r.Header.Get(contract.HeaderBucket), Version: r.Header.Get(contract.HeaderVersion),
		Epoch: r.Header.Get(contract.HeaderBucketEpoch),
	})
}

// begin admits a request for bucket b (nil: names no base) at epoch (0:
// the request names none), logging it; or it returns the refusal.
func (s *Server) begin(b *bucket.Bucket, epoch int64) (int, *holding, *contract.NotMine) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b == nil {
		return -1, nil, nil
	}
	name := b.String()
	h := s.held[name]
	if s.cfg.Strict {
		refuse := func(reason string) (int, *holding, *contract.NotMine) {
			nm := &contract.NotMine{Node: s.cfg.Name, Bucket: name, Reason: reason}
			if h != nil {
				nm.Epoch = h.epoch
			}
			return -1, nil, nm
		}
		switch {
		case h == nil:
			return refuse("not_held")
		case h.releasing:
			return refuse("releasing")
		case !s.deadline.IsZero() && time.Now().After(s.deadline):
			return refuse("fenced")
		case epoch != 0 && h.epoch != 0 && epoch != h.epoch:
			return refuse("epoch")
		}
	}
	if h != nil {
		h.inflight++
		epoch = h.epoch
	}
	s.log = append(s.log, Interval{Server: s.cfg.Name, Kind: "serve", Bucket: name, Epoch: epoch, Start: time.Now()})
	return len(s.log) - 1, h, nil
}

func (s *Server) end(entry int, h *holding) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if entry >= 0 {
		s.log[entry].End = time.Now()
	}
	if h != nil {
		h.inflight--
		s.changed.Broadcast()
	}
}

func (s *Server) echo(w http.ResponseWriter, r *http.Request, h *holding) {
	c, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	if h != nil {
		s.mu.Lock()
		if h.releasing || s.held[h.name] != h {
			// Released (or fenced) while the handshake ran: the release
			// closed the sockets it knew; this one must not outlive it.
			s.mu.Unlock()
			return
		}
		if h.sockets == nil {
			h.sockets = map[*websocket.Conn]struct{}{}
		}
		h.sockets[c] = struct{}{}
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(h.sockets, c)
			s.mu.Unlock()
		}()
	}
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if c.WriteMessage(mt, []byte(s.cfg.Name+":"+string(msg))) != nil {
			return
		}
	}
}

// requestBucket finds the bucket a request is for: the proxy's bucket
// header, else the base's; and the base: the first path segment or
// dtable_uuid parameter that is a UUID, in one form whatever its case and
// dashes ("" if none is).
func requestBucket(r *http.Request) (*bucket.Bucket, string) {
	var b *bucket.Bucket
	if v := r.Header.Get(contract.HeaderBucket); v != "" {
		if hb, err := bucket.Parse(v); err == nil {
			b = &hb
		}
	}
	base := ""
	for _, seg := range append(strings.Split(r.URL.Path, "/"), r.URL.Query().Get("dtable_uuid")) {
		if ub, err := bucket.FromUUID(seg); err == nil {
			base = strings.ToLower(strings.ReplaceAll(seg, "-", ""))
			if b == nil {
				b = &ub
			}
			break
		}
	}
	return b, base
}

// Log returns a copy of the log: holds and served requests, in order of start.
func (s *Server) Log() []Interval {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Interval(nil), s.log...)
}

// Held returns the buckets held now and their epochs.
func (s *Server) Held() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	for name, h := range s.held {
		if !h.releasing {
			out[name] = h.epoch
		}
	}
	return out
}

// notify applies a registrar notification (see docs/server-contract.md)
// and answers 2xx once every release it orders is done.
func (s *Server) notify(w http.ResponseWriter, r *http.Request) {
	var n contract.Notification
	if err := json.NewDecoder(r.Body).Decode(&n); err != nil {
		http.Error(w, "bad notification: "+err.Error(), http.StatusBadRequest)
		return
	}
	if n.NodeID != s.cfg.Name {
		http.Error(w, "notification for "+n.NodeID+", this is "+s.cfg.Name, http.StatusConflict)
		return
	}
	received := time.Now()
	if n.Protocol < 2 {
		// Protocol 1 names the owned buckets without epochs or releases.
		n.Epochs = map[string]int64{}
		for _, name := range n.Buckets {
			n.Epochs[name] = 0
		}
	}
	if n.Fence {
		s.mu.Lock()
		s.fenceSeq = max(s.fenceSeq, n.Seq)
		s.fenceLocked("fenced by the registrar: " + n.Reason)
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	s.mu.Lock()
	stale := n.Seq != 0 && n.Seq < s.fenceSeq
	noState := !s.hasState
	s.mu.Unlock()
	if stale {
		http.Error(w, "stale message: sent before the last fence", http.StatusConflict)
		return
	}
	if n.Heartbeat {
		if noState {
			// Started or fenced since the last state: renewing a deadline
			// would not give the buckets back. Ask for the state.
			http.Error(w, "no state since start or the last fence: send the state", http.StatusConflict)
			return
		}
		s.mu.Lock()
		if n.ServeForMS > 0 {
			s.setDeadline(received.Add(time.Duration(n.ServeForMS) * time.Millisecond))
		}
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if len(n.Release) > 0 && s.cfg.RefuseRelease {
		http.Error(w, "this server does not release buckets", http.StatusServiceUnavailable)
		return
	}
	var start []*holding             // releases this message starts
	waitFor := map[string]*holding{} // every bucket it names that is held: answer once all are gone
	s.mu.Lock()
	if n.Seq != 0 && n.Seq < s.fenceSeq { // a fence came in since the check above
		s.mu.Unlock()
		http.Error(w, "stale message: sent before the last fence", http.StatusConflict)
		return
	}
	s.notified++
	s.hasState = true
	if n.ServeForMS > 0 {
		s.setDeadline(received.Add(time.Duration(n.ServeForMS) * time.Millisecond))
	}
	canHold := n.Protocol < 2 || n.ServeForMS > 0
	s.wanted, s.canAcquire = n.Epochs, canHold
	for name, h := range s.held {
		epoch, keep := n.Epochs[name]
		_, release := n.Release[name]
		switch {
		case release:
			waitFor[name] = h
			if !h.releasing {
				h.releasing = true
				start = append(start, h)
			}
		case !keep && !h.releasing:
			// Gone without a release order: its owner changed while this
			// server was not told to release (it was fenced or declared
			// gone). Drop it at once, saving nothing to shared storage.
			s.closeHold(name, h, "dropped")
		case keep && !h.releasing && h.epoch != 0 && h.epoch != epoch:
			// Another epoch: the bucket was on another server meanwhile,
			// so what this server has in memory is stale. Drop, reload.
			s.closeHold(name, h, "dropped")
		}
	}
	for name, epoch := range n.Epochs {
		h, ok := s.held[name]
		switch {
		case ok && !h.releasing:
			h.epoch = epoch // from 0 (no epoch known) to the first one
		case !ok && canHold:
			s.acquire(name, epoch)
		}
	}
	s.mu.Unlock()

	for _, h := range start {
		go s.release(h)
	}
	var notSaved []string
	for name, h := range waitFor {
		select {
		case <-h.done:
		case <-r.Context().Done():
			return // the registrar gave up; it sends the state again
		}
		s.mu.Lock()
		how := h.how
		s.mu.Unlock()
		if how != "released" {
			notSaved = append(notSaved, name+" ("+how+")")
		}
	}
	if len(notSaved) > 0 {
		http.Error(w, "not released, not saved: "+strings.Join(notSaved, ", "), http.StatusConflict)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// acquire starts holding a bucket; s.mu is held.
func (s *Server) acquire(name string, epoch int64) {
	s.log = append(s.log, Interval{Server: s.cfg.Name, Kind: "hold", Bucket: name, Epoch: epoch, Start: time.Now()})
	s.held[name] = &holding{name: name, epoch: epoch, logIndex: len(s.log) - 1, dirty: map[string]bool{}, done: make(chan struct{})}
}

// release gives up one bucket: new requests are already refused; close its
// sockets, wait for requests in flight, save if dirty, unload. If the
// latest state wants the bucket back (its move was aborted meanwhile), it
// is taken again.
func (s *Server) release(h *holding) {
	s.mu.Lock()
	name := h.name
	if s.held[name] != h {
		s.mu.Unlock()
		return
	}
	for c := range h.sockets {
		c.Close()
	}
	for h.inflight > 0 {
		s.changed.Wait()
	}
	dirty := len(h.dirty)
	s.mu.Unlock()
	if dirty > 0 {
		time.Sleep(s.cfg.SaveDelay)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[name] != h {
		return // fenced meanwhile: closed as "fenced", nothing saved
	}
	s.closeHold(name, h, "released")
	s.log[h.logIndex].Saved = dirty
	if epoch, ok := s.wanted[name]; ok && s.canAcquire {
		s.acquire(name, epoch)
	}
}

// closeHold ends a hold; s.mu is held.
func (s *Server) closeHold(name string, h *holding, how string) {
	for c := range h.sockets {
		c.Close()
	}
	s.log[h.logIndex].End = time.Now()
	s.log[h.logIndex].How = how
	h.how = how
	close(h.done)
	delete(s.held, name)
}

// setDeadline arms the fence timer; s.mu is held.
func (s *Server) setDeadline(t time.Time) {
	s.deadline = t
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(time.Until(t), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.deadline.IsZero() && !time.Now().Before(s.deadline) { // not renewed meanwhile
			s.fenceLocked("deadline passed without a renewal")
		}
	})
}

// fenceLocked drops every bucket at once; s.mu is held.
func (s *Server) fenceLocked(why string) {
	for name, h := range s.held {
		s.closeHold(name, h, "fenced")
	}
	s.hasState, s.wanted = false, nil
	now := time.Now()
	s.log = append(s.log, Interval{Server: s.cfg.Name, Kind: "fence", Start: now, End: now, How: why})
}
