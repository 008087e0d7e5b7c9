package etcdclient

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
)

func TestFlagsAndValidate(t *testing.T) {
	var o Options
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"-etcd", "etcd-01:2379, etcd-02:2379,,https://etcd-03:2379", "-user", "root"}); err != nil {
		t.Fatal(err)
	}
	if len(o.Endpoints) != 3 || o.Endpoints[2] != "https://etcd-03:2379" || o.User != "root" {
		t.Fatalf("parsed %+v", o)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]Options{
		"no etcd endpoints":          {},
		`etcd endpoint "etcd-01"`:    {Endpoints: []string{"etcd-01"}},
		`etcd endpoint "ftp://x:1`:   {Endpoints: []string{"ftp://x:1"}},
		"-cert and -key go together": {Endpoints: []string{"a:1"}, Cert: "c.pem"},
		"read -cacert":               {Endpoints: []string{"a:1"}, CACert: "/nonexistent/ca.pem"},
	}
	for want, o := range bad {
		_, err := o.Config(nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Config(%+v) error = %v; want %q", o, err, want)
		}
	}
}

func TestUserPasswordAgainstEtcdWithAuth(t *testing.T) {
	c := etcdtest.Start(t)
	admin := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}

	good := Options{Endpoints: c.Endpoints(), User: "root:s3cret"}
	cli, err := good.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put with user:password: %v", err)
	}

	t.Setenv("ETCDCTL_PASSWORD", "s3cret")
	fromEnv := Options{Endpoints: c.Endpoints(), User: "root"}
	cli2, err := fromEnv.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	if _, err := cli2.Get(ctx, "k"); err != nil {
		t.Fatalf("get with password from $ETCDCTL_PASSWORD: %v", err)
	}

	wrong := Options{Endpoints: c.Endpoints(), User: "root", Password: "nope"}
	cli3, err := wrong.New(nil)
	if err == nil {
		defer cli3.Close()
		_, err = cli3.Get(ctx, "k")
	}
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong password: err = %v", err)
	}
}

func TestTLSAgainstEtcdRequiringClientCertificates(t *testing.T) {
	c, files := etcdtest.StartTLS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	good := Options{Endpoints: c.Endpoints(), CACert: files.CA, Cert: files.ClientCert, Key: files.ClientKey}
	cli, err := good.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put over TLS with -cacert/-cert/-key: %v", err)
	}
	// Without a client certificate the server refuses the connection.
	noCert := Options{Endpoints: c.Endpoints(), CACert: files.CA}
	cli2, err := noCert.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, err := cli2.Get(short, "k"); err == nil {
		t.Fatal("etcd accepted a client without a certificate")
	}
	// A wrong CA file is reported clearly.
	bad := Options{Endpoints: c.Endpoints(), CACert: files.ClientKey}
	if _, err := bad.Config(nil); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("bad CA: %v", err)
	}
}
