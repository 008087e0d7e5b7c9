// Package etcdclient builds etcd clients from the connection settings that
// the registrar, the monitor and the Caddy module share: endpoints, TLS and
// user/password, with command-line flags and environment variables named as
// etcdctl names them:
//
//	flag                  environment variable
//	-etcd, -endpoints     ETCDCTL_ENDPOINTS   comma-separated host:port or http(s)://host:port
//	-cacert               ETCDCTL_CACERT
//	-cert, -key           ETCDCTL_CERT, ETCDCTL_KEY
//	-user                 ETCDCTL_USER        name, or name:password
//	-password             ETCDCTL_PASSWORD
//
// Precedence, as in etcdctl: a flag wins over its environment variable, and
// both win over the config file: the programs take a
// dtable_server_config.json's etcd_host_list only when neither -etcd,
// -endpoints nor $ETCDCTL_ENDPOINTS gave endpoints (see EndpointsSource).
// AddFlags reads the environment; Options filled in directly (as the Caddy
// module does from its Caddyfile) do not.
package etcdclient

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
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
	User      string   // name, or name:password
	Password  string
	// DialTimeout bounds connection attempts; default 5s.
	DialTimeout time.Duration

	// Where AddFlags found the values, for precedence and error messages.
	endpointsFrom          string // "flag -etcd", "flag -endpoints", "$ETCDCTL_ENDPOINTS" or ""
	userFrom, passwordFrom level
}

// level is how strongly a value was given: a flag beats the environment,
// which beats a value set directly in Options.
type level int

const (
	direct level = iota
	fromEnv
	fromFlag
)

// envEndpoints names the endpoints' environment variable in messages.
const envEndpoints = "$ETCDCTL_ENDPOINTS"

// AddFlags registers -etcd (and its etcdctl name -endpoints), -cacert,
// -cert, -key, -user and -password on fs, and fills the options from the
// ETCDCTL_* environment variables, which the flags then override when
// fs is parsed. -etcd takes a comma-separated list.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	endpoints := func(name string) func(string) error {
		return func(s string) error {
			o.Endpoints, o.endpointsFrom = SplitEndpoints(s), "flag -"+name
			return nil
		}
	}
	fs.Func("etcd", "comma-separated etcd `endpoints`, e.g. etcd-01:2379,etcd-02:2379 "+
		"(overrides $ETCDCTL_ENDPOINTS and the config file's etcd_host_list)", endpoints("etcd"))
	fs.Func("endpoints", "same as -etcd: comma-separated `endpoints` (etcdctl's name for the flag)", endpoints("endpoints"))
	fs.StringVar(&o.CACert, "cacert", o.CACert, "verify etcd servers' certificates with this CA bundle (enables TLS; $ETCDCTL_CACERT)")
	fs.StringVar(&o.Cert, "cert", o.Cert, "client certificate file for etcd (enables TLS; $ETCDCTL_CERT)")
	fs.StringVar(&o.Key, "key", o.Key, "client key file for etcd ($ETCDCTL_KEY)")
	fs.Func("user", "etcd `user` name, or user:password ($ETCDCTL_USER)", func(s string) error {
		o.User, o.userFrom = s, fromFlag
		return nil
	})
	fs.Func("password", "etcd `password` ($ETCDCTL_PASSWORD)", func(s string) error {
		o.Password, o.passwordFrom = s, fromFlag
		return nil
	})
	o.readEnv()
}

// readEnv takes each non-empty ETCDCTL_* variable, as etcdctl does.
func (o *Options) readEnv() {
	if v := os.Getenv("ETCDCTL_ENDPOINTS"); v != "" {
		o.Endpoints, o.endpointsFrom = SplitEndpoints(v), envEndpoints
	}
	for _, e := range []struct {
		name  string
		field *string
	}{{"ETCDCTL_CACERT", &o.CACert}, {"ETCDCTL_CERT", &o.Cert}, {"ETCDCTL_KEY", &o.Key}} {
		if v := os.Getenv(e.name); v != "" {
			*e.field = v
		}
	}
	if v := os.Getenv("ETCDCTL_USER"); v != "" {
		o.User, o.userFrom = v, fromEnv
	}
	if v := os.Getenv("ETCDCTL_PASSWORD"); v != "" {
		o.Password, o.passwordFrom = v, fromEnv
	}
}

// EndpointsSource says where AddFlags found the endpoints: "flag -etcd",
// "flag -endpoints" or "$ETCDCTL_ENDPOINTS"; "" when neither gave any, and
// a program may take them from its config file.
func (o *Options) EndpointsSource() string { return o.endpointsFrom }

// SplitEndpoints splits a comma- or space-separated list, dropping empties.
func SplitEndpoints(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// Validate checks the endpoints and that TLS files come in usable sets.
func (o *Options) Validate() error {
	if err := o.ValidateEndpoints(); err != nil {
		return err
	}
	if (o.Cert == "") != (o.Key == "") {
		return errors.New("etcd TLS: -cert and -key go together")
	}
	return nil
}

// ValidateEndpoints checks the endpoints alone, for a program that names
// where they came from (a flag, or a line of its config file).
func (o *Options) ValidateEndpoints() error {
	if len(o.Endpoints) == 0 {
		return errors.New("no etcd endpoints: give -etcd host:port[,host:port…] or etcd_host_list in the config file")
	}
	for _, ep := range o.Endpoints {
		if err := validateEndpoint(ep); err != nil {
			if o.endpointsFrom == envEndpoints {
				return fmt.Errorf("%w (from %s)", err, envEndpoints)
			}
			return err
		}
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

// credentials resolves User ("name" or "name:password") and Password. A
// password given more strongly (flag, then environment, then directly)
// wins; given alike, Password wins and User is taken whole, as etcdctl
// takes --user when --password is given.
func (o *Options) credentials() (user, password string) {
	user, password = o.User, o.Password
	name, inUser, ok := strings.Cut(user, ":")
	switch {
	case !ok:
	case password == "" || o.userFrom > o.passwordFrom:
		user, password = name, inUser
	case o.userFrom < o.passwordFrom:
		user = name
	}
	return user, password
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
	cfg.Username, cfg.Password = o.credentials()
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
//
// The TLS files are part of the key by their contents, not only their
// names: a certificate rotated in place gives a new key, so a config
// reload connects with it instead of keeping the old client.
func (o *Options) PoolKey() string {
	return strings.Join([]string{strings.Join(o.Endpoints, ","), o.CACert, o.Cert, o.Key, o.User, o.Password,
		fileDigest(o.CACert), fileDigest(o.Cert), fileDigest(o.Key)}, "\x00")
}

// fileDigest is a short digest of a file's contents ("" for no file; the
// error's text if it cannot be read, so that a fix changes the key too).
func fileDigest(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
