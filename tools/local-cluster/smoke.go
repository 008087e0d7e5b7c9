package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
)

const (
	proxy = "http://127.0.0.1:5550"
	admin = "http://127.0.0.1:5555"
)

// smoke checks the running cluster end to end, as an operator would:
// every bucket over HTTP and WebSocket reaches the owner the assignment
// names, a stopped server's buckets move and a restarted one takes
// nothing, POST :5555/rebalance/ evens the counts, and the same path on
// :5550 is proxied rather than served.
func (lc *localCluster) smoke(ctx context.Context) error {
	st, err := waitFor(ctx, 60*time.Second, "all buckets assigned to all nodes", func(st status) bool {
		return st.Version > 0 && st.Unassigned == 0 && len(st.Nodes) == lc.nodes && st.Nodes[0].Buckets > 0 && st.Nodes[lc.nodes-1].Buckets > 0
	})
	if err != nil {
		return err
	}
	lc.logf("assignment version %d: %s", st.Version, st.counts())

	if err := checkAllBuckets(); err != nil {
		return err
	}
	lc.logf("256 buckets routed to their owners over HTTP and WebSocket")

	// Stop one server's registrar: its buckets move, nothing else.
	victim := st.Nodes[1].NodeID
	before := st.owners()
	t0 := time.Now()
	lc.signal(victim, syscall.SIGTERM) // returns once the registrar has exited: after the handoff
	st, err = waitFor(ctx, 30*time.Second, victim+"'s buckets handed off", func(st status) bool {
		return st.count(victim) == 0 && st.Unassigned == 0 && st.settled()
	})
	if err != nil {
		return err
	}
	moved := 0
	for b, n := range st.owners() {
		if before[b] != n {
			if before[b] != victim {
				return fmt.Errorf("bucket %s moved from %s, which is alive", b, before[b])
			}
			moved++
		}
	}
	lc.logf("stopped %s: %d buckets handed off in %v, no other bucket moved; %s", victim, moved, time.Since(t0).Round(time.Millisecond), st.counts())

	if err := lc.startRegistrar(victim, lc.local[victim]); err != nil {
		return err
	}
	version := st.Version
	time.Sleep(3 * time.Second)
	if st, err = getStatus(); err != nil || st.Version != version {
		return fmt.Errorf("a returning node moved buckets (version %d -> %d, %v)", version, st.Version, err)
	}
	lc.logf("restarted %s: nothing moved (version %d)", victim, st.Version)

	resp, body, err := call("POST", admin+"/rebalance/")
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("POST :5555/rebalance/: %v %s", err, body)
	}
	var result struct {
		Version int64             `json:"version"`
		Moves   []json.RawMessage `json:"moves"`
		Counts  map[string]int    `json:"counts"`
	}
	json.Unmarshal([]byte(body), &result)
	lo, hi := 256, 0
	for _, c := range result.Counts {
		lo, hi = min(lo, c), max(hi, c)
	}
	if hi-lo > 1 || len(result.Counts) != lc.nodes {
		return fmt.Errorf("after rebalance: %v", result.Counts)
	}
	lc.logf("POST :5555/rebalance/: version %d, %d moves, counts %v", result.Version, len(result.Moves), result.Counts)
	t0 = time.Now()
	st, err = waitFor(ctx, 60*time.Second, "rebalance handoffs done", func(st status) bool { return st.Version >= result.Version && st.settled() })
	if err != nil {
		return err
	}
	lc.logf("rebalance handoffs done in %v (version %d): %s", time.Since(t0).Round(time.Millisecond), st.Version, st.counts())
	if err := checkAllBuckets(); err != nil {
		return err
	}
	resp, body, err = call("POST", proxy+"/rebalance/")
	var a fakeserver.Answer
	if err != nil || json.Unmarshal([]byte(body), &a) != nil || a.Node == "" {
		return fmt.Errorf("POST :5550/rebalance/ was not proxied to a server: %v %s", err, body)
	}
	lc.logf("POST :5550/rebalance/ is not served there (proxied to %s)", a.Node)
	fmt.Println("smoke: 4 passed, 0 failed")
	return nil
}

type nodeView struct {
	NodeID       string `json:"node_id"`
	LocalNodeURL string `json:"local_node_url"`
	State        string `json:"state"`
	Buckets      int    `json:"buckets"`
}

type status struct {
	Version    int64             `json:"version"`
	Unassigned int               `json:"unassigned"`
	Nodes      []nodeView        `json:"nodes"`
	Moving     []json.RawMessage `json:"moving"` // handoffs in progress
	Queued     int               `json:"queued"`
	all        []nodeView
	buckets    []struct {
		Bucket string `json:"bucket"`
		NodeID string `json:"node_id"`
	}
}

// settled: no handoff in progress or queued.
func (s status) settled() bool { return len(s.Moving) == 0 && s.Queued == 0 }

func (s status) count(node string) int {
	for _, n := range s.all {
		if n.NodeID == node {
			return n.Buckets
		}
	}
	return 0
}

func (s status) counts() string {
	var parts []string
	for _, n := range s.all {
		parts = append(parts, fmt.Sprintf("%s=%d", n.NodeID, n.Buckets))
	}
	return strings.Join(parts, " ")
}

func (s status) owners() map[string]string {
	m := map[string]string{}
	for _, b := range s.buckets {
		m[b.Bucket] = b.NodeID
	}
	return m
}

// getStatus reads the operator site: live nodes and bucket owners.
func getStatus() (status, error) {
	var st status
	_, body, err := call("GET", admin+"/status")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return st, fmt.Errorf("GET /status: %v: %s", err, body)
	}
	st.all = st.Nodes
	var live []nodeView
	for _, n := range st.Nodes {
		if n.State == "live" {
			live = append(live, n)
		}
	}
	st.Nodes = live
	_, body, err = call("GET", admin+"/buckets")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(body), &st.buckets)
}

func waitFor(ctx context.Context, d time.Duration, what string, cond func(status) bool) (status, error) {
	deadline := time.Now().Add(d)
	for {
		st, err := getStatus()
		if err == nil && cond(st) {
			return st, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return st, fmt.Errorf("not within %v: %s (last status %+v, %v)", d, what, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func call(method, url string) (*http.Response, string, error) {
	req, _ := http.NewRequest(method, url, nil)
	client := &http.Client{Timeout: 15 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), nil
}

// checkAllBuckets sends one HTTP request and one WebSocket message per
// bucket through the proxy and checks each reached the owner that the
// operator site's lookup names.
func checkAllBuckets() error {
	for i := range bucket.Count {
		b := bucket.Bucket(i)
		uuid := fmt.Sprintf("%s9a1c2e-0e5a-448a-9f34-580b551364ca", b)
		_, body, err := call("GET", admin+"/lookup/"+uuid)
		var look struct {
			NodeID string `json:"node_id"`
		}
		if err != nil || json.Unmarshal([]byte(body), &look) != nil || look.NodeID == "" {
			return fmt.Errorf("lookup %s: %v %s", uuid, err, body)
		}
		_, body, err = call("GET", proxy+"/api/v1/dtables/"+uuid+"/rows/")
		var a fakeserver.Answer
		if err != nil || json.Unmarshal([]byte(body), &a) != nil || a.Node != look.NodeID || a.Bucket != b.String() {
			return fmt.Errorf("HTTP, bucket %s: reached %q (bucket header %q), owner is %s: %v %s", b, a.Node, a.Bucket, look.NodeID, err, body)
		}
		c, _, err := websocket.DefaultDialer.Dial("ws://127.0.0.1:5550/socket.io/?EIO=4&transport=websocket&dtable_uuid="+uuid, nil)
		if err != nil {
			return fmt.Errorf("WebSocket, bucket %s: %v", b, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		err = c.WriteMessage(websocket.TextMessage, []byte("ping"))
		_, msg, rerr := c.ReadMessage()
		c.Close()
		if err != nil || rerr != nil || string(msg) != look.NodeID+":ping" {
			return fmt.Errorf("WebSocket, bucket %s: got %q, want %s:ping (%v %v)", b, msg, look.NodeID, err, rerr)
		}
	}
	return nil
}
