// Package testutil holds the few helpers every test package needs: a
// polling wait (Eventually), its converse (Consistently) and a free port.
package testutil

import (
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/freeport"
)

// PollInterval is how often Eventually and Consistently check their
// condition.
const PollInterval = 10 * time.Millisecond

// Eventually polls cond until it holds or d passes (then the test fails,
// naming what it waited for), and returns how long it took.
func Eventually(tb testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			tb.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(PollInterval)
	}
	return time.Since(start)
}

// Consistently checks cond every PollInterval for d: the test fails, naming
// what should have held, the first time it does not. It is for what must
// not happen (a move, a disconnect), where waiting out d is the point.
func Consistently(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	start := time.Now()
	for {
		if !cond() {
			tb.Fatalf("after %v of %v: no longer %s", time.Since(start).Round(time.Millisecond), d, what)
		}
		if time.Since(start) >= d {
			return
		}
		time.Sleep(PollInterval)
	}
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(tb testing.TB) int {
	tb.Helper()
	ports, err := freeport.Take(1)
	if err != nil {
		tb.Fatal(err)
	}
	return ports[0]
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1. Several calls
// of FreePort may return one port twice (each closes its port before the
// next call takes one).
func FreePorts(tb testing.TB, n int) []int {
	tb.Helper()
	ports, err := freeport.Take(n)
	if err != nil {
		tb.Fatal(err)
	}
	return ports
}
