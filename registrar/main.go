// Command registrar runs beside each dtable-server. It registers the node
// (node_id, node_url, local_node_url) in etcd under a lease, keeps the lease
// alive, registers again if the lease is lost, and revokes it on SIGTERM or
// SIGINT so the node disappears at once. See README.md for the flags.
//
// Where things are:
//
//   - registration.go: the registration and its lease. runRegistrar wires
//     the parts; registrar.run registers the node key under a
//     concurrency.Session's lease, hold keeps it (its Done is the loss
//     signal) and rewrites a key deleted by hand, and withdraw ends it on
//     the way out (internal/leases).
//   - serverlink.go: the link to the local dtable-server (protocol 2 of
//     docs/server-contract.md): what it holds and releases, the release
//     acknowledgements in etcd, its serving deadline, fencing.
//   - notify.go: protocol 1, a POST of the latest state on every change.
//   - health.go: the optional health gate (registered only while healthy).
//   - config.go: flags, the dtable_server_config.json file, ETCDCTL_*
//     variables, and their validation.
//
// Exit codes: 0 after a clean stop, 1 on a runtime failure (such as another
// live registration with the same node_id but other URLs), 2 on a bad
// config file or flags.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/logging"
	"github.com/dtablecluster/dtable-router/internal/usage"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	err := parseAndRun(args, stderr)
	if code := usage.ExitCode(err); code != 0 {
		fmt.Fprintf(stderr, "registrar: %v\n", err)
		return code
	}
	return 0
}

func parseAndRun(args []string, stderr io.Writer) error {
	s, err := parseSettings(args, stderr)
	if err != nil {
		return err
	}
	log, err := logging.New(s.logLevel, s.logJSON, stderr)
	if err != nil {
		return usage.Errorf("flag -log-level: %v", err)
	}
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runRegistrar(ctx, s, log); err != nil {
		log.Error("registrar stopped", zap.Error(err))
		return err
	}
	return nil
}
