package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// echoBackend is a stand-in node: WebSocket echo, and any other request
// answered with its name (so a client sees which node served it). It
// counts the WebSocket streams it holds.
type echoBackend struct {
	name string
	addr string
	srv  *http.Server
	open atomic.Int64
}

var upgrader = websocket.Upgrader{
	ReadBufferSize: 512, WriteBufferSize: 512,
	CheckOrigin: func(*http.Request) bool { return true },
}

func startEchoBackend(name string) (*echoBackend, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &echoBackend{name: name, addr: l.Addr().String()}
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve), ReadHeaderTimeout: 10 * time.Second}
	go b.srv.Serve(l)
	return b, nil
}

func (b *echoBackend) serve(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte(b.name))
		return
	}
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	b.open.Add(1)
	defer b.open.Add(-1)
	defer c.Close()
	for {
		t, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(t, msg); err != nil {
			return
		}
	}
}

func (b *echoBackend) close() { b.srv.Close() }

// wsClient is one idle WebSocket through a proxy, for a base in bucket.
type wsClient struct {
	bucket   int
	conn     *websocket.Conn
	closedAt atomic.Int64 // UnixNano when the proxy closed it; 0 while open
	done     chan struct{}
}

// socketPath is the socket.io URL a browser opens for a base in bucket b.
func socketPath(b int) string {
	return fmt.Sprintf("/socket.io/?dtable_uuid=%02x264e76-0e5a-448a-9f34-580b551364ca&EIO=4&transport=websocket", b)
}

// basePath is an API path for a base in bucket b.
func basePath(b int) string {
	return fmt.Sprintf("/api/v1/dtables/%02x264e76-0e5a-448a-9f34-580b551364ca/rows/", b)
}

// sourceIPs spreads the clients' connections over several loopback
// source addresses, each with its own ephemeral port range.
const sourceIPs = 8

// openClients opens n WebSockets to proxyAddr (host:port), client i for a
// base in bucket i%256 from source address 127.0.0.(2+i%sourceIPs), at
// most conc at a time; each sends one message and waits for its echo
// before it counts as open. Then each waits for the proxy to close it
// (closedAt).
func openClients(ctx context.Context, proxyAddr string, n, conc int) ([]*wsClient, error) {
	clients := make([]*wsClient, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			break
		}
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialClient(ctx, proxyAddr, i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("stream %d: %w", i, err)
				}
				return
			}
			clients[i] = c
		}(i)
	}
	wg.Wait()
	if firstErr != nil {
		closeClients(clients)
		return nil, firstErr
	}
	return clients, nil
}

func dialClient(ctx context.Context, proxyAddr string, i int) (*wsClient, error) {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%sourceIPs))}
	d := websocket.Dialer{
		NetDialContext:   (&net.Dialer{LocalAddr: src, Timeout: 10 * time.Second}).DialContext,
		HandshakeTimeout: 15 * time.Second,
		ReadBufferSize:   256, WriteBufferSize: 256,
	}
	b := i % 256
	var conn *websocket.Conn
	var err error
	for attempt := 0; attempt < 3; attempt++ { // a busy machine may drop a SYN
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		conn, _, err = d.DialContext(cctx, "ws://"+proxyAddr+socketPath(b), nil)
		cancel()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, []byte("2probe")); err != nil {
		conn.Close()
		return nil, err
	}
	if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != "2probe" {
		conn.Close()
		return nil, fmt.Errorf("echo: %q %v", msg, err)
	}
	conn.SetReadDeadline(time.Time{})
	c := &wsClient{bucket: b, conn: conn, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				c.closedAt.Store(time.Now().UnixNano())
				return
			}
		}
	}()
	return c, nil
}

// closeClients closes every open client and waits for their readers.
func closeClients(clients []*wsClient) {
	for _, c := range clients {
		if c != nil {
			c.conn.Close()
		}
	}
	for _, c := range clients {
		if c != nil {
			<-c.done
		}
	}
}

// countClosed counts the clients the proxy closed.
func countClosed(clients []*wsClient) int {
	n := 0
	for _, c := range clients {
		if c != nil && c.closedAt.Load() != 0 {
			n++
		}
	}
	return n
}
