package caddymodule

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// A reload that keeps the etcd settings keeps a bucket's WebSocket open
// (stream_close_delay) and closes it when the bucket moves; one whose etcd
// settings give another shared follower (here: the endpoints written
// without http://) must not leave the old follower's WebSockets open to an
// old owner: they are closed, and new ones reach the new owner.
func TestReloadWithOtherEtcdSettingsClosesTheOldFollowersStreams(t *testing.T) {
	e := setupWith(t, extraConfig{proxyBlock: "\t\tstream_close_delay 5m"})
	kept, moving := dialWS(t, 0x11), dialWS(t, 0x10) // n3's, n2's
	for c, want := range map[*websocket.Conn]string{kept: "n3:a", moving: "n2:a"} {
		if got, err := echo(c, "a"); err != nil || got != want {
			t.Fatalf("echo: %q %v; want %q", got, err, want)
		}
	}

	// The same etcd settings: the stream outlives the reload.
	e.tester.InitServer(strings.Replace(e.config(), "lb_try_duration 500ms", "lb_try_duration 600ms", 1), "caddyfile")
	if got, err := echo(moving, "b"); err != nil || got != "n2:b" {
		t.Fatalf("after a reload with the same etcd settings: %q %v; want the stream kept", got, err)
	}

	// Other etcd settings: another follower.
	hostPorts := strings.ReplaceAll(e.config(), "http://127.0.0.1:", "127.0.0.1:")
	e.tester.InitServer(hostPorts, "caddyfile")
	newFollower := func() *follower {
		var fw *follower
		forEachFollower(func(f *follower) {
			if !strings.HasPrefix(f.endpoints[0], "http://") {
				fw = f
			}
		})
		return fw
	}
	if newFollower() == nil {
		t.Fatal("the reload did not start a follower with the new etcd settings")
	}
	e.putAssignment(2, map[bucket.Bucket]string{0x10: "n1"})
	testutil.Eventually(t, 10*time.Second, "the new follower routes by version 2", func() bool {
		return newFollower().table.Load().version == 2
	})
	moving.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, _, err := moving.ReadMessage(); err == nil {
		t.Fatal("the moved bucket's stream, opened before the reload, is still open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the moved bucket's stream, opened before the reload, was not closed within 3s of the move: it still reaches the old owner")
	}
	again := dialWS(t, 0x10)
	if got, err := echo(again, "c"); err != nil || got != "n1:c" {
		t.Fatalf("a new stream: %q %v; want the new owner n1", got, err)
	}
}
