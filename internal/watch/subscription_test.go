package watch

import (
	"testing"
	"time"
)

// A subscriber that does not read keeps at most MaxQueued snapshots, the
// newest ones, and still gets the latest state.
func TestSlowSubscriberQueueIsBounded(t *testing.T) {
	removed := false
	s := newSubscription(func() { removed = true })
	defer s.Close()
	total := MaxQueued + 500
	for i := 1; i <= total; i++ {
		s.push(&Snapshot{Revision: int64(i)})
	}
	s.mu.Lock()
	queued, skipped := len(s.queue), s.skipped
	s.mu.Unlock()
	// The delivery goroutine may hold one snapshot out of the queue.
	if queued > MaxQueued || skipped < 500-1 {
		t.Fatalf("queue %d (max %d), skipped %d", queued, MaxQueued, skipped)
	}
	var last int64
	for {
		select {
		case snap := <-s.C:
			if snap.Revision <= last {
				t.Fatalf("out of order: %d after %d", snap.Revision, last)
			}
			last = snap.Revision
			if last == int64(total) {
				s.Close()
				if !removed {
					t.Fatal("Close did not remove the subscription")
				}
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the latest snapshot never arrived (last %d)", last)
		}
	}
}
