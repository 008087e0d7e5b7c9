package caddymodule

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/cluster"
	"github.com/dtablecluster/dtable-router/internal/clusterwatch"
	"github.com/dtablecluster/dtable-router/internal/etcdclient"
	"github.com/dtablecluster/dtable-router/internal/serverconfig"
)

// ClusterConfig says where the cluster state is: the etcd endpoints (or a
// dtable_server_config.json naming them), the key prefix, TLS and auth.
// Values may use Caddy placeholders such as {env.ETCD_PASSWORD}.
type ClusterConfig struct {
	// Etcd endpoints, host:port or http(s)://host:port.
	Etcd []string `json:"etcd,omitempty"`
	// ServerConfig is a dtable_server_config.json whose
	// cluster_config.etcd_host_list is used when Etcd is empty.
	ServerConfig string `json:"server_config,omitempty"`
	// Prefix of the cluster's etcd keys; default /dtable-cluster.
	Prefix string `json:"prefix,omitempty"`
	// EtcdCACert, EtcdCert and EtcdKey are files for TLS to etcd.
	EtcdCACert string `json:"etcd_cacert,omitempty"`
	EtcdCert   string `json:"etcd_cert,omitempty"`
	EtcdKey    string `json:"etcd_key,omitempty"`
	// EtcdUser and EtcdPassword authenticate to etcd.
	EtcdUser     string `json:"etcd_user,omitempty"`
	EtcdPassword string `json:"etcd_password,omitempty"`
}

// resolve turns the config into etcd options and a key layout.
func (c ClusterConfig) resolve() (etcdclient.Options, cluster.Layout, error) {
	repl := caddy.NewReplacer()
	opts := etcdclient.Options{
		CACert: repl.ReplaceAll(c.EtcdCACert, ""), Cert: repl.ReplaceAll(c.EtcdCert, ""), Key: repl.ReplaceAll(c.EtcdKey, ""),
		User: repl.ReplaceAll(c.EtcdUser, ""), Password: repl.ReplaceAll(c.EtcdPassword, ""),
	}
	for _, ep := range c.Etcd {
		opts.Endpoints = append(opts.Endpoints, etcdclient.SplitEndpoints(repl.ReplaceAll(ep, ""))...)
	}
	if len(opts.Endpoints) == 0 && c.ServerConfig != "" {
		file, err := serverconfig.Load(repl.ReplaceAll(c.ServerConfig, ""))
		if err != nil {
			return opts, cluster.Layout{}, err
		}
		opts.Endpoints = file.EtcdHostList
		if err := opts.Validate(); err != nil {
			return opts, cluster.Layout{}, file.At("etcd_host_list", "%v", err)
		}
	}
	if err := opts.Validate(); err != nil {
		return opts, cluster.Layout{}, fmt.Errorf("%v (set etcd or server_config)", err)
	}
	layout, err := cluster.NewLayout(repl.ReplaceAll(c.Prefix, ""))
	return opts, layout, err
}

// watchProgressInterval is how often an idle watch checks etcd is there;
// three missed answers count as disconnected. Tests shorten it.
var watchProgressInterval = 5 * time.Second

// clusters holds one sharedCluster per (etcd settings, prefix), shared by
// every handler of every loaded config: a config reload provisions the new
// handlers (LoadOrNew finds the running cluster) before it cleans up the
// old ones (Delete), so a reload neither reconnects nor re-lists.
var clusters = caddy.NewUsagePool()

// acquireCluster returns the shared cluster for cfg, starting it if none
// runs; release it with clusters.Delete(key) in Cleanup. It never waits for
// etcd, so `caddy validate` does not block on it.
func acquireCluster(cfg ClusterConfig) (*sharedCluster, string, error) {
	opts, layout, err := cfg.resolve()
	if err != nil {
		return nil, "", err
	}
	key := opts.PoolKey() + "\x00" + layout.Prefix
	v, _, err := clusters.LoadOrNew(key, func() (caddy.Destructor, error) { return startCluster(opts, layout) })
	if err != nil {
		return nil, "", err
	}
	return v.(*sharedCluster), key, nil
}

// clusterRef is a module's hold on its shared cluster: taken in Provision,
// released in Cleanup.
type clusterRef struct {
	cluster *sharedCluster
	poolKey string
}

// join registers the metrics in the config's registry and acquires the
// shared cluster for cfg (starting it if none runs; never waiting for etcd).
func (r *clusterRef) join(ctx caddy.Context, cfg ClusterConfig) error {
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	var err error
	r.cluster, r.poolKey, err = acquireCluster(cfg)
	return err
}

// release lets go of the shared cluster; the last user stops it.
func (r *clusterRef) release() error {
	if r.poolKey == "" {
		return nil
	}
	_, err := clusters.Delete(r.poolKey)
	r.poolKey = ""
	return err
}

// forEachCluster calls fn for every running shared cluster.
func forEachCluster(fn func(*sharedCluster)) {
	clusters.Range(func(_, v any) bool {
		fn(v.(*sharedCluster))
		return true
	})
}

// sharedCluster follows one cluster in etcd and keeps its routing table.
type sharedCluster struct {
	layout    cluster.Layout
	endpoints []string
	cli       *clientv3.Client
	watcher   *clusterwatch.Watcher
	log       *zap.Logger

	// table is replaced whole on every change; requests read it without locks.
	table atomic.Pointer[routeTable]
	// rr spreads requests without a UUID over the nodes.
	rr atomic.Uint64

	// streamsMu orders stream registration against table changes, so a
	// WebSocket opened to a bucket's old owner is always closed.
	streamsMu sync.Mutex
	streams   [bucket.Count]map[*stream]struct{}

	stop chan struct{}
	done chan struct{}
}

// stream is an open WebSocket (or other upgraded) connection.
type stream struct {
	route  *route
	cancel context.CancelFunc
}

func startCluster(opts etcdclient.Options, layout cluster.Layout) (*sharedCluster, error) {
	log := caddy.Log().Named("dtable_bucket").With(zap.String("prefix", layout.Prefix))
	cli, err := opts.New(log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	if err != nil {
		return nil, err
	}
	sc := &sharedCluster{
		layout: layout, endpoints: opts.Endpoints, cli: cli, log: log,
		watcher: clusterwatch.New(clusterwatch.Config{Client: cli, Layout: layout, Logger: log.Named("watch"),
			ProgressInterval: watchProgressInterval}),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	sc.table.Store(buildTable(sc, nil))
	sc.watcher.Start()
	go sc.follow()
	log.Info("following the cluster in etcd", zap.Strings("etcd", opts.Endpoints))
	return sc, nil
}

// Destruct stops following etcd; the pool calls it when no config uses
// the cluster any more.
func (sc *sharedCluster) Destruct() error {
	close(sc.stop)
	<-sc.done
	sc.watcher.Stop()
	return sc.cli.Close()
}

// follow rebuilds the routing table on every snapshot and, while etcd is
// unreachable, says every so often that routing goes on with the last
// known assignment.
func (sc *sharedCluster) follow() {
	defer close(sc.done)
	sub := sc.watcher.Subscribe()
	defer sub.Close()
	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-sc.stop:
			return
		case snap := <-sub.C:
			sc.install(buildTable(sc, snap))
		case <-ticker.C:
			if st := sc.watcher.Status(); !st.Connected {
				t := sc.table.Load()
				sc.log.Warn("etcd unreachable: routing with the last known assignment",
					zap.Int64("version", t.version), zap.Duration("unchanged_for", time.Since(t.builtAt).Round(time.Second)),
					zap.Time("last_contact", st.LastContact), zap.String("last_error", st.LastError))
			}
		}
	}
}

// install publishes a new table and closes the streams of every bucket
// whose owner changed, so their clients reconnect to the new owner.
func (sc *sharedCluster) install(next *routeTable) {
	sc.streamsMu.Lock()
	prev := sc.table.Swap(next)
	changed, closed := 0, 0
	for b := range bucket.Count {
		if prev.routes[b].sameTarget(&next.routes[b]) {
			continue
		}
		changed++
		for s := range sc.streams[b] {
			if !s.route.sameTarget(&next.routes[b]) {
				s.cancel()
				delete(sc.streams[b], s)
				closed++
			}
		}
	}
	sc.streamsMu.Unlock()
	streamsClosedTotal.Add(float64(closed))
	if prev.version != next.version || changed > 0 {
		sc.log.Info("routing table updated", zap.Int64("version", next.version), zap.Int64("previous_version", prev.version),
			zap.Int("buckets_changed", changed), zap.Int("streams_closed", closed), zap.Int("nodes", len(next.anyNode)))
	}
}

// lookup returns the route of bucket b in the current table, without
// locks or allocation.
func (sc *sharedCluster) lookup(b bucket.Bucket) (*routeTable, *route) {
	t := sc.table.Load()
	return t, &t.routes[b]
}

// openStream picks bucket b's route for an upgraded connection and
// registers cancel to be called when b's owner changes. The returned
// function unregisters it.
func (sc *sharedCluster) openStream(b bucket.Bucket, cancel context.CancelFunc) (*routeTable, *route, func()) {
	sc.streamsMu.Lock()
	defer sc.streamsMu.Unlock()
	t := sc.table.Load()
	rt := &t.routes[b]
	if !rt.ok {
		return t, rt, func() {}
	}
	s := &stream{route: rt, cancel: cancel}
	if sc.streams[b] == nil {
		sc.streams[b] = map[*stream]struct{}{}
	}
	sc.streams[b][s] = struct{}{}
	return t, rt, func() {
		sc.streamsMu.Lock()
		delete(sc.streams[b], s)
		sc.streamsMu.Unlock()
	}
}
