// Package freeport finds free TCP ports on 127.0.0.1, for tests and for the
// tools that start several servers on this machine. Ports are taken by
// listening on port 0 and closed before they are returned, so another
// process may take one in between; callers that must not race retry.
package freeport

import "net"

// Take returns n distinct free ports on 127.0.0.1.
func Take(n int) ([]int, error) {
	ports := make([]int, 0, n)
	listeners := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	// All n stay open until the end so that no port is returned twice.
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
