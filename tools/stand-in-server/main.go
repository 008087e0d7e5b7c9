// Command stand-in-server is a stand-in dtable-server: it serves
// internal/fakeserver in strict mode, so a cluster can run without a real
// dtable-server (docker-compose.yml runs two of them). It follows the
// server contract (docs/server-contract.md): it takes the registrar's
// notifications at /_cluster/notify, holds the buckets it is given at their
// epochs, saves (-save-delay) and unloads on a release, fences at its
// deadline, and answers 421 to a request for a base whose bucket it does not
// hold. Every other request is answered with a JSON description of what it
// received (node, path, the proxy's X-Dtable-* headers); WebSocket messages
// are echoed prefixed with the name. GET /_fake/log lists what it held and
// served.
//
//	stand-in-server -name dtable-server-01 -listen :8000 -save-delay 200ms
//
// Pair it with a registrar: -notify-url http://HOST:PORT/_cluster/notify.
// It keeps its log in memory: fine for a demonstration, not for months.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/usage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stderr, nil)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "stand-in-server: %v\n", err)
	}
	os.Exit(usage.ExitCode(err))
}

// run serves until ctx ends. ready, if not nil, receives the address
// listened on once the server accepts connections.
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	fs := flag.NewFlagSet("stand-in-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":8000", "address to serve on (host:port)")
	name := fs.String("name", "", "this server's name, as in its answers; use its node_id (required)")
	saveDelay := fs.Duration("save-delay", 200*time.Millisecond, "how long saving a written bucket takes on release")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usage.Wrap(err)
	}
	switch {
	case fs.NArg() > 0:
		return usage.Errorf("unexpected arguments %q", fs.Args())
	case *name == "":
		return usage.Errorf("-name is required (the server's node_id, e.g. dtable-server-01)")
	case *saveDelay < 0:
		return usage.Errorf("-save-delay must not be negative, got %v", *saveDelay)
	}

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	logger := log.New(stderr, "", log.LstdFlags)
	srv := &http.Server{
		Handler:           fakeserver.New(fakeserver.Config{Name: *name, Strict: true, SaveDelay: *saveDelay}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          logger,
	}
	logger.Printf("stand-in-server %s: strict, save delay %v, listening on %s (notifications at %s)",
		*name, *saveDelay, l.Addr(), fakeserver.NotifyPath)
	if ready != nil {
		ready <- l.Addr().String()
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	logger.Printf("stand-in-server %s: stopping", *name)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close() // open WebSocket streams do not end by themselves
	}
	return nil
}
