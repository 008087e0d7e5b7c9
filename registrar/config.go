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
	// notifyURL, if set, receives a POST for every assignment change.
	notifyURL string

	logLevel string
	logJSON  bool
}

type healthSettings struct {
	path     string // appended to local_node_url; "" = no health check
	interval time.Duration
	timeout  time.Duration
	failures int // consecutive failures before the node is withdrawn
}

// parseSettings reads flags and the config file they name.
func parseSettings(args []string, stderr io.Writer) (*settings, error) {
	s := &settings{}
	fs := flag.NewFlagSet("registrar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: registrar [flags]\n\n"+
			"Registers this dtable-server in etcd under a lease, keeps it alive, and\n"+
			"withdraws it on SIGTERM/SIGINT. Flags override the config file.\n\n")
		fs.PrintDefaults()
	}
	configPath := fs.String("config", "", "dtable_server_config.json to read cluster_config from (// comments allowed)")
	s.etcd.AddFlags(fs)
	nodeID := fs.String("node-id", "", "this node's id (overrides node_id)")
	nodeURL := fs.String("node-url", "", "URL end users' browsers use to reach this server (overrides node_url)")
	localURL := fs.String("local-node-url", "", "URL the proxy uses to reach this server (overrides local_node_url)")
	prefix := fs.String("prefix", schema.DefaultPrefix, "etcd key prefix of the cluster")
	fs.DurationVar(&s.ttl, "ttl", 90*time.Second, "lease TTL: how long a dead node stays registered")
	fs.StringVar(&s.health.path, "health-path", "", "if set, e.g. /ping/, register only while GET local_node_url+path answers 2xx")
	fs.DurationVar(&s.health.interval, "health-interval", 5*time.Second, "time between health checks")
	fs.DurationVar(&s.health.timeout, "health-timeout", 2*time.Second, "timeout of one health check")
	fs.IntVar(&s.health.failures, "health-failures", 3, "consecutive failed checks before the node is withdrawn")
	fs.StringVar(&s.notifyURL, "notify-url", "", "if set, POST every assignment change (version, buckets gained and lost) to this URL")
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
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	// where says where a value came from, for error messages.
	var file *serverconfig.ClusterConfig
	where := func(flagName, field string, format string, args ...any) error {
		if set[flagName] || file == nil {
			return usage.Errorf("flag -%s: %s", flagName, fmt.Sprintf(format, args...))
		}
		return usage.Wrap(file.At(field, format, args...))
	}
	if *configPath != "" {
		var err error
		if file, err = serverconfig.Load(*configPath); err != nil {
			return nil, usage.Wrap(err)
		}
		if !set["etcd"] {
			s.etcd.Endpoints = file.EtcdHostList
		}
		s.node = schema.Node{NodeID: file.NodeID, NodeURL: file.NodeURL, LocalNodeURL: file.LocalNodeURL}
	}
	if set["node-id"] {
		s.node.NodeID = *nodeID
	}
	if set["node-url"] {
		s.node.NodeURL = *nodeURL
	}
	if set["local-node-url"] {
		s.node.LocalNodeURL = *localURL
	}

	missing := func(flagName, field string) error {
		if file != nil {
			return usage.Errorf("%s is not set: give -%s, or %q in cluster_config of %s", field, flagName, field, file.File)
		}
		return usage.Errorf("%s is not set: give -%s or -config with a dtable_server_config.json", field, flagName)
	}
	if s.node.NodeID == "" {
		return nil, missing("node-id", "node_id")
	}
	if err := schema.ValidateNodeID(s.node.NodeID); err != nil {
		return nil, where("node-id", "node_id", "%v", err)
	}
	for _, f := range []struct{ flag, field, val string }{
		{"node-url", "node_url", s.node.NodeURL},
		{"local-node-url", "local_node_url", s.node.LocalNodeURL},
	} {
		if f.val == "" {
			return nil, missing(f.flag, f.field)
		}
		if err := schema.ValidateNodeURL(f.field, f.val); err != nil {
			return nil, where(f.flag, f.field, "%v", err)
		}
	}
	if err := s.etcd.Validate(); err != nil {
		return nil, where("etcd", "etcd_host_list", "%v", err)
	}
	var err error
	if s.layout, err = schema.NewLayout(*prefix); err != nil {
		return nil, usage.Errorf("flag -prefix: %v", err)
	}
	if s.ttl < time.Second || s.ttl > 24*time.Hour {
		return nil, usage.Errorf("flag -ttl %v: want 1s to 24h", s.ttl)
	}
	if s.health.path != "" {
		if !strings.HasPrefix(s.health.path, "/") {
			return nil, usage.Errorf("flag -health-path %q: must start with /", s.health.path)
		}
		if s.health.interval <= 0 || s.health.timeout <= 0 || s.health.failures < 1 {
			return nil, usage.Errorf("flags -health-interval, -health-timeout must be positive and -health-failures at least 1")
		}
	}
	if s.notifyURL != "" {
		if err := schema.ValidateNodeURL("notify-url", s.notifyURL); err != nil {
			return nil, usage.Errorf("flag -notify-url: %v", err)
		}
	}
	return s, nil
}

// ttlSeconds is the lease TTL in whole seconds, rounded up.
func (s *settings) ttlSeconds() int64 {
	return int64(math.Ceil(s.ttl.Seconds()))
}

// healthURL joins local_node_url and the health path without doubling '/'.
func (s *settings) healthURL() string {
	return strings.TrimRight(s.node.LocalNodeURL, "/") + s.health.path
}
