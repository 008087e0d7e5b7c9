// Package embedetcd starts a one-member etcd inside a program (the local
// cluster, the benchmark), on loopback, with its data in a given folder.
// Tests use internal/etcdtest instead.
package embedetcd

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/freeport"
)

// Start runs etcd serving clients on clientAddr ("127.0.0.1:2379", or
// "127.0.0.1:0" for a free port) with its data in dir. It returns the
// server and its client endpoint (host:port); Close the server to stop it.
func Start(dir, clientAddr string) (*embed.Etcd, string, error) {
	ports, err := freeport.Take(2)
	if err != nil {
		return nil, "", err
	}
	if clientAddr == "127.0.0.1:0" {
		clientAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	}
	peerAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	cu, _ := url.Parse("http://" + clientAddr)
	pu, _ := url.Parse("http://" + peerAddr)
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("embedded etcd on %s: %w", clientAddr, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, clientAddr, nil
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, "", errors.New("embedded etcd not ready after 30s")
	}
}
