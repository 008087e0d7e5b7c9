package caddymodule

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// An open status stream ends when its server begins to shut down: on exit
// Caddy waits for the server's Shutdown before it cleans modules up, so a
// stream that waited for Cleanup would keep the process from exiting for
// as long as an operator keeps the page open.
func TestStatusStreamEndsWhenTheServerShutsDown(t *testing.T) {
	fw := testFollower()
	fw.live = newStatusHub(time.Hour, func() (any, []byte) { return 1, []byte(`{}`) })
	defer fw.live.close()
	h := &DtableClusterAdmin{followerRef: followerRef{follower: fw}, log: zap.NewNop(), closing: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	defer srv.Close()

	for i := range 2 { // the second stream finds the hook registered
		resp, err := http.Get(srv.URL + "/events")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if resp.StatusCode != 200 || err != nil || !strings.HasPrefix(line, ":") {
			t.Fatalf("stream %d: %d %q %v", i, resp.StatusCode, line, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with status streams open: %v after %v; want the streams to end", err, time.Since(start))
	}
	t.Logf("shut down in %v with two streams open", time.Since(start).Round(time.Millisecond))
}
