// Package freeport finds free TCP ports on this machine, for tests and for
// the tools that start several servers on it.
//
// A port is returned closed, so it can be taken by someone else before its
// caller listens on it. Two things make that rare:
//   - Ports come from below the kernel's ephemeral range
//     (/proc/sys/net/ipv4/ip_local_port_range), never from it: the kernel
//     hands ephemeral ports to every outgoing connection (a test with
//     thousands of client connections takes thousands of them), and a port
//     found by listening on port 0 is one of them. Ports below the range
//     are only ever taken by an explicit listen.
//   - A process never gets one port twice, and each port is checked free on
//     the wildcard address and on 127.0.0.1 (a server may listen on either).
//
// Callers that still must not race retry.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// The ports handed out come from [low, ephemeralStart).
const low = 10000

var (
	mu     sync.Mutex
	handed = map[int]bool{}
)

// Take returns n distinct free ports.
func Take(n int) ([]int, error) {
	mu.Lock()
	defer mu.Unlock()
	high := ephemeralStart()
	ports := make([]int, 0, n)
	// Bounded: the range holds thousands of ports, nearly all free.
	for tries := 0; len(ports) < n; tries++ {
		if tries >= 100*n+1000 {
			return nil, fmt.Errorf("freeport: no %d free ports in [%d, %d) after %d tries", n, low, high, tries)
		}
		p := low + rand.IntN(high-low)
		if handed[p] || !free(p) {
			continue
		}
		handed[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// free reports whether p can be listened on, on all addresses and on
// 127.0.0.1.
func free(p int) bool {
	for _, addr := range []string{":" + strconv.Itoa(p), "127.0.0.1:" + strconv.Itoa(p)} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// ephemeralStart is the first port of the kernel's ephemeral range; 32768
// (Linux's default) where the range cannot be read or makes no room.
func ephemeralStart() int {
	const fallback = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fallback
	}
	fields := strings.Fields(string(b))
	if len(fields) < 1 {
		return fallback
	}
	start, err := strconv.Atoi(fields[0])
	if err != nil || start < low+1000 {
		return fallback
	}
	return start
}
