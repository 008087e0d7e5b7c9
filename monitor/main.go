// Command monitor decides which live dtable-server owns each of the 256
// buckets and writes that to etcd. Run without a command (or with "run") it
// is the daemon; several may run, one leads. The other commands are the
// operator's CLI, which reaches the leading monitor through etcd (status
// only reads etcd).
//
// Every command, with its arguments, flags and what it does, is one row of
// the table commands; "monitor help" prints the usage text made from it.
//
// Exit codes: 0 success, 1 failure (e.g. no monitor answered), 2 usage.
//
// Where things are:
//
//   - main.go: flags shared by every command, and the command table.
//   - daemon.go: the daemon; run campaigns in an election on its own
//     lease and leads while it wins.
//   - leader.go: what the leader does: lead's loop, reconcile (plan and
//     write on every change), the operator requests (handleRequest), and
//     the fenced write of every change.
//   - handoff.go: one planning round, decide: the planner's targets
//     (internal/planner), then the handoff step towards them
//     (internal/handoff).
//   - node_leases.go: the leases of the nodes seen, so that a node whose
//     key vanished counts as gone only once its lease is gone too.
//   - load.go, loadbalance.go, load_output.go: balancing by load: the
//     proxies' reports, planning by them, and showing them.
//   - cli.go, wait.go: the operator's commands, and waiting for the
//     handoffs a command started.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/etcdclient"
	"github.com/dtablecluster/dtable-router/internal/handoff"
	"github.com/dtablecluster/dtable-router/internal/logging"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/serverconfig"
	"github.com/dtablecluster/dtable-router/internal/usage"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// common are the flags every command takes.
type common struct {
	etcd     etcdclient.Options
	config   string
	prefix   string
	layout   schema.Layout
	logLevel string
	logJSON  bool
}

func (c *common) addFlags(fs *flag.FlagSet) {
	c.etcd.AddFlags(fs)
	fs.StringVar(&c.config, "config", "", "dtable_server_config.json to read etcd_host_list from (when -etcd is not given)")
	fs.StringVar(&c.prefix, "prefix", schema.DefaultPrefix, "etcd key prefix of the cluster")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&c.logJSON, "log-json", false, "log JSON lines instead of text")
}

// finish checks the common flags after parsing.
func (c *common) finish() error {
	if len(c.etcd.Endpoints) == 0 && c.config != "" {
		file, err := serverconfig.Load(c.config)
		if err != nil {
			return err
		}
		c.etcd.Endpoints = file.EtcdHostList
		if err := c.etcd.Validate(); err != nil {
			return file.At("etcd_host_list", "%v", err)
		}
	}
	if err := c.etcd.Validate(); err != nil {
		if src := c.etcd.EndpointsSource(); src != "" {
			return fmt.Errorf("%s: %v", src, err)
		}
		return fmt.Errorf("flag -etcd: %v", err)
	}
	var err error
	if c.layout, err = schema.NewLayout(c.prefix); err != nil {
		return fmt.Errorf("flag -prefix: %v", err)
	}
	return nil
}

func (c *common) client(log *zap.Logger) (*clientv3.Client, error) {
	return c.etcd.New(log.Named("etcd"))
}

func run(args []string, stdout, stderr io.Writer) int {
	name := defaultCommand
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if name == "help" {
		fmt.Fprint(stdout, usageText())
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := runCommand(ctx, name, args, stdout, stderr)
	code := usage.ExitCode(err)
	if code != 0 {
		fmt.Fprintf(stderr, "monitor %s: %v\n", name, err)
	}
	return code
}

// defaultCommand runs when the arguments name no command.
const defaultCommand = "run"

// command is one row of the command table: its name, its arguments and
// flags (from which the usage text is made), and how it runs.
type command struct {
	name    string
	args    []string // positional arguments, named as in the usage line; exactly these many
	summary string   // what it does, for the usage text
	dryRun  bool     // takes -dry-run: show the plan, change nothing
	by      bool     // takes -by count|load: what a rebalance evens out

	// How it runs: exactly one of daemon, read and op is set.
	//
	// daemon parses its own flags and arguments and runs until ctx ends.
	daemon func(ctx context.Context, args []string, stderr io.Writer) error
	// read runs here against etcd (it needs no monitor). It and op get the
	// common flags, -timeout and -json.
	read func(ctx context.Context, c common, cli *clientv3.Client, log *zap.Logger, asJSON bool, stdout io.Writer) error
	// op is the operation of the request sent to the leading monitor;
	// fill, if set, completes the request from the arguments.
	op   string
	fill func(req *monitorapi.Request, args []string) error
}

// commands is the command table.
var commands = []command{
	{name: "run", daemon: runDaemon,
		summary: "run the daemon (several may run; one leads)"},
	{name: "status", read: status,
		summary: "nodes, buckets per node, version, leader"},
	{name: "rebalance", op: monitorapi.OpRebalance, dryRun: true, by: true,
		summary: "even out bucket counts (or, -by load, the load the proxies measure) with the fewest moves"},
	{name: "drain", args: []string{"NODE"}, op: monitorapi.OpDrain, fill: fillNode, dryRun: true,
		summary: "move every bucket off NODE; it receives nothing"},
	{name: "undrain", args: []string{"NODE"}, op: monitorapi.OpUndrain, fill: fillNode, dryRun: true,
		summary: "let NODE receive buckets again"},
	{name: "pin", args: []string{"BUCKET", "NODE"}, op: monitorapi.OpPin, fill: fillPin, dryRun: true,
		summary: "keep BUCKET (00..ff) on NODE while it is live"},
	{name: "unpin", args: []string{"BUCKET"}, op: monitorapi.OpUnpin, fill: fillUnpin, dryRun: true,
		summary: "let BUCKET move again"},
	{name: "auto-rebalance", args: []string{"on|off"}, op: monitorapi.OpAutoRebalance, fill: fillOnOff, dryRun: true,
		summary: "rebalance on every change (off: only on request)"},
	{name: "auto-load-balance", args: []string{"on|off"}, op: monitorapi.OpAutoLoadBalance, fill: fillOnOff, dryRun: true,
		summary: "move buckets by load on its own, with hysteresis (on also balances by load from now on)"},
}

// lookup returns the command called name, or nil.
func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// runCommand runs the command called name with its arguments.
func runCommand(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	cmd := lookup(name)
	switch {
	case cmd == nil:
		return usage.Errorf("unknown command %q\n\n%s", name, usageText())
	case cmd.daemon != nil:
		return cmd.daemon(ctx, args, stderr)
	}
	inv, err := cmd.parse(args, stderr)
	if err != nil {
		return err
	}
	return inv.run(ctx, stdout, stderr)
}

// synopsis is the command's usage line without its summary.
func (cmd *command) synopsis() string {
	words := []string{"monitor", cmd.name}
	if cmd.name == defaultCommand {
		words[1] = "[" + cmd.name + "]"
	}
	words = append(words, cmd.args...)
	if cmd.daemon != nil {
		words = append(words, "[flags]")
	}
	if cmd.by {
		words = append(words, "[-by count|load]")
	}
	if cmd.dryRun {
		words = append(words, "[-dry-run]")
	}
	return strings.Join(words, " ")
}

// usageText lists every command of the table, then the flags they share.
func usageText() string {
	width := 0
	for _, cmd := range commands {
		width = max(width, len(cmd.synopsis()))
	}
	var b strings.Builder
	b.WriteString("Usage:\n")
	for _, cmd := range commands {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, cmd.synopsis(), cmd.summary)
	}
	fmt.Fprintf(&b, "Every command takes %s.\n", flagNames(new(common).addFlags))
	fmt.Fprintf(&b, "Every command but %s also takes %s.\n", defaultCommand, flagNames(new(operatorFlags).addFlags))
	b.WriteString("etcd settings may also come from $ETCDCTL_ENDPOINTS, _CACERT, _CERT, _KEY, _USER, _PASSWORD (flags win).\n")
	b.WriteString(`Run "monitor COMMAND -h" for a command's flags.` + "\n")
	return b.String()
}

// flagNames lists the flags that add defines: "-a, -b".
func flagNames(add func(*flag.FlagSet)) string {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	add(fs)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, "-"+f.Name) })
	return strings.Join(names, ", ")
}

// parseInterleaved parses flags that may come before or after the
// positional arguments ("drain n1 -dry-run"), returning the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usage.Wrap(err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runDaemon(ctx context.Context, args []string, stderr io.Writer) error {
	var c common
	fs := flag.NewFlagSet("monitor run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.addFlags(fs)
	host, _ := os.Hostname()
	id := fs.String("id", fmt.Sprintf("%s-%d", host, os.Getpid()), "this monitor's name in the leader election")
	interval := fs.Duration("interval", 10*time.Second, "periodic reconcile, besides reacting to every change")
	settle := fs.Duration("settle", 5*time.Second, "after nodes appear (this monitor's start or leadership, or the first node back after none was live), wait this long before reassigning anything")
	sessionTTL := fs.Duration("session-ttl", 10*time.Second, "leader lease: how long a dead leader blocks the next one")
	limits := handoff.DefaultLimits
	fs.DurationVar(&limits.Timeout, "handoff-timeout", limits.Timeout, "how long a live old owner may take to release a bucket before the move is aborted")
	fs.IntVar(&limits.MaxMoving, "max-moving", limits.MaxMoving, "most handoffs in progress in the cluster")
	fs.IntVar(&limits.MaxMovingPerNode, "max-moving-per-node", limits.MaxMovingPerNode, "most handoffs in progress per node (as source or target)")
	cooldown := fs.Duration("handoff-cooldown", 2*time.Minute, "after an aborted handoff, how long the bucket rests before it is tried again")
	rebalanceAfter := fs.Duration("rebalance-after", 2*time.Minute, "even out bucket counts once the live nodes are unchanged this long (0: only on request)")
	load := defaultLoadSettings
	load.addFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usage.Errorf("unexpected arguments: %s", strings.Join(pos, " "))
	}
	if err := c.finish(); err != nil {
		return usage.Wrap(err)
	}
	if err := load.check(); err != nil {
		return usage.Wrap(err)
	}
	if *interval <= 0 || *settle < 0 || *sessionTTL < time.Second {
		return usage.Errorf("-interval must be positive, -settle not negative, -session-ttl at least 1s")
	}
	if limits.Timeout <= 0 || limits.MaxMoving < 1 || limits.MaxMovingPerNode < 1 || *cooldown < 0 || *rebalanceAfter < 0 {
		return usage.Errorf("-handoff-timeout must be positive, -max-moving and -max-moving-per-node at least 1, -handoff-cooldown not negative")
	}
	log, err := logging.New(c.logLevel, c.logJSON, stderr)
	if err != nil {
		return usage.Errorf("flag -log-level: %v", err)
	}
	defer log.Sync()
	cli, err := c.client(log)
	if err != nil {
		return err
	}
	defer cli.Close()
	w := watch.New(watch.Config{Client: cli, Layout: c.layout, Logger: log.Named("watch")})
	w.Start()
	defer w.Stop()
	m := &monitor{
		cli: cli, layout: c.layout, watcher: w, id: *id, interval: *interval, settle: *settle,
		sessionTTL: int((*sessionTTL + time.Second - 1) / time.Second), log: log.With(zap.String("monitor", *id)),
		limits: limits, cooldownFor: *cooldown, rebalanceAfter: *rebalanceAfter, loadCfg: load,
	}
	m.log.Info("monitor starting", zap.Strings("etcd", c.etcd.Endpoints), zap.String("prefix", c.layout.Prefix))
	return m.run(ctx)
}
