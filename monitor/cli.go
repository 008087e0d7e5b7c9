package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/logging"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/statusview"
	"github.com/dtablecluster/dtable-router/internal/usage"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// runCLI runs one operator command.
func runCLI(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := flag.NewFlagSet("monitor "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.addFlags(fs)
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for etcd and the leading monitor")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	dryRun := false
	if cmd != "status" {
		fs.BoolVar(&dryRun, "dry-run", false, "show the plan without changing anything")
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := c.finish(); err != nil {
		return usage.Wrap(err)
	}
	req := monitorapi.Request{DryRun: dryRun}
	want := 0
	switch cmd {
	case "rebalance":
		req.Op = monitorapi.OpRebalance
	case "drain", "undrain":
		req.Op, want = cmd, 1
	case "pin":
		req.Op, want = monitorapi.OpPin, 2
	case "unpin":
		req.Op, want = monitorapi.OpUnpin, 1
	case "auto-rebalance":
		req.Op, want = monitorapi.OpAutoRebalance, 1
	}
	if len(pos) != want {
		return usage.Errorf("want %d argument(s), got %d: %q\n\n%s", want, len(pos), pos, usageText)
	}
	switch cmd {
	case "drain", "undrain":
		req.Node = pos[0]
	case "pin":
		req.Bucket, req.Node = pos[0], pos[1]
	case "unpin":
		req.Bucket = pos[0]
	case "auto-rebalance":
		switch pos[0] {
		case "on":
			req.Enabled = true
		case "off":
		default:
			return usage.Errorf("auto-rebalance: want on or off, got %q", pos[0])
		}
	}
	if req.Bucket != "" {
		b, err := bucket.Parse(req.Bucket)
		if err != nil {
			return usage.Wrap(err)
		}
		req.Bucket = b.String()
	}

	log, err := cliLogger(c, stderr)
	if err != nil {
		return err
	}
	cli, err := c.client(log)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	if cmd == "status" {
		return status(ctx, c, cli, log, *asJSON, stdout)
	}
	host, _ := os.Hostname()
	req.From = "monitor-cli@" + host
	resp, err := monitorapi.Send(ctx, cli, c.layout, req)
	if resp != nil {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(resp)
		} else {
			printResponse(stdout, resp)
		}
	}
	return err
}

// cliLogger logs warnings and errors only, unless asked otherwise.
func cliLogger(c common, stderr io.Writer) (*zap.Logger, error) {
	level := c.logLevel
	if level == "info" {
		level = "warn"
	}
	log, err := logging.New(level, c.logJSON, stderr)
	if err != nil {
		return nil, usage.Errorf("flag -log-level: %v", err)
	}
	return log, nil
}

// status prints the nodes, their bucket counts, the version and the leader.
// It reads etcd directly and needs no running monitor.
func status(ctx context.Context, c common, cli *clientv3.Client, log *zap.Logger, asJSON bool, stdout io.Writer) error {
	w := watch.New(watch.Config{Client: cli, Layout: c.layout, Logger: log.Named("watch")})
	w.Start()
	defer w.Stop()
	snap, err := w.WaitReady(ctx)
	if err != nil {
		return err
	}
	st := statusview.NewStatus(c.layout.Prefix, snap)
	if st.Leader, err = monitorapi.Leader(ctx, cli, c.layout); err != nil {
		return fmt.Errorf("read the leader: %w", err)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(stdout, "prefix %s, etcd revision %d\n", st.Prefix, st.Revision)
	if st.Version == 0 {
		fmt.Fprintln(stdout, "assignment: none yet")
	} else {
		fmt.Fprintf(stdout, "assignment: version %d, %d bucket(s) unassigned\n", st.Version, st.Unassigned)
	}
	if st.AssignmentError != "" {
		fmt.Fprintf(stdout, "assignment in etcd is INVALID: %s\n", st.AssignmentError)
	}
	leader := st.Leader
	if leader == "" {
		leader = "none (no monitor running)"
	}
	fmt.Fprintf(stdout, "leader: %s\n", leader)
	auto := "off"
	if st.AutoRebalance {
		auto = "on"
	}
	pins := make([]string, 0, len(st.Pins))
	for b, n := range st.Pins {
		pins = append(pins, b+"->"+n)
	}
	slices.Sort(pins)
	fmt.Fprintf(stdout, "auto-rebalance: %s; drained: %s; pins: %s\n", auto, listOrNone(st.Drained), listOrNone(pins))
	if st.SettingsError != "" {
		fmt.Fprintf(stdout, "settings in etcd are INVALID: %s\n", st.SettingsError)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tBUCKETS\tLOCAL_NODE_URL\tNODE_URL")
	for _, n := range st.Nodes {
		state := n.State
		if n.Error != "" {
			state += " (invalid value: " + n.Error + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", n.NodeID, state, n.Buckets, n.LocalNodeURL, n.NodeURL)
	}
	return tw.Flush()
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func printResponse(w io.Writer, r *monitorapi.Response) {
	if !r.OK {
		return // the error says it
	}
	what := map[string]string{
		monitorapi.OpRebalance: "rebalance", monitorapi.OpDrain: "drain", monitorapi.OpUndrain: "undrain",
		monitorapi.OpPin: "pin", monitorapi.OpUnpin: "unpin", monitorapi.OpAutoRebalance: "auto-rebalance",
	}[r.Op]
	if r.DryRun {
		fmt.Fprintf(w, "%s (dry run, nothing changed): %d move(s) planned on version %d\n", what, len(r.Moves), r.PreviousVersion)
	} else if r.Version != r.PreviousVersion {
		fmt.Fprintf(w, "%s: version %d -> %d, %d move(s)\n", what, r.PreviousVersion, r.Version, len(r.Moves))
	} else {
		fmt.Fprintf(w, "%s: done, no bucket moved (version %d)\n", what, r.Version)
	}
	nodes := make([]string, 0, len(r.Counts))
	for n := range r.Counts {
		nodes = append(nodes, n)
	}
	for n := range r.MovesPerNode {
		if !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	slices.Sort(nodes)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tBUCKETS\tGAINED\tLOST")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", n, r.Counts[n], r.MovesPerNode[n].Gained, r.MovesPerNode[n].Lost)
	}
	tw.Flush()
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}
