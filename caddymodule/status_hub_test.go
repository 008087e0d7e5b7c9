package caddymodule

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// The hub builds the state only while someone watches, never waits for a
// viewer, and gives a viewer that fell behind the latest state only.
func TestStatusHubCoalescesAndNeverWaits(t *testing.T) {
	var version, builds atomic.Int64
	hub := newStatusHub(time.Hour, func() (any, []byte) {
		builds.Add(1)
		v := version.Load()
		return v, []byte(strconv.FormatInt(v, 10))
	})
	defer hub.close()

	// Nobody watches: changes build nothing.
	for range 100 {
		version.Add(1)
		hub.changed()
	}
	time.Sleep(50 * time.Millisecond)
	if n := builds.Load(); n != 0 {
		t.Fatalf("%d builds with nobody watching", n)
	}

	slow, leaveSlow := hub.join() // never reads until the end
	defer leaveSlow()
	fast, leaveFast := hub.join()
	defer leaveFast()
	testutil.Eventually(t, time.Second, "a first state", func() bool { data, _ := hub.latest(); return data != nil })

	// A burst of 10 000 changes: changed never blocks, whatever the slow
	// viewer does.
	seen := make(chan string, 1)
	stopFast := make(chan struct{})
	fastDone := make(chan struct{})
	go func() {
		defer close(fastDone)
		for {
			select {
			case <-fast.wake:
				data, _ := hub.latest()
				select {
				case seen <- string(data):
				default:
					<-seen
					seen <- string(data)
				}
			case <-stopFast:
				return
			}
		}
	}()
	start := time.Now()
	for range 10000 {
		version.Add(1)
		hub.changed()
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("10000 changes took %v: the hub waited", took)
	}
	final := strconv.FormatInt(version.Load(), 10)
	testutil.Eventually(t, 2*time.Second, "the fast viewer sees the final state", func() bool {
		select {
		case s := <-seen:
			return s == final
		default:
			return false
		}
	})
	close(stopFast)
	<-fastDone
	if n := builds.Load(); n >= 10000 {
		t.Errorf("%d builds for 10000 changes: bursts are not coalesced", n)
	}
	t.Logf("10000 changes: %d builds", builds.Load())

	// The slow viewer has one wake-up waiting, and it leads to the latest state.
	select {
	case <-slow.wake:
	default:
		t.Fatal("the slow viewer was not woken")
	}
	if data, _ := hub.latest(); string(data) != final {
		t.Fatalf("latest %s; want %s", data, final)
	}

	// An unchanged state is not a new one.
	_, seq := hub.latest()
	hub.changed()
	time.Sleep(50 * time.Millisecond)
	if _, again := hub.latest(); again != seq {
		t.Fatalf("an unchanged state got a new sequence number: %d -> %d", seq, again)
	}

	// Closing the hub tells the viewers.
	hub.close()
	select {
	case <-hub.stopped():
	default:
		t.Fatal("stopped() open after close")
	}
}

// With its viewers gone the hub forgets the state: the next viewer never
// starts from a stale one.
func TestStatusHubForgetsWithoutViewers(t *testing.T) {
	var version atomic.Int64
	hub := newStatusHub(time.Hour, func() (any, []byte) {
		v := version.Load()
		return v, []byte(strconv.FormatInt(v, 10))
	})
	defer hub.close()
	v, leave := hub.join()
	<-v.wake
	if data, _ := hub.latest(); string(data) != "0" {
		t.Fatalf("first state %s", data)
	}
	leave()
	version.Store(7)
	hub.changed()
	testutil.Eventually(t, time.Second, "the state forgotten", func() bool { data, _ := hub.latest(); return data == nil })
	v, leave = hub.join()
	defer leave()
	<-v.wake
	if data, _ := hub.latest(); string(data) != "7" {
		t.Fatalf("the new viewer's first state: %s; want 7", data)
	}
}
