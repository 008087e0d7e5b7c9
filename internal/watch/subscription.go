package watch

import "sync"

// Subscription delivers the published snapshots, in order, on C. The
// watcher never waits for a slow subscriber: snapshots queue up per
// subscriber until they are received, at most MaxQueued of them; a
// subscriber further behind skips the oldest. Each snapshot is a whole
// state, so a skip loses only intermediate states, never the latest.
type Subscription struct {
	C <-chan *Snapshot

	c       chan *Snapshot
	mu      sync.Mutex
	queue   []*Snapshot
	skipped int           // snapshots dropped because the queue was full
	wake    chan struct{} // buffered 1: "the queue grew"
	done    chan struct{}
	closer  sync.Once
	remove  func()
}

func newSubscription(remove func()) *Subscription {
	s := &Subscription{
		c:    make(chan *Snapshot),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	s.C = s.c
	s.remove = remove
	go s.deliver()
	return s
}

// MaxQueued bounds each subscriber's queue.
const MaxQueued = 1024

func (s *Subscription) push(snap *Snapshot) {
	s.mu.Lock()
	if len(s.queue) >= MaxQueued {
		n := copy(s.queue, s.queue[len(s.queue)-MaxQueued+1:])
		clear(s.queue[n:])
		s.queue = s.queue[:n]
		s.skipped++
	}
	s.queue = append(s.queue, snap)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Subscription) deliver() {
	for {
		s.mu.Lock()
		var next *Snapshot
		if len(s.queue) > 0 {
			next = s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
		}
		s.mu.Unlock()
		if next == nil {
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		select {
		case s.c <- next:
		case <-s.done:
			return
		}
	}
}

// Close stops the delivery; C is not closed, so select on your own
// shutdown signal too.
func (s *Subscription) Close() {
	s.closer.Do(func() {
		s.remove()
		close(s.done)
	})
}

// Pending says how many snapshots wait to be received (the one being
// handed over not counted): how far behind the subscriber is.
func (s *Subscription) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}
