// Package etcdtest runs real etcd servers inside a test process: one member
// or a multi-member cluster on free loopback ports and temporary data
// directories, with fast election settings so that a test waits milliseconds
// for a leader. Members can be stopped and restarted on the same ports and
// data, to test what clients do across an outage.
package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/freeport"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

// Etcd is a running etcd cluster of one or more members.
type Etcd struct {
	tb      testing.TB
	token   string
	Members []*Member
}

// Member is one etcd server of an Etcd.
type Member struct {
	Name      string
	ClientURL string // http://127.0.0.1:port, or https:// with StartTLS
	peerURL   string
	dir       string
	tls       *TLSFiles
	// token and initialCluster are what the member first started with;
	// Restart starts it again with the same.
	token, initialCluster string

	mu   sync.Mutex
	etcd *embed.Etcd // nil while stopped
}

// Start runs a one-member cluster, stopped when the test ends.
func Start(tb testing.TB) *Etcd { return StartMembers(tb, 1) }

// StartMembers runs a cluster of size members and waits until it has a leader.
func StartMembers(tb testing.TB, size int) *Etcd {
	tb.Helper()
	return startEtcd(tb, size, nil)
}

// startEtcd serves clients over https with files if they are given.
func startEtcd(tb testing.TB, size int, files *TLSFiles) *Etcd {
	tb.Helper()
	var lastErr error
	// Free ports are found by listening on port 0 and closing; another
	// process can grab one in between, so a failed start is retried.
	for attempt := 0; attempt < 5; attempt++ {
		c, err := tryStart(tb, size, attempt, files)
		if err == nil {
			tb.Cleanup(c.stopAll)
			return c
		}
		lastErr = err
	}
	tb.Fatalf("etcdtest: cannot start a %d-member etcd cluster: %v", size, lastErr)
	return nil
}

func tryStart(tb testing.TB, size, attempt int, files *TLSFiles) (*Etcd, error) {
	c := &Etcd{tb: tb, token: fmt.Sprintf("etcdtest-%d-%d", time.Now().UnixNano(), attempt)}
	ports, err := freeport.Take(2 * size)
	if err != nil {
		return nil, err
	}
	var initial []string
	scheme := "http"
	if files != nil {
		scheme = "https"
	}
	for i := 0; i < size; i++ {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			dir:       tb.TempDir(),
			tls:       files,
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.peerURL)
	}
	errs := make(chan error, size)
	for _, m := range c.Members {
		go func() { errs <- m.start(c.token, strings.Join(initial, ",")) }()
	}
	for range c.Members {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		c.stopAll()
		return nil, err
	}
	return c, nil
}

// config is rebuilt on every start: embed mutates the config it is given.
func (m *Member) config(token, initialCluster string) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.dir
	cu, _ := url.Parse(m.ClientURL)
	pu, _ := url.Parse(m.peerURL)
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = initialCluster
	cfg.InitialClusterToken = token
	if m.tls != nil {
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = m.tls.ServerCert, m.tls.ServerKey
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = m.tls.CA, true
	}
	// Fast elections; generous enough for -race on two busy cores.
	cfg.TickMs = 25
	cfg.ElectionMs = 250
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogLevel = "error"
	// Progress notifications every second let watchers learn the revision
	// while idle (the server default is ten minutes).
	cfg.WatchProgressNotifyInterval = time.Second
	return cfg
}

func (m *Member) start(token, initialCluster string) error {
	m.token, m.initialCluster = token, initialCluster
	e, err := embed.StartEtcd(m.config(token, initialCluster))
	if err != nil {
		return fmt.Errorf("member %s: %w", m.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("member %s: %w", m.Name, err)
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("member %s: not ready after 30s", m.Name)
	}
	m.mu.Lock()
	m.etcd = e
	m.mu.Unlock()
	return nil
}

// Stop shuts member i down; its data stays for Restart.
func (c *Etcd) Stop(i int) {
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.etcd != nil {
		m.etcd.Close()
		m.etcd = nil
	}
}

// Restart starts a stopped member i again on the same ports and data.
func (c *Etcd) Restart(i int) {
	c.tb.Helper()
	m := c.Members[i]
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the old listener may linger briefly
		if err = m.start(m.token, m.initialCluster); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.tb.Fatalf("etcdtest: restart %s: %v", m.Name, err)
}

// stopAll closes the members one by one. Each Close waits about a second
// for its peer listeners; closing them in parallel is slower still, as the
// leader tries to hand leadership to members that are going away.
func (c *Etcd) stopAll() {
	for i := range c.Members {
		c.Stop(i)
	}
}

// Endpoints returns the client URLs of all members.
func (c *Etcd) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// Client returns a client of all members, closed when the test ends.
func (c *Etcd) Client(tb testing.TB) *clientv3.Client {
	return c.ClientOf(tb, c.Endpoints()...)
}

// ClientOf returns a client of the given endpoints, closed when the test ends.
func (c *Etcd) ClientOf(tb testing.TB, endpoints ...string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("etcdtest: client: %v", err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// WaitLeader waits until a running member answers a linearizable read, so
// the cluster has a leader again after a Stop.
func (c *Etcd) WaitLeader(tb testing.TB) {
	tb.Helper()
	cli := c.Client(tb)
	testutil.Eventually(tb, 20*time.Second, "etcdtest: a leader (a running member answers a linearizable read)", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "etcdtest-wait-leader")
		return err == nil
	})
}
