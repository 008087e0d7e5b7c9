package caddymodule

import (
	"sync"
	"time"
)

// statusHub fans one follower's state out to every status page viewer
// (GET /events). All viewers share it: the state is built once per change
// by the hub's own goroutine, never per viewer, and only while someone
// watches. It never waits for a viewer: each has a one-slot wake-up
// channel, so a burst of changes reaches a slow viewer as the latest state
// only, and a viewer that does not read blocks nobody but itself.
type statusHub struct {
	// build makes the current state: a comparable key that changes
	// whenever the state a viewer sees does (so an unchanged state is not
	// sent again), and the encoded event data. Only the hub's goroutine
	// calls it.
	build func() (key any, data []byte)
	every time.Duration // how often the state is rebuilt while viewers watch (leader, etcd connection)

	kick chan struct{} // buffered 1: the follower's state changed, or a viewer joined
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	key     any
	data    []byte // the latest state; nil while nobody watches
	seq     uint64 // grows by one whenever data changes
	viewers map[*statusViewer]struct{}
}

// statusViewer is one open GET /events.
type statusViewer struct {
	wake chan struct{} // buffered 1: a newer state may be there
}

func newStatusHub(every time.Duration, build func() (any, []byte)) *statusHub {
	h := &statusHub{build: build, every: every, kick: make(chan struct{}, 1), stop: make(chan struct{}),
		done: make(chan struct{}), viewers: map[*statusViewer]struct{}{}}
	go h.run()
	return h
}

// changed tells the hub that the follower's state changed. It never blocks.
func (h *statusHub) changed() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// join adds a viewer; it is woken as soon as a state is there. leave
// removes it.
func (h *statusHub) join() (v *statusViewer, leave func()) {
	v = &statusViewer{wake: make(chan struct{}, 1)}
	h.mu.Lock()
	h.viewers[v] = struct{}{}
	if h.data != nil {
		v.wake <- struct{}{}
	}
	h.mu.Unlock()
	h.changed() // a fresh state for the newcomer (the others get it only if it differs)
	return v, func() {
		h.mu.Lock()
		delete(h.viewers, v)
		h.mu.Unlock()
	}
}

// latest returns the current state and its sequence number (0: none yet).
func (h *statusHub) latest() ([]byte, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.data, h.seq
}

// stopped is closed when the hub stops (its follower is released): the
// viewers end their streams.
func (h *statusHub) stopped() <-chan struct{} { return h.stop }

// close stops the hub and waits for its goroutine.
func (h *statusHub) close() {
	h.once.Do(func() { close(h.stop) })
	<-h.done
}

// viewerCount is how many viewers watch now.
func (h *statusHub) viewerCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.viewers)
}

func (h *statusHub) run() {
	defer close(h.done)
	ticker := time.NewTicker(h.every)
	defer ticker.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-h.kick:
		case <-ticker.C:
		}
		h.refresh()
	}
}

// refresh builds the state if anyone watches and wakes the viewers. With
// nobody watching it forgets the state, so the next viewer never gets a
// stale one first.
func (h *statusHub) refresh() {
	if h.viewerCount() == 0 {
		h.mu.Lock()
		h.key, h.data = nil, nil
		h.mu.Unlock()
		return
	}
	key, data := h.build()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.data == nil || key != h.key {
		h.key, h.data = key, data
		h.seq++
	}
	for v := range h.viewers {
		select {
		case v.wake <- struct{}{}:
		default: // already woken: it reads the latest state when it gets to it
		}
	}
}
