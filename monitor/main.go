// Command monitor decides which live dtable-server owns each of the 256
// buckets and writes that to etcd. Run without a command (or with "run") it
// is the daemon; several may run, one leads. The other commands are the
// operator's CLI, which reaches the leading monitor through etcd:
//
//	monitor [run] [flags]                 run the daemon
//	monitor status [-json]                nodes, buckets per node, version, leader
//	monitor rebalance [-dry-run]          even out bucket counts with the fewest moves
//	monitor drain NODE / undrain NODE     move every bucket off a node / allow it again
//	monitor pin BUCKET NODE / unpin BUCKET
//	monitor auto-rebalance on|off         rebalance on every change (off by default)
//
// Exit codes: 0 success, 1 failure (e.g. no monitor answered), 2 usage.
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
	"github.com/dtablecluster/dtable-router/internal/logging"
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
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch cmd {
	case "run":
		err = runDaemon(ctx, args, stderr)
	case "status", "rebalance", "drain", "undrain", "pin", "unpin", "auto-rebalance":
		err = runCLI(ctx, cmd, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
		return 0
	default:
		err = usage.Errorf("unknown command %q\n\n%s", cmd, usageText)
	}
	code := usage.ExitCode(err)
	if code != 0 {
		fmt.Fprintf(stderr, "monitor %s: %v\n", cmd, err)
	}
	return code
}

const usageText = `Usage:
  monitor [run] [flags]                 run the daemon (several may run; one leads)
  monitor status [-json]                nodes, buckets per node, version, leader
  monitor rebalance [-dry-run]          even out bucket counts with the fewest moves
  monitor drain NODE [-dry-run]         move every bucket off NODE; it receives nothing
  monitor undrain NODE [-dry-run]       let NODE receive buckets again
  monitor pin BUCKET NODE [-dry-run]    keep BUCKET (00..ff) on NODE while it is live
  monitor unpin BUCKET [-dry-run]
  monitor auto-rebalance on|off         rebalance on every change (off: only on request)
Every command takes -etcd, -config, -prefix, -cacert, -cert, -key, -user, -password.
Run "monitor COMMAND -h" for a command's flags.
`

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
	settle := fs.Duration("settle", 5*time.Second, "before the very first assignment, wait this long after the first node registers")
	sessionTTL := fs.Duration("session-ttl", 10*time.Second, "leader lease: how long a dead leader blocks the next one")
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
	if *interval <= 0 || *settle < 0 || *sessionTTL < time.Second {
		return usage.Errorf("-interval must be positive, -settle not negative, -session-ttl at least 1s")
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
	}
	m.log.Info("monitor starting", zap.Strings("etcd", c.etcd.Endpoints), zap.String("prefix", c.layout.Prefix))
	return m.run(ctx)
}
