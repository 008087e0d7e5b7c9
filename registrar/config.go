package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdclient"
	"github.com/dtablecluster/dtable-router/internal/leasedeadline"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/serverconfig"
	"github.com/dtablecluster/dtable-router/internal/usage"
)

// settings is everything the registrar runs with: the config file's
// cluster_config, overridden field by field by flags.
type settings struct {
	etcd   etcdclient.Options
	node   schema.Node
	layout schema.Layout
	ttl    time.Duration

	health healthSettings
	// notifyURL, if set, is the server's end of the server contract
	// (protocol 2), or receives a POST for every assignment change
	// (protocol 1).
	notifyURL      string
	notifyProtocol int
	// handoff: how long a release may take, how long a clean stop may
	// spend handing buckets off, the fence margin before the lease can
	// expire (0: leasedeadline.DefaultMargin), a command to run on fence.
	releaseTimeout  time.Duration
	shutdownTimeout time.Duration
	fenceMargin     time.Duration
	fenceCommand    string

	logLevel string
	logJSON  bool
}

type healthSettings struct {
	path     string // appended to local_node_url; "" = no health check
	interval time.Duration
	timeout  time.Duration
	failures int // consecutive failures before the node is withdrawn
}

// parseSettings reads the command line and the config file it names, in
// three steps: the flags, the file's values under them, and validation.
func parseSettings(args []string, stderr io.Writer) (*settings, error) {
	cl, err := parseFlags(args, stderr)
	if err != nil {
		return nil, err
	}
	file, err := cl.mergeFile()
	if err != nil {
		return nil, err
	}
	if err := cl.validate(origin{given: cl.given, file: file}); err != nil {
		return nil, err
	}
	return cl.s, nil
}

// commandLine is what the flags say: the settings they set outright, and
// the values that the config file also gives, kept apart until mergeFile.
type commandLine struct {
	s          *settings
	configPath string
	node       schema.Node     // -node-id, -node-url, -local-node-url
	prefix     string          // made s.layout by validate
	given      map[string]bool // the flags on the command line
}

// parseFlags defines the registrar's flags and parses args. The etcd
// options come from etcdclient, which also reads $ETCDCTL_*.
func parseFlags(args []string, stderr io.Writer) (*commandLine, error) {
	cl := &commandLine{s: &settings{}, given: map[string]bool{}}
	s := cl.s
	fs := flag.NewFlagSet("registrar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: registrar [flags]\n\n"+
			"Registers this dtable-server in etcd under a lease, keeps it alive, and\n"+
			"withdraws it on SIGTERM/SIGINT. Flags override the config file (etcd\n"+
			"settings: a flag, then $ETCDCTL_*, then the config file).\n\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cl.configPath, "config", "", "dtable_server_config.json to read cluster_config from (// comments allowed)")
	s.etcd.AddFlags(fs)
	fs.StringVar(&cl.node.NodeID, "node-id", "", "this node's id (overrides node_id)")
	fs.StringVar(&cl.node.NodeURL, "node-url", "", "URL end users' browsers use to reach this server (overrides node_url)")
	fs.StringVar(&cl.node.LocalNodeURL, "local-node-url", "", "URL the proxy uses to reach this server (overrides local_node_url)")
	fs.StringVar(&cl.prefix, "prefix", schema.DefaultPrefix, "etcd key prefix of the cluster")
	fs.DurationVar(&s.ttl, "ttl", 90*time.Second, "lease TTL: how long a dead node stays registered")
	fs.StringVar(&s.health.path, "health-path", "", "if set, e.g. /ping/, register only while GET local_node_url+path answers 2xx")
	fs.DurationVar(&s.health.interval, "health-interval", 5*time.Second, "time between health checks")
	fs.DurationVar(&s.health.timeout, "health-timeout", 2*time.Second, "timeout of one health check")
	fs.IntVar(&s.health.failures, "health-failures", 3, "consecutive failed checks before the node is withdrawn")
	fs.StringVar(&s.notifyURL, "notify-url", "", "the server's notification URL: what to hold and release, its serving deadline (see docs/server-contract.md)")
	fs.IntVar(&s.notifyProtocol, "notify-protocol", 2, "2: the server contract (hold, release, deadline, fence); 1: only assignment changes, releases acknowledged at once (unsafe)")
	fs.DurationVar(&s.releaseTimeout, "release-timeout", 60*time.Second, "how long the server may take to save and release buckets")
	fs.DurationVar(&s.shutdownTimeout, "shutdown-timeout", 60*time.Second, "on SIGTERM, how long to hand buckets off before withdrawing anyway")
	fs.DurationVar(&s.fenceMargin, "fence-margin", 0, "the server stops serving this long before the lease can expire (default TTL/4, at least 2s)")
	fs.StringVar(&s.fenceCommand, "fence-command", "", "run by /bin/sh when the server must drop every bucket (e.g. to stop it); gets $DTABLE_NODE_ID, $DTABLE_FENCE_REASON")
	fs.StringVar(&s.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&s.logJSON, "log-json", false, "log JSON lines instead of text")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usage.Wrap(err)
	}
	if fs.NArg() > 0 {
		return nil, usage.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	fs.Visit(func(f *flag.Flag) { cl.given[f.Name] = true })
	return cl, nil
}

// mergeFile reads the config file, if -config names one, and puts its
// cluster_config under the flags: each flag given overrides its field, and
// -etcd, -endpoints or $ETCDCTL_ENDPOINTS override etcd_host_list. It
// returns the file (nil without -config) for error messages.
func (cl *commandLine) mergeFile() (*serverconfig.ClusterConfig, error) {
	s := cl.s
	var file *serverconfig.ClusterConfig
	if cl.configPath != "" {
		var err error
		if file, err = serverconfig.Load(cl.configPath); err != nil {
			return nil, usage.Wrap(err)
		}
		if s.etcd.EndpointsSource() == "" {
			s.etcd.Endpoints = file.EtcdHostList
		}
		s.node = schema.Node{NodeID: file.NodeID, NodeURL: file.NodeURL, LocalNodeURL: file.LocalNodeURL}
	}
	for _, f := range []struct {
		flag     string
		dst, val *string
	}{
		{"node-id", &s.node.NodeID, &cl.node.NodeID},
		{"node-url", &s.node.NodeURL, &cl.node.NodeURL},
		{"local-node-url", &s.node.LocalNodeURL, &cl.node.LocalNodeURL},
	} {
		if cl.given[f.flag] {
			*f.dst = *f.val
		}
	}
	return file, nil
}

// validate checks the merged settings and makes the key layout; an error
// names the flag, the variable or the file's line that gave the bad value.
func (cl *commandLine) validate(o origin) error {
	s := cl.s
	if s.node.NodeID == "" {
		return o.missing("node-id", "node_id")
	}
	if err := schema.ValidateNodeID(s.node.NodeID); err != nil {
		return o.errorf("node-id", "node_id", "%v", err)
	}
	for _, f := range []struct{ flag, field, val string }{
		{"node-url", "node_url", s.node.NodeURL},
		{"local-node-url", "local_node_url", s.node.LocalNodeURL},
	} {
		if f.val == "" {
			return o.missing(f.flag, f.field)
		}
		if err := schema.ValidateNodeURL(f.field, f.val); err != nil {
			return o.errorf(f.flag, f.field, "%v", err)
		}
	}
	if err := s.etcd.ValidateEndpoints(); err != nil {
		return o.endpointsError(s.etcd.EndpointsSource(), err)
	}
	if err := s.etcd.Validate(); err != nil {
		return usage.Wrap(err) // TLS: the message names the flags
	}
	var err error
	if s.layout, err = schema.NewLayout(cl.prefix); err != nil {
		return usage.Errorf("flag -prefix: %v", err)
	}
	if s.ttl < time.Second || s.ttl > 24*time.Hour {
		return usage.Errorf("flag -ttl %v: want 1s to 24h", s.ttl)
	}
	if s.health.path != "" {
		if !strings.HasPrefix(s.health.path, "/") {
			return usage.Errorf("flag -health-path %q: must start with /", s.health.path)
		}
		if s.health.interval <= 0 || s.health.timeout <= 0 || s.health.failures < 1 {
			return usage.Errorf("flags -health-interval, -health-timeout must be positive and -health-failures at least 1")
		}
	}
	if s.notifyURL != "" {
		if err := schema.ValidateNodeURL("notify-url", s.notifyURL); err != nil {
			return usage.Errorf("flag -notify-url: %v", err)
		}
	}
	if s.notifyProtocol != 1 && s.notifyProtocol != 2 {
		return usage.Errorf("flag -notify-protocol %d: want 1 or 2", s.notifyProtocol)
	}
	if s.fenceMargin == 0 {
		s.fenceMargin = leasedeadline.DefaultMargin(s.ttl)
	}
	if s.fenceMargin < 0 || s.fenceMargin > s.ttl/2 {
		return usage.Errorf("flag -fence-margin %v: want more than 0 and at most half the TTL (%v)", s.fenceMargin, s.ttl/2)
	}
	if s.releaseTimeout <= 0 || s.shutdownTimeout < 0 {
		return usage.Errorf("flag -release-timeout must be positive and -shutdown-timeout not negative")
	}
	return nil
}

// origin is where the settings came from, for error messages.
type origin struct {
	given map[string]bool             // the flags on the command line
	file  *serverconfig.ClusterConfig // nil without -config
}

// errorf reports a bad value of field, naming -flagName if that gave it,
// else the file's line.
func (o origin) errorf(flagName, field, format string, args ...any) error {
	if o.given[flagName] || o.file == nil {
		return usage.Errorf("flag -%s: %s", flagName, fmt.Sprintf(format, args...))
	}
	return usage.Wrap(o.file.At(field, format, args...))
}

// missing reports a field that neither a flag nor the file gives.
func (o origin) missing(flagName, field string) error {
	if o.file != nil {
		return usage.Errorf("%s is not set: give -%s, or %q in cluster_config of %s", field, flagName, field, o.file.File)
	}
	return usage.Errorf("%s is not set: give -%s or -config with a dtable_server_config.json", field, flagName)
}

// endpointsError reports bad etcd endpoints, naming where they came from
// (etcdclient's EndpointsSource, or else the file's etcd_host_list).
func (o origin) endpointsError(source string, err error) error {
	switch {
	case source == "" && o.file != nil:
		return usage.Wrap(o.file.At("etcd_host_list", "%v", err))
	case strings.HasPrefix(source, "flag "):
		return usage.Errorf("%s: %v", source, err)
	case source == "":
		return usage.Errorf("flag -etcd: %v", err)
	default: // $ETCDCTL_ENDPOINTS, which the message names
		return usage.Wrap(err)
	}
}

// ttlSeconds is the lease TTL in whole seconds, rounded up.
func (s *settings) ttlSeconds() int64 {
	return int64(math.Ceil(s.ttl.Seconds()))
}

// healthURL joins local_node_url and the health path without doubling '/'.
func (s *settings) healthURL() string {
	return strings.TrimRight(s.node.LocalNodeURL, "/") + s.health.path
}
