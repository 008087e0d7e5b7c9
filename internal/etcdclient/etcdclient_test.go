package etcdclient

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
)

// envNames are the variables AddFlags reads.
var envNames = []string{"ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_USER", "ETCDCTL_PASSWORD"}

// setEnv sets exactly env's ETCDCTL_* variables for the test; the others
// are empty, which AddFlags takes as unset.
func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, name := range envNames {
		t.Setenv(name, env[name])
	}
}

// parseFlags returns the options a program gets from env and args.
func parseFlags(t *testing.T, env map[string]string, args ...string) Options {
	t.Helper()
	setEnv(t, env)
	var o Options
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o
}

var allEnv = map[string]string{
	"ETCDCTL_ENDPOINTS": "env-1:2379,env-2:2379", "ETCDCTL_CACERT": "env-ca.pem", "ETCDCTL_CERT": "env-cert.pem",
	"ETCDCTL_KEY": "env-key.pem", "ETCDCTL_USER": "envuser", "ETCDCTL_PASSWORD": "envpw",
}

var allFlags = []string{"-etcd", "flag-1:2379", "-cacert", "flag-ca.pem", "-cert", "flag-cert.pem",
	"-key", "flag-key.pem", "-user", "flaguser", "-password", "flagpw"}

func TestFlagsAndEnvironment(t *testing.T) {
	type want struct {
		endpoints                         []string
		source                            string
		cacert, cert, key, user, password string
	}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want want
	}{
		{"nothing given", nil, nil, want{}},
		{"-etcd, comma-separated", nil, []string{"-etcd", "etcd-01:2379, etcd-02:2379,,https://etcd-03:2379", "-user", "root"},
			want{endpoints: []string{"etcd-01:2379", "etcd-02:2379", "https://etcd-03:2379"}, source: "flag -etcd", user: "root"}},
		{"-endpoints, as etcdctl names it", nil, []string{"-endpoints", "a:1,b:2"},
			want{endpoints: []string{"a:1", "b:2"}, source: "flag -endpoints"}},
		{"every ETCDCTL_ variable", allEnv, nil,
			want{[]string{"env-1:2379", "env-2:2379"}, "$ETCDCTL_ENDPOINTS", "env-ca.pem", "env-cert.pem", "env-key.pem", "envuser", "envpw"}},
		{"flags win over the environment", allEnv, allFlags,
			want{[]string{"flag-1:2379"}, "flag -etcd", "flag-ca.pem", "flag-cert.pem", "flag-key.pem", "flaguser", "flagpw"}},
		{"-endpoints wins over the environment", allEnv, []string{"-endpoints", "flag-2:2379"},
			want{[]string{"flag-2:2379"}, "flag -endpoints", "env-ca.pem", "env-cert.pem", "env-key.pem", "envuser", "envpw"}},
		{"an empty variable is unset", map[string]string{"ETCDCTL_ENDPOINTS": "", "ETCDCTL_USER": "u"}, nil,
			want{user: "u"}},
		{"-etcd given empty still counts as given", allEnv, []string{"-etcd", ""},
			want{nil, "flag -etcd", "env-ca.pem", "env-cert.pem", "env-key.pem", "envuser", "envpw"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := parseFlags(t, tc.env, tc.args...)
			got := want{o.Endpoints, o.EndpointsSource(), o.CACert, o.Cert, o.Key, o.User, o.Password}
			if !slices.Equal(got.endpoints, tc.want.endpoints) || got.source != tc.want.source ||
				got.cacert != tc.want.cacert || got.cert != tc.want.cert || got.key != tc.want.key ||
				got.user != tc.want.user || got.password != tc.want.password {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// The environment fills values but not the flags' defaults: -h shows no
// password.
func TestHelpShowsNoValueFromTheEnvironment(t *testing.T) {
	setEnv(t, allEnv)
	var o Options
	var help bytes.Buffer
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(&help)
	o.AddFlags(fs)
	fs.PrintDefaults()
	for _, v := range allEnv {
		if strings.Contains(help.String(), v) {
			t.Errorf("help shows %q:\n%s", v, help.String())
		}
	}
}

func TestCredentials(t *testing.T) {
	cases := []struct {
		name     string
		env      map[string]string
		args     []string // nil: opts is filled in directly (as the Caddy module does)
		opts     Options
		user, pw string
	}{
		{"-user name:password", nil, []string{"-user", "root:pw"}, Options{}, "root", "pw"},
		{"-user and -password", nil, []string{"-user", "root", "-password", "pw"}, Options{}, "root", "pw"},
		{"-user, $ETCDCTL_PASSWORD", map[string]string{"ETCDCTL_PASSWORD": "envpw"}, []string{"-user", "root"}, Options{}, "root", "envpw"},
		{"$ETCDCTL_USER name:password", map[string]string{"ETCDCTL_USER": "root:envpw"}, []string{}, Options{}, "root", "envpw"},
		{"-user name:password wins over $ETCDCTL_PASSWORD", map[string]string{"ETCDCTL_PASSWORD": "envpw"},
			[]string{"-user", "root:pw"}, Options{}, "root", "pw"},
		{"-password wins over $ETCDCTL_USER's password", map[string]string{"ETCDCTL_USER": "root:envpw"},
			[]string{"-password", "pw"}, Options{}, "root", "pw"},
		{"-user wins over $ETCDCTL_USER", map[string]string{"ETCDCTL_USER": "alice:envpw"}, []string{"-user", "bob"}, Options{}, "bob", ""},
		{"-user with a colon and -password: the user is taken whole, as etcdctl does", nil,
			[]string{"-password", "pw", "-user", "a:b"}, Options{}, "a:b", "pw"},
		{"direct user:password", nil, nil, Options{User: "root:pw"}, "root", "pw"},
		{"direct user and password", nil, nil, Options{User: "a:b", Password: "pw"}, "a:b", "pw"},
		{"direct options do not read the environment", map[string]string{"ETCDCTL_PASSWORD": "envpw"}, nil,
			Options{User: "root"}, "root", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			if tc.args != nil {
				o = parseFlags(t, tc.env, tc.args...)
			} else {
				setEnv(t, tc.env)
			}
			o.Endpoints = []string{"a:1"}
			cfg, err := o.Config(nil)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Username != tc.user || cfg.Password != tc.pw {
				t.Errorf("user %q password %q; want %q %q", cfg.Username, cfg.Password, tc.user, tc.pw)
			}
		})
	}
}

func TestInvalidOptions(t *testing.T) {
	cases := []struct {
		name string
		opts func(t *testing.T) Options
		want string
	}{
		{"no endpoints", func(*testing.T) Options { return Options{} }, "no etcd endpoints"},
		{"endpoint without port", func(*testing.T) Options { return Options{Endpoints: []string{"etcd-01"}} },
			`etcd endpoint "etcd-01": want host:port`},
		{"endpoint with another scheme", func(*testing.T) Options { return Options{Endpoints: []string{"ftp://x:1"}} },
			`etcd endpoint "ftp://x:1`},
		{"endpoint from $ETCDCTL_ENDPOINTS", func(t *testing.T) Options {
			return parseFlags(t, map[string]string{"ETCDCTL_ENDPOINTS": "etcd-01"})
		}, `etcd endpoint "etcd-01": want host:port, e.g. etcd-01.example.com:2379 (from $ETCDCTL_ENDPOINTS)`},
		{"cert without key", func(*testing.T) Options { return Options{Endpoints: []string{"a:1"}, Cert: "c.pem"} },
			"-cert and -key go together"},
		{"$ETCDCTL_CERT without a key", func(t *testing.T) Options {
			return parseFlags(t, map[string]string{"ETCDCTL_CERT": "c.pem"}, "-etcd", "a:1")
		}, "-cert and -key go together"},
		{"missing CA file", func(*testing.T) Options { return Options{Endpoints: []string{"a:1"}, CACert: "/nonexistent/ca.pem"} },
			"read -cacert"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts(t)
			_, err := o.Config(nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Config(%+v) error = %v; want %q", o, err, tc.want)
			}
		})
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
	if _, err := c.Client(t).Put(ctx, "k", "v"); err == nil {
		t.Fatal("etcd accepts a client without credentials: auth is not on")
	}

	eps := strings.Join(c.Endpoints(), ",")
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string // "" = the put succeeds
	}{
		{"-user user:password", nil, []string{"-user", "root:s3cret"}, ""},
		{"password from $ETCDCTL_PASSWORD", map[string]string{"ETCDCTL_PASSWORD": "s3cret"}, []string{"-user", "root"}, ""},
		{"user and password from the environment", map[string]string{"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "s3cret"}, nil, ""},
		{"-password wins over a wrong $ETCDCTL_PASSWORD", map[string]string{"ETCDCTL_PASSWORD": "nope"},
			[]string{"-user", "root", "-password", "s3cret"}, ""},
		{"wrong password", nil, []string{"-user", "root", "-password", "nope"}, "authentication failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := parseFlags(t, tc.env, append([]string{"-etcd", eps}, tc.args...)...)
			cli, err := o.New(nil)
			if err == nil {
				defer cli.Close()
				_, err = cli.Put(ctx, "k", "v")
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("put: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v; want %q", err, tc.wantErr)
			}
		})
	}
}

func TestTLSAgainstEtcdRequiringClientCertificates(t *testing.T) {
	c, files := etcdtest.StartTLS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	eps := strings.Join(c.Endpoints(), ",")
	cases := []struct {
		name      string
		env       map[string]string
		args      []string
		wantErr   string // of the configuration; "" = none
		wantPutOK bool
	}{
		{"-cacert, -cert, -key", nil, []string{"-etcd", eps, "-cacert", files.CA, "-cert", files.ClientCert, "-key", files.ClientKey}, "", true},
		{"ETCDCTL_ variables", map[string]string{"ETCDCTL_ENDPOINTS": eps, "ETCDCTL_CACERT": files.CA,
			"ETCDCTL_CERT": files.ClientCert, "ETCDCTL_KEY": files.ClientKey}, nil, "", true},
		// Without a client certificate the server refuses the connection.
		{"no client certificate", nil, []string{"-etcd", eps, "-cacert", files.CA}, "", false},
		// A wrong CA file is reported clearly.
		{"CA file holding a key", nil, []string{"-etcd", eps, "-cacert", files.ClientKey}, "holds no PEM certificate", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := parseFlags(t, tc.env, tc.args...)
			cli, err := o.New(nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v; want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			short, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err = cli.Put(short, "k", "v")
			if tc.wantPutOK && err != nil {
				t.Fatalf("put over TLS: %v", err)
			}
			if !tc.wantPutOK && err == nil {
				t.Fatal("etcd accepted a client without a certificate")
			}
		})
	}
}

// A certificate rotated in place changes the pool key, so a config reload
// connects with the new one instead of keeping the client made with the old.
func TestPoolKeyFollowsTheTLSFilesContents(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "client.pem")
	write := func(s string) {
		if err := os.WriteFile(cert, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("old certificate")
	o := Options{Endpoints: []string{"127.0.0.1:2379"}, Cert: cert, Key: cert}
	before := o.PoolKey()
	for _, tc := range []struct {
		name   string
		change func()
		same   bool
	}{
		{"same contents", func() {}, true},
		{"rotated in place", func() { write("new certificate") }, false},
		{"removed", func() { os.Remove(cert) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.change()
			if got := o.PoolKey(); (got == before) != tc.same {
				t.Fatalf("pool key same = %v, want %v", got == before, tc.same)
			}
			before = o.PoolKey()
		})
	}
}
