// Package etcdclient builds etcd clients from the connection settings that
// the registrar, the monitor and the Caddy module share: endpoints, TLS and
// user/password, with command-line flags named as etcdctl names them.
package etcdclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Options are the settings to reach an etcd cluster.
type Options struct {
	Endpoints []string // host:port or http(s)://host:port
	CACert    string   // file: CA bundle to verify the servers (enables TLS)
	Cert, Key string   // files: client certificate and key (enables TLS)
	User      string
	Password  string
	// DialTimeout bounds connection attempts; default 5s.
	DialTimeout time.Duration
}

// AddFlags registers -etcd, -cacert, -cert, -key, -user and -password on fs.
// -etcd takes a comma-separated list.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.Func("etcd", "comma-separated etcd endpoints, e.g. etcd-01:2379,etcd-02:2379 (overrides the config file's etcd_host_list)", func(s string) error {
		o.Endpoints = SplitEndpoints(s)
		return nil
	})
	fs.StringVar(&o.CACert, "cacert", o.CACert, "verify etcd servers' certificates with this CA bundle (enables TLS)")
	fs.StringVar(&o.Cert, "cert", o.Cert, "client certificate file for etcd (enables TLS)")
	fs.StringVar(&o.Key, "key", o.Key, "client key file for etcd")
	fs.StringVar(&o.User, "user", o.User, "etcd user name, or user:password")
	fs.StringVar(&o.Password, "password", o.Password, "etcd password (also read from $ETCDCTL_PASSWORD)")
}

// SplitEndpoints splits a comma- or space-separated list, dropping empties.
func SplitEndpoints(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// Validate checks the endpoints and that TLS files come in usable sets.
func (o *Options) Validate() error {
	if len(o.Endpoints) == 0 {
		return errors.New("no etcd endpoints: give -etcd host:port[,host:port…] or etcd_host_list in the config file")
	}
	for _, ep := range o.Endpoints {
		if err := validateEndpoint(ep); err != nil {
			return err
		}
	}
	if (o.Cert == "") != (o.Key == "") {
		return errors.New("etcd TLS: -cert and -key go together")
	}
	return nil
}

func validateEndpoint(ep string) error {
	hostport := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" && u.Scheme != "unixs") {
			return fmt.Errorf("etcd endpoint %q: want host:port or http(s)://host:port", ep)
		}
		if u.Scheme == "unix" || u.Scheme == "unixs" {
			return nil
		}
		hostport = u.Host
	}
	i := strings.LastIndex(hostport, ":")
	if i <= 0 || i == len(hostport)-1 {
		return fmt.Errorf("etcd endpoint %q: want host:port, e.g. etcd-01.example.com:2379", ep)
	}
	return nil
}

// usesTLS reports whether TLS is configured by files or https:// endpoints.
func (o *Options) usesTLS() bool {
	if o.CACert != "" || o.Cert != "" {
		return true
	}
	for _, ep := range o.Endpoints {
		if strings.HasPrefix(ep, "https://") {
			return true
		}
	}
	return false
}

// Config returns the clientv3 configuration for these options.
func (o *Options) Config(log *zap.Logger) (clientv3.Config, error) {
	if err := o.Validate(); err != nil {
		return clientv3.Config{}, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	cfg := clientv3.Config{
		Endpoints:   o.Endpoints,
		DialTimeout: o.DialTimeout,
		Logger:      log,
		// Keep-alive pings find a dead connection in seconds rather than at
		// the next request.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	user, pass := o.User, o.Password
	if u, p, ok := strings.Cut(user, ":"); ok && pass == "" {
		user, pass = u, p
	}
	if user != "" && pass == "" {
		pass = os.Getenv("ETCDCTL_PASSWORD")
	}
	cfg.Username, cfg.Password = user, pass
	if o.usesTLS() {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CACert != "" {
			pem, err := os.ReadFile(o.CACert)
			if err != nil {
				return clientv3.Config{}, fmt.Errorf("etcd TLS: read -cacert: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return clientv3.Config{}, fmt.Errorf("etcd TLS: -cacert %s holds no PEM certificate", o.CACert)
			}
			tc.RootCAs = pool
		}
		if o.Cert != "" {
			pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
			if err != nil {
				return clientv3.Config{}, fmt.Errorf("etcd TLS: load -cert/-key: %w", err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		cfg.TLS = tc
	}
	return cfg, nil
}

// New returns a client for these options. Creating a client does not wait
// for etcd (clientv3 connects in the background); the first request does.
func (o *Options) New(log *zap.Logger) (*clientv3.Client, error) {
	cfg, err := o.Config(log)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	return cli, nil
}

// PoolKey returns a string that identifies these settings, for sharing one
// client among users of the same cluster.
func (o *Options) PoolKey() string {
	return strings.Join([]string{strings.Join(o.Endpoints, ","), o.CACert, o.Cert, o.Key, o.User, o.Password}, "\x00")
}
