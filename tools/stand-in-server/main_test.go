package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/contract"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/usage"
)

func TestServesStrictStandIn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-name", "dtable-server-01", "-save-delay", "0s"}, io.Discard, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("run ended before serving: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not serving after 10s")
	}

	// A request naming no base is served, with the server's name.
	resp, err := http.Get("http://" + addr + "/ping/")
	if err != nil {
		t.Fatal(err)
	}
	var a fakeserver.Answer
	err = json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || a.Node != "dtable-server-01" {
		t.Fatalf("GET /ping/: %d %+v %v; want 200 from dtable-server-01", resp.StatusCode, a, err)
	}
	// Strict: a base whose bucket it was never given is refused.
	resp, err = http.Get("http://" + addr + "/dtables/5c264e76-0e5a-4d3b-9c6f-2a1b3c4d5e6f/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != contract.StatusNotMine {
		t.Fatalf("a base of a bucket not held: %d, want %d (strict mode)", resp.StatusCode, contract.StatusNotMine)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop within 10s")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"no -name", []string{}},
		{"stray argument", []string{"-name", "a", "extra"}},
		{"unknown flag", []string{"-name", "a", "-bogus"}},
		{"negative -save-delay", []string{"-name", "a", "-save-delay", "-1s"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.args, io.Discard, nil)
			if usage.ExitCode(err) != 2 {
				t.Errorf("run(%q) = %v: want a usage error (exit 2)", tt.args, err)
			}
		})
	}
}
