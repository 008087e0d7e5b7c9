package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Ports are distinct within a process, also across calls, below the
// ephemeral range, and can be listened on.
func TestTakeDistinctListenableBelowTheEphemeralRange(t *testing.T) {
	seen := map[int]bool{}
	for range 20 {
		ports, err := Take(10)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			if seen[p] {
				t.Fatalf("port %d returned twice", p)
			}
			seen[p] = true
			if p < low || p >= ephemeralStart() {
				t.Fatalf("port %d outside [%d, %d)", p, low, ephemeralStart())
			}
		}
	}
	for p := range seen {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
	}
}
