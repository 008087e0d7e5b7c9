package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/dtablecluster/dtable-router/internal/etcdclient"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/serverconfig"
)

// EtcdConfig says where the cluster state is: the etcd endpoints (or a
// dtable_server_config.json naming them), the key prefix, TLS and auth.
// Values may use Caddy placeholders such as {env.ETCD_PASSWORD}.
type EtcdConfig struct {
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
func (c EtcdConfig) resolve() (etcdclient.Options, schema.Layout, error) {
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
			return opts, schema.Layout{}, err
		}
		opts.Endpoints = file.EtcdHostList
		if err := opts.Validate(); err != nil {
			return opts, schema.Layout{}, file.At("etcd_host_list", "%v", err)
		}
	}
	if err := opts.Validate(); err != nil {
		return opts, schema.Layout{}, fmt.Errorf("%v (set etcd or server_config)", err)
	}
	layout, err := schema.NewLayout(repl.ReplaceAll(c.Prefix, ""))
	return opts, layout, err
}
