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

// operatorFlags are the flags every command but the daemon takes, besides
// the common ones.
type operatorFlags struct {
	timeout time.Duration
	wait    time.Duration
	asJSON  bool
}

func (o *operatorFlags) addFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for etcd and the leading monitor")
	fs.DurationVar(&o.wait, "wait", 5*time.Minute, "how long to wait for the handoffs a command starts to end (0: do not wait)")
	fs.BoolVar(&o.asJSON, "json", false, "print the result as JSON")
}

// invocation is an operator command with its flags and arguments parsed
// and checked, ready to run.
type invocation struct {
	cmd *command
	c   common
	operatorFlags
	req monitorapi.Request // what to send, if cmd.op is set
}

// parse reads the flags (before or after the positional arguments), checks
// the arguments against the table and builds the request.
func (cmd *command) parse(args []string, stderr io.Writer) (*invocation, error) {
	inv := &invocation{cmd: cmd}
	fs := flag.NewFlagSet("monitor "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	inv.c.addFlags(fs)
	inv.operatorFlags.addFlags(fs)
	if cmd.dryRun {
		fs.BoolVar(&inv.req.DryRun, "dry-run", false, "show the plan without changing anything")
	}
	if cmd.by {
		fs.StringVar(&inv.req.By, "by", monitorapi.ByCount, "what to even out: count (buckets per node) or load (as the proxies measure it)")
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	if err := inv.c.finish(); err != nil {
		return nil, usage.Wrap(err)
	}
	if len(pos) != len(cmd.args) {
		return nil, usage.Errorf("want %d argument(s), got %d: %q\n\n%s", len(cmd.args), len(pos), pos, usageText())
	}
	switch inv.req.By {
	case monitorapi.ByCount:
		inv.req.By = "" // the default; a request without it means the same to every monitor
	case "", monitorapi.ByLoad:
	default:
		return nil, usage.Errorf("flag -by: %q, want count or load", inv.req.By)
	}
	if cmd.op != "" {
		inv.req.Op = cmd.op
		if cmd.fill != nil {
			if err := cmd.fill(&inv.req, pos); err != nil {
				return nil, err
			}
		}
	}
	return inv, nil
}

// run connects to etcd and reads it or sends the request, printing the
// result.
func (inv *invocation) run(ctx context.Context, stdout, stderr io.Writer) error {
	log, err := cliLogger(inv.c, stderr)
	if err != nil {
		return err
	}
	cli, err := inv.c.client(log)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, inv.timeout)
	defer cancel()

	if inv.cmd.read != nil {
		return inv.cmd.read(ctx, inv.c, cli, log, inv.asJSON, stdout)
	}
	req := inv.req
	host, _ := os.Hostname()
	req.From = "monitor-cli@" + host
	resp, err := monitorapi.Send(ctx, cli, inv.c.layout, req)
	if resp == nil {
		return err
	}
	waiting := resp.OK && !resp.DryRun && inv.wait > 0 && len(resp.Started)+len(resp.Queued) > 0
	if !inv.asJSON {
		printResponse(stdout, inv.cmd.name, resp)
	}
	if waiting {
		if !inv.asJSON {
			fmt.Fprintf(stdout, "waiting up to %v for them...\n", inv.wait)
			if within, err := time.ParseDuration(resp.WavesWithin); err == nil && within > inv.wait {
				fmt.Fprintln(stdout, "(the waves may take longer than -wait: the moves go on after it, and are reported still in progress)")
			}
		}
		// The wait has its own bound; -timeout was for the request.
		resp.Outcome = waitHandoffs(context.WithoutCancel(ctx), cli, inv.c.layout, resp, inv.wait, 200*time.Millisecond)
		if !inv.asJSON {
			printOutcome(stdout, resp.Outcome)
		}
		if n := len(resp.Outcome.Aborted) + len(resp.Outcome.Pending); n > 0 && err == nil {
			err = fmt.Errorf("%d handoff(s) aborted, %d not finished within -wait %v", len(resp.Outcome.Aborted), len(resp.Outcome.Pending), inv.wait)
		}
	}
	if inv.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(resp)
	}
	return err
}

// fillNode: the one argument is the node.
func fillNode(req *monitorapi.Request, args []string) error {
	req.Node = args[0]
	return nil
}

// fillPin: the bucket, then the node.
func fillPin(req *monitorapi.Request, args []string) error {
	req.Node = args[1]
	return fillUnpin(req, args[:1])
}

// fillUnpin: the one argument is the bucket, in any case ("0A" or "0a").
func fillUnpin(req *monitorapi.Request, args []string) error {
	b, err := bucket.Parse(args[0])
	if err != nil {
		return usage.Wrap(err)
	}
	req.Bucket = b.String()
	return nil
}

// fillOnOff: "on" or "off".
func fillOnOff(req *monitorapi.Request, args []string) error {
	switch args[0] {
	case "on":
		req.Enabled = true
	case "off":
	default:
		return usage.Errorf("want on or off, got %q", args[0])
	}
	return nil
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
	switch st.AssignmentError {
	case "":
	case watch.ErrAssignmentDeleted.Error():
		fmt.Fprintln(stdout, "assignment key was DELETED from etcd: the version above is the last valid one (the leading monitor writes it back)")
	default:
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
	printBalanceMode(stdout, snap.Settings)
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
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Moving)+st.Queued > 0 {
		fmt.Fprintf(stdout, "handoffs: %d in progress, %d queued\n", len(st.Moving), st.Queued)
		for _, m := range st.Moving {
			fmt.Fprintf(stdout, "  %s  %s -> %s  for %s  (%s, epoch %d)\n", m.Bucket, m.From, m.To,
				(time.Duration(m.AgeMS) * time.Millisecond).Round(100*time.Millisecond), orNone(m.Reason), m.Epoch)
		}
	}
	return nil
}

// printWaves says how the handoffs proceed: how many start now, how many
// wait for a slot, in how many waves and within how long at most.
func printWaves(w io.Writer, r *monitorapi.Response) {
	moved, start := "moved", "start"
	if r.DryRun {
		moved, start = "would move", "would start"
	}
	if len(r.Direct) > 0 {
		fmt.Fprintf(w, "%d bucket(s) %s at once (no live old owner to hand off from)\n", len(r.Direct), moved)
	}
	n := len(r.Started) + len(r.Queued)
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "%d handoff(s): %d %s now, %d wait for a slot; about %d wave(s)", n, len(r.Started), start, len(r.Queued), r.Waves)
	if r.WavesWithin != "" {
		fmt.Fprintf(w, ", at most about %s: each wave lasts as long as its slowest release (usually a server's save) and no longer than the handoff timeout", r.WavesWithin)
	}
	fmt.Fprintln(w)
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

// printResponse prints the leader's answer to the command called what.
func printResponse(w io.Writer, what string, r *monitorapi.Response) {
	if !r.OK {
		return // the error says it
	}
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
	printWaves(w, r)
	printLoad(w, r.Load)
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}
