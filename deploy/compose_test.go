package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	_ "github.com/dtablecluster/dtable-router/caddymodule"
	"github.com/dtablecluster/dtable-router/internal/fakeserver"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/serverconfig"
)

// expectation is what one compose file must run.
type expectation struct {
	file     string   // relative to the repository root
	services []string // exactly these
	proxy    string   // the proxy node's service
	// etcd lists the etcd members' services; none when etcd runs elsewhere.
	etcd []string
	// etcdEndpoints is where every program must look for etcd (host:port).
	etcdEndpoints []string
	servers       []serverPair
}

// serverPair is a dtable-server (the stand-in) and the registrar beside it.
type serverPair struct{ server, registrar string }

var deployments = []expectation{
	{
		file: "docker-compose.yml",
		services: []string{
			"etcd-01", "etcd-02", "etcd-03",
			"dtable-server-01", "dtable-server-01-registrar",
			"dtable-server-02", "dtable-server-02-registrar",
			"dtable-server-proxy",
			"dtable-cluster-monitor-01", "dtable-cluster-monitor-02",
		},
		proxy:         "dtable-server-proxy",
		etcd:          []string{"etcd-01", "etcd-02", "etcd-03"},
		etcdEndpoints: []string{"etcd-01:2379", "etcd-02:2379", "etcd-03:2379"},
		servers: []serverPair{
			{"dtable-server-01", "dtable-server-01-registrar"},
			{"dtable-server-02", "dtable-server-02-registrar"},
		},
	},
	{
		file:          "docker-compose.proxy-node.yml",
		services:      []string{"dtable-server-proxy", "dtable-cluster-monitor"},
		proxy:         "dtable-server-proxy",
		etcdEndpoints: []string{"etcd-01.example.com:2379", "etcd-02.example.com:2379", "etcd-03.example.com:2379"},
	},
}

// Facts about what we ship.
var (
	// ourPrograms must all be in the image, on the PATH.
	ourPrograms = []string{"caddy", "monitor", "registrar", "stand-in-server"}
	proxyPorts  = []uint32{5550, 5555}
	imagePath   = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
	etcdImages  = []string{"quay.io/coreos/etcd", "gcr.io/etcd-development/etcd"}
)

// check is one property of a loaded compose file; it returns the problems
// found (none: it holds).
type check struct {
	name string
	run  func(d *deployment) []string
}

var checks = []check{
	{"valid", checkValid},
	{"services", checkServices},
	{"proxy ports", checkProxyPorts},
	{"server configs", checkServerConfigs},
	{"etcd cluster", checkEtcdCluster},
	{"etcd endpoints", checkEtcdEndpoints},
	{"programs in the image", checkPrograms},
	{"program flags", checkFlags},
	{"caddyfile", checkCaddyfile},
}

// TestComposeFiles loads each compose file with compose-go and runs every
// check on it.
func TestComposeFiles(t *testing.T) {
	for _, want := range deployments {
		t.Run(want.file, func(t *testing.T) {
			d := load(want, nil)
			for _, c := range checks {
				t.Run(c.name, func(t *testing.T) {
					if c.name != "valid" && d.project == nil {
						t.Fatalf("not loaded: %v", d.loadErr)
					}
					for _, p := range c.run(d) {
						t.Error(p)
					}
				})
			}
		})
	}
}

// TestChecksCatchMistakes breaks the files one way at a time (in memory)
// and expects the named check to say so: every check can fail.
func TestChecksCatchMistakes(t *testing.T) {
	const cluster, proxyNode = "docker-compose.yml", "docker-compose.proxy-node.yml"
	tests := []struct {
		name     string
		check    string
		compose  string // which deployment
		file     string // the file to change (relative to the repository root)
		old, new string // replace the first occurrence
	}{
		{"unknown key", "valid", cluster, cluster, "    stop_grace_period: 75s\n", "    stop_grace_period: 75s\n    bogus_key: 1\n"},
		{"missing bind source", "valid", cluster, cluster, "./deploy/dtable-server-02:", "./deploy/dtable-server-2:"},
		{"bad port", "valid", proxyNode, proxyNode, `"5550:5550"`, `"55a50:5550"`},
		{"monitor renamed", "services", cluster, cluster, "dtable-cluster-monitor-02:\n", "dtable-cluster-monitor-03:\n"},
		{"proxy-node monitor renamed", "services", proxyNode, proxyNode, "dtable-cluster-monitor:\n", "cluster-monitor:\n"},
		{"5555 published as 5556", "proxy ports", cluster, cluster, `:5555:5555"`, `:5556:5555"`},
		{"operator site bound to loopback in the container", "caddyfile", cluster, cluster, "DTABLE_ADMIN_BIND: 0.0.0.0", "DTABLE_ADMIN_BIND: 127.0.0.1"},
		{"5550 sent to 5551", "proxy ports", proxyNode, proxyNode, `"5550:5550"`, `"5550:5551"`},
		{"server-02 mounts server-01's config", "server configs", cluster, cluster, "./deploy/dtable-server-02:", "./deploy/dtable-server-01:"},
		{"notify-url to the other server", "server configs", cluster, cluster, "http://dtable-server-01:8000/_cluster/notify", "http://dtable-server-02:8000/_cluster/notify"},
		{"stand-in listens elsewhere", "server configs", cluster, cluster, `"-listen", ":8000"`, `"-listen", ":8080"`},
		{"node_url port not published", "server configs", cluster, cluster, `"127.0.0.1:8002:8000"`, `"127.0.0.1:8003:8000"`},
		{"grace period too short", "server configs", cluster, cluster, "    stop_grace_period: 75s\n", "    stop_grace_period: 10s\n"},
		{"config not mounted", "server configs", cluster, cluster, "/shared/seatable/conf/dtable_server_config.json", "/etc/dtable_server_config.json"},
		{"node_id not the service", "server configs", cluster, "deploy/dtable-server-01/dtable_server_config.json", `"node_id": "dtable-server-01"`, `"node_id": "dtable-server-1"`},
		{"config does not parse", "server configs", cluster, "deploy/dtable-server-01/dtable_server_config.json", `"cluster_config": {`, `"cluster_config": {{`},
		{"token differs", "etcd cluster", cluster, cluster, "--initial-cluster-token=dtable-cluster-etcd\n      - --initial-cluster-state=new\n    volumes:\n      - etcd-03-data", "--initial-cluster-token=other\n      - --initial-cluster-state=new\n    volumes:\n      - etcd-03-data"},
		{"member missing from initial-cluster", "etcd cluster", cluster, cluster, "--initial-cluster=etcd-01=http://etcd-01:2380,etcd-02=http://etcd-02:2380,etcd-03=http://etcd-03:2380", "--initial-cluster=etcd-01=http://etcd-01:2380,etcd-02=http://etcd-02:2380"},
		{"client URL host wrong", "etcd cluster", cluster, cluster, "--advertise-client-urls=http://etcd-02:2379", "--advertise-client-urls=http://etcd-2:2379"},
		{"peer port wrong", "etcd cluster", cluster, cluster, "--initial-advertise-peer-urls=http://etcd-03:2380", "--initial-advertise-peer-urls=http://etcd-03:2381"},
		{"name not the service", "etcd cluster", cluster, cluster, "--name=etcd-02", "--name=etcd-2"},
		{"state existing", "etcd cluster", cluster, cluster, "--initial-cluster-state=new", "--initial-cluster-state=existing"},
		{"image latest", "etcd cluster", cluster, cluster, "quay.io/coreos/etcd:v3.7.3", "quay.io/coreos/etcd:latest"},
		{"shared data volume", "etcd cluster", cluster, cluster, "etcd-02-data:/etcd-data", "etcd-01-data:/etcd-data"},
		{"monitor misses members", "etcd endpoints", cluster, cluster, "ETCDCTL_ENDPOINTS: etcd-01:2379,etcd-02:2379,etcd-03:2379", "ETCDCTL_ENDPOINTS: etcd-01:2379"},
		{"config lists a stranger", "etcd endpoints", cluster, "deploy/dtable-server-02/dtable_server_config.json", `"etcd-03:2379"]`, `"etcd-04:2379"]`},
		{"proxy-node monitor wrong host", "etcd endpoints", proxyNode, proxyNode, `"monitor", "-etcd", "etcd-01.example.com:2379,`, `"monitor", "-etcd", "etcd-09.example.com:2379,`},
		{"program not installed", "programs in the image", cluster, cluster, `["stand-in-server", "-name", "dtable-server-02"`, `["dtable-server", "-name", "dtable-server-02"`},
		{"Dockerfile drops stand-in-server", "programs in the image", cluster, "Dockerfile", " && go build -o /out/stand-in-server ./tools/stand-in-server \\\n", ""},
		{"built from another context", "programs in the image", cluster, cluster, "  build: .\n", "  build: ./tools\n"},
		{"wrong path to monitor", "programs in the image", proxyNode, proxyNode, `command: ["monitor"`, `command: ["/usr/bin/monitor"`},
		{"CMD names another program", "programs in the image", proxyNode, "Dockerfile", "CMD [\"caddy\"", "CMD [\"caddy2\""},
		{"misspelt registrar flag", "program flags", cluster, cluster, "      - -health-path\n", "      - -health_path\n"},
		{"bad duration", "program flags", cluster, cluster, `"-save-delay", "200ms"`, `"-save-delay", "200"`},
		{"misspelt monitor flag", "program flags", proxyNode, proxyNode, `["monitor", "-etcd"`, `["monitor", "-etc"`},
		{"proxy misses a member", "caddyfile", cluster, cluster, "ETCD_ENDPOINTS: etcd-01:2379 etcd-02:2379 etcd-03:2379", "ETCD_ENDPOINTS: etcd-01:2379 etcd-02:2379"},
		{"prefix differs", "caddyfile", cluster, cluster, "DTABLE_PREFIX: /dtable-cluster", "DTABLE_PREFIX: /other"},
		{"proxy-node env misspelt", "caddyfile", proxyNode, proxyNode, "      - ETCD_ENDPOINTS=", "      - ETCD_ENDPOINT="},
		{"Caddyfile syntax", "caddyfile", cluster, "Caddyfile.example", "\tdtable_bucket_proxy {\n", "\tdtable_bucket_proxy {\n\t\tno_such_subdirective\n"},
		{"Caddyfile port", "caddyfile", cluster, "Caddyfile.example", ":5555 {", ":5556 {"},
		{"Caddyfile not where --config says", "caddyfile", proxyNode, "Dockerfile", "COPY Caddyfile.example /etc/caddy/Caddyfile", "COPY Caddyfile.example /etc/caddy/Caddyfile.example"},
	}
	for _, tc := range tests {
		t.Run(tc.check+"/"+tc.name, func(t *testing.T) {
			var want expectation
			for _, e := range deployments {
				if e.file == tc.compose {
					want = e
				}
			}
			var run func(*deployment) []string
			for _, c := range checks {
				if c.name == tc.check {
					run = c.run
				}
			}
			if run == nil || want.file == "" {
				t.Fatalf("no check %q or compose file %q", tc.check, tc.compose)
			}
			orig, err := os.ReadFile(filepath.Join(repoRoot(), tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(orig), tc.old) {
				t.Fatalf("%s does not contain %q any more: update this test", tc.file, tc.old)
			}
			d := load(want, map[string]string{tc.file: strings.Replace(string(orig), tc.old, tc.new, 1)})
			if d.project == nil && tc.check != "valid" {
				t.Fatalf("the changed file does not load, so %q cannot tell: %v", tc.check, d.loadErr)
			}
			problems := run(d)
			if len(problems) == 0 {
				t.Fatalf("check %q found nothing wrong", tc.check)
			}
			t.Logf("%s: %s", tc.check, strings.Join(problems, "; "))
		})
	}
}

// deployment is one compose file, loaded.
type deployment struct {
	want    expectation
	root    string            // the repository root, absolute
	overlay map[string]string // repository file → content that replaces it
	project *types.Project
	loadErr error
	docker  *dockerfile
	dockErr error
}

func repoRoot() string {
	root, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return root
}

// read returns a repository file (rel: relative to the root, or absolute
// inside it), or its replacement.
func (d *deployment) read(rel string) ([]byte, error) {
	if filepath.IsAbs(rel) {
		r, err := filepath.Rel(d.root, rel)
		if err != nil || strings.HasPrefix(r, "..") {
			return nil, fmt.Errorf("%s is outside the repository", rel)
		}
		rel = r
	}
	if s, ok := d.overlay[filepath.ToSlash(rel)]; ok {
		return []byte(s), nil
	}
	return os.ReadFile(filepath.Join(d.root, rel))
}

// exists reports whether an absolute path inside the repository exists
// (in the overlay or on disk).
func (d *deployment) exists(abs string) bool {
	if r, err := filepath.Rel(d.root, abs); err == nil {
		if _, ok := d.overlay[filepath.ToSlash(r)]; ok {
			return true
		}
	}
	_, err := os.Stat(abs)
	return err == nil
}

// load loads a compose file as `docker compose` would: schema validation,
// interpolation (of an empty environment, so the files must not depend on
// the caller's), normalization, consistency checks, paths resolved against
// the repository root.
func load(want expectation, overlay map[string]string) *deployment {
	d := &deployment{want: want, root: repoRoot(), overlay: overlay}
	if text, err := d.read("Dockerfile"); err != nil {
		d.dockErr = err
	} else {
		d.docker, d.dockErr = parseDockerfile(string(text), d.read)
	}
	content, err := d.read(want.file)
	if err != nil {
		d.loadErr = err
		return d
	}
	name := strings.TrimSuffix(filepath.Base(want.file), filepath.Ext(want.file))
	d.project, d.loadErr = loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  d.root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(d.root, want.file), Content: content}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName(strings.ReplaceAll(name, ".", "-"), false) // unless the file names itself
	})
	if d.loadErr != nil {
		d.project = nil
	}
	return d
}

// --- the checks ---

func checkValid(d *deployment) []string {
	if d.loadErr != nil {
		return []string{fmt.Sprintf("%s does not load: %v", d.want.file, d.loadErr)}
	}
	var problems []string
	// A missing bind-mount source would be created, empty, by the engine.
	for _, s := range d.services() {
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && d.inRepo(v.Source) && !d.exists(v.Source) {
				problems = append(problems, fmt.Sprintf("service %s mounts %s, which is not in the repository", s.Name, v.Source))
			}
		}
	}
	return problems
}

func checkServices(d *deployment) []string {
	var problems []string
	for _, name := range d.want.services {
		if _, ok := d.project.Services[name]; !ok {
			problems = append(problems, fmt.Sprintf("no service %s", name))
		}
	}
	for name := range d.project.Services {
		if !slices.Contains(d.want.services, name) {
			problems = append(problems, fmt.Sprintf("unexpected service %s", name))
		}
	}
	if len(d.project.DisabledServices) > 0 {
		problems = append(problems, fmt.Sprintf("services only in a profile: %v (this check expects none)", keys(d.project.DisabledServices)))
	}
	sort.Strings(problems)
	return problems
}

func checkProxyPorts(d *deployment) []string {
	proxy, ok := d.project.Services[d.want.proxy]
	if !ok {
		return []string{fmt.Sprintf("no proxy service %s", d.want.proxy)}
	}
	var problems []string
	for _, port := range proxyPorts {
		found := false
		for _, p := range proxy.Ports {
			if p.Target == port && p.Published == fmt.Sprint(port) && (p.Protocol == "" || p.Protocol == "tcp") {
				found = true
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("%s does not publish port %d as %d/tcp (ports: %v)", proxy.Name, port, port, portStrings(proxy.Ports)))
		}
	}
	return problems
}

// checkServerConfigs: each stand-in server has a registrar that reads that
// server's own dtable_server_config.json, mounted from the repository, whose
// node_id, node_url and local_node_url match the compose services.
func checkServerConfigs(d *deployment) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	seenFile, seenID := map[string]string{}, map[string]string{}
	for _, pair := range d.want.servers {
		server, ok1 := d.project.Services[pair.server]
		reg, ok2 := d.project.Services[pair.registrar]
		if !ok1 || !ok2 {
			bad("no services %s and %s", pair.server, pair.registrar)
			continue
		}
		sargs, rargs := d.argv(server), d.argv(reg)
		if program(sargs) != "stand-in-server" || program(rargs) != "registrar" {
			bad("%s must run stand-in-server and %s registrar, they run %q and %q", server.Name, reg.Name, sargs, rargs)
			continue
		}
		listen, _ := flagValue(sargs, "listen")
		if listen == "" {
			listen = ":8000" // the stand-in's default
		}
		_, listenPort, err := net.SplitHostPort(listen)
		if err != nil {
			bad("%s: -listen %q: %v", server.Name, listen, err)
			continue
		}
		serverName, _ := flagValue(sargs, "name")

		// The registrar's -config file, through its bind mounts.
		cfgPath, ok := flagValue(rargs, "config")
		if !ok {
			bad("%s has no -config", reg.Name)
			continue
		}
		host := d.hostPath(reg, cfgPath)
		if host == "" {
			bad("%s: -config %s is not in any of its bind mounts %v", reg.Name, cfgPath, mounts(reg))
			continue
		}
		if !d.inRepo(host) {
			bad("%s: -config %s is %s, outside the repository", reg.Name, cfgPath, host)
			continue
		}
		rel, _ := filepath.Rel(d.root, host)
		if other, dup := seenFile[host]; dup {
			bad("%s and %s read the same config %s", other, reg.Name, rel)
		}
		seenFile[host] = reg.Name
		data, err := d.read(rel)
		if err != nil {
			bad("%s: -config %s: %v", reg.Name, cfgPath, err)
			continue
		}
		cfg, err := serverconfig.Parse(rel, data)
		if err != nil {
			bad("%s: %v", reg.Name, err)
			continue
		}
		if v, ok := flagValue(rargs, "node-id"); ok {
			cfg.NodeID = v
		}
		if v, ok := flagValue(rargs, "node-url"); ok {
			cfg.NodeURL = v
		}
		if v, ok := flagValue(rargs, "local-node-url"); ok {
			cfg.LocalNodeURL = v
		}

		// node_id: the server's service name and the stand-in's -name.
		if cfg.NodeID != server.Name {
			bad("%s: node_id %q, want the service name %q", rel, cfg.NodeID, server.Name)
		}
		if serverName != cfg.NodeID {
			bad("%s runs -name %q, its registrar's node_id is %q", server.Name, serverName, cfg.NodeID)
		}
		if other, dup := seenID[cfg.NodeID]; dup {
			bad("node_id %q in %s and in %s", cfg.NodeID, other, rel)
		}
		seenID[cfg.NodeID] = rel

		// local_node_url: the server's service on the compose network.
		local, err := url.Parse(cfg.LocalNodeURL)
		if err != nil || local.Scheme != "http" || local.Hostname() != server.Name || local.Port() != listenPort {
			bad("%s: local_node_url %q, want http://%s:%s/ (the service and its -listen port)", rel, cfg.LocalNodeURL, server.Name, listenPort)
		}
		// node_url: the server's port published on the Docker host.
		nodeURL, err := url.Parse(cfg.NodeURL)
		if err != nil || nodeURL.Scheme != "http" {
			bad("%s: node_url %q must be an http URL of a port %s publishes", rel, cfg.NodeURL, server.Name)
		} else if !publishes(server, nodeURL, listenPort) {
			bad("%s: node_url %q: %s publishes no such port to its -listen port %s (ports: %v)", rel, cfg.NodeURL, server.Name, listenPort, portStrings(server.Ports))
		}
		// The server contract: notifications to this server's endpoint.
		if notify, _ := flagValue(rargs, "notify-url"); notify != strings.TrimRight(cfg.LocalNodeURL, "/")+fakeserver.NotifyPath {
			bad("%s: -notify-url %q, want %q (local_node_url + %s)", reg.Name, notify, strings.TrimRight(cfg.LocalNodeURL, "/")+fakeserver.NotifyPath, fakeserver.NotifyPath)
		}
		if _, ok := reg.DependsOn[server.Name]; !ok {
			bad("%s does not depend on %s", reg.Name, server.Name)
		}
		// On a stop the registrar hands off for up to -shutdown-timeout:
		// the engine must not kill it sooner.
		shutdown := 60 * time.Second
		if v, ok := flagValue(rargs, "shutdown-timeout"); ok {
			if shutdown, err = time.ParseDuration(v); err != nil {
				bad("%s: -shutdown-timeout %q: %v", reg.Name, v, err)
			}
		}
		grace := 10 * time.Second // the engine's default
		if reg.StopGracePeriod != nil {
			grace = time.Duration(*reg.StopGracePeriod)
		}
		if grace <= shutdown {
			bad("%s: stop_grace_period %v is not longer than its -shutdown-timeout %v", reg.Name, grace, shutdown)
		}
	}
	return problems
}

// checkEtcdCluster: the etcd services form one cluster.
func checkEtcdCluster(d *deployment) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	var members []types.ServiceConfig
	for _, s := range d.services() {
		if isEtcdImage(s.Image) {
			members = append(members, s)
		}
	}
	var names []string
	for _, m := range members {
		names = append(names, m.Name)
	}
	if !sameSet(names, d.want.etcd) {
		bad("etcd services %v, want %v", names, d.want.etcd)
	}
	if len(members) == 0 {
		return problems
	}

	etcdMinor := goModMinor(d, "go.etcd.io/etcd/server/v3")
	clusters := map[string][]string{}
	tokens := map[string][]string{}
	dataVolumes := map[string]string{}
	for _, m := range members {
		_, tag, _ := strings.Cut(m.Image, ":")
		if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(tag) {
			bad("%s: image %s is not pinned to a release (vX.Y.Z)", m.Name, m.Image)
		} else if etcdMinor != "" && !strings.HasPrefix(tag, etcdMinor+".") {
			bad("%s: image %s, but go.mod builds against etcd %s.x", m.Name, m.Image, etcdMinor)
		}
		if m.Image != members[0].Image {
			bad("%s runs %s, %s runs %s", m.Name, m.Image, members[0].Name, members[0].Image)
		}
		args := d.argv(m)
		if program(args) != "etcd" {
			bad("%s runs %q, not etcd", m.Name, args)
			continue
		}
		flag := func(name string) string {
			v, ok := flagValue(args, name)
			if !ok {
				bad("%s: no --%s", m.Name, name)
			}
			// etcd refuses a setting given both as a flag and as ETCD_*.
			env := "ETCD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
			if _, dup := m.Environment[env]; dup && ok {
				bad("%s: --%s and %s both set", m.Name, name, env)
			}
			return v
		}
		if name := flag("name"); name != m.Name {
			bad("%s: --name=%s, want the service name", m.Name, name)
		}
		peer := flag("initial-advertise-peer-urls")
		client := flag("advertise-client-urls")
		checkURL := func(flagName, u, port string) {
			p, err := url.Parse(u)
			if err != nil || p.Scheme != "http" || p.Hostname() != m.Name || (port != "" && p.Port() != port) {
				bad("%s: --%s=%s, want http://%s:%s", m.Name, flagName, u, m.Name, port)
			}
		}
		checkURL("initial-advertise-peer-urls", peer, "2380")
		checkURL("advertise-client-urls", client, "2379")
		for flagName, adv := range map[string]string{"listen-peer-urls": peer, "listen-client-urls": client} {
			listen := flag(flagName)
			a, _ := url.Parse(adv)
			l, err := url.Parse(listen)
			if err != nil || a == nil || l.Port() != a.Port() || (l.Hostname() != "0.0.0.0" && l.Hostname() != m.Name) {
				bad("%s: --%s=%s does not serve what it advertises (%s)", m.Name, flagName, listen, adv)
			}
		}
		initial := map[string]string{}
		for _, kv := range strings.Split(flag("initial-cluster"), ",") {
			k, v, _ := strings.Cut(kv, "=")
			initial[k] = v
		}
		if initial[m.Name] != peer {
			bad("%s: --initial-cluster gives it %q, it advertises %q", m.Name, initial[m.Name], peer)
		}
		if !sameSet(keys(initial), d.want.etcd) {
			bad("%s: --initial-cluster names %v, want %v", m.Name, sorted(keys(initial)), d.want.etcd)
		}
		clusters[normalizeCluster(initial)] = append(clusters[normalizeCluster(initial)], m.Name)
		token := flag("initial-cluster-token")
		tokens[token] = append(tokens[token], m.Name)
		if state := flag("initial-cluster-state"); state != "new" {
			bad("%s: --initial-cluster-state=%s, want new (a cluster started from these files)", m.Name, state)
		}
		dataDir := flag("data-dir")
		vol := ""
		for _, v := range m.Volumes {
			if v.Type == types.VolumeTypeVolume && v.Target == dataDir {
				vol = v.Source
			}
		}
		if vol == "" {
			bad("%s: --data-dir=%s is not a named volume", m.Name, dataDir)
		} else if other, dup := dataVolumes[vol]; dup {
			bad("%s and %s share the data volume %s", other, m.Name, vol)
		} else {
			dataVolumes[vol] = m.Name
		}
	}
	if len(clusters) > 1 {
		bad("the members disagree on --initial-cluster: %v", clusters)
	}
	if len(tokens) > 1 {
		bad("the members disagree on --initial-cluster-token: %v", tokens)
	}
	for tok := range tokens {
		if tok == "" {
			bad("empty --initial-cluster-token")
		}
	}
	return problems
}

// checkEtcdEndpoints: every program that talks to etcd is pointed at the
// expected endpoints (in the cluster file: the members' advertised client
// URLs), by whichever means it uses.
func checkEtcdEndpoints(d *deployment) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	want := d.want.etcdEndpoints
	// In the cluster file the members' advertised client URLs are the truth.
	if len(d.want.etcd) > 0 {
		var advertised []string
		for _, name := range d.want.etcd {
			if s, ok := d.project.Services[name]; ok {
				v, _ := flagValue(d.argv(s), "advertise-client-urls")
				advertised = append(advertised, hostPorts(strings.Split(v, ","))...)
			}
		}
		if !sameSet(advertised, want) {
			bad("the etcd members advertise %v, want %v", advertised, want)
		}
	}
	for _, s := range d.services() {
		if !d.ours(s) {
			continue
		}
		args := d.argv(s)
		prog := program(args)
		var sources []string
		compare := func(what string, got []string) {
			sources = append(sources, what)
			if !sameSet(hostPorts(got), want) {
				bad("%s: %s lists %v, want %v", s.Name, what, got, want)
			}
		}
		for _, f := range []string{"etcd", "endpoints"} {
			if v, ok := flagValue(args, f); ok {
				compare("-"+f, strings.Split(v, ","))
			}
		}
		if v := s.Environment["ETCDCTL_ENDPOINTS"]; v != nil {
			compare("ETCDCTL_ENDPOINTS", strings.Split(*v, ","))
		}
		if v := s.Environment["ETCD_ENDPOINTS"]; v != nil { // the Caddyfile's
			compare("ETCD_ENDPOINTS", strings.Fields(*v))
		}
		if cfgPath, ok := flagValue(args, "config"); ok {
			if host := d.hostPath(s, cfgPath); host != "" && d.inRepo(host) {
				rel, _ := filepath.Rel(d.root, host)
				if data, err := d.read(rel); err == nil {
					if cfg, err := serverconfig.Parse(rel, data); err == nil {
						compare(rel+" etcd_host_list", cfg.EtcdHostList)
					}
				}
			}
		}
		needs := prog == "registrar" || prog == "monitor" || prog == "caddy"
		if needs && len(sources) == 0 {
			bad("%s (%s) is not told where etcd is", s.Name, prog)
		}
	}
	return problems
}

// checkPrograms: every service of our image builds it from the repository's
// Dockerfile and runs a program that Dockerfile installs; other images are
// pinned.
func checkPrograms(d *deployment) []string {
	if d.dockErr != nil {
		return []string{d.dockErr.Error()}
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for _, p := range ourPrograms {
		if _, ok := d.docker.installed[path.Join("/usr/local/bin", p)]; !ok {
			bad("the Dockerfile does not install %s in /usr/local/bin (it installs %v)", p, sorted(keys(d.docker.installed)))
		}
	}
	for out, pkg := range d.docker.goBuilds {
		if !isMainPackage(filepath.Join(d.root, filepath.FromSlash(pkg))) {
			bad("the Dockerfile builds %s from %s, which is not a main package", out, pkg)
		}
	}
	if d.docker.entrypoint != nil {
		bad("the Dockerfile sets an ENTRYPOINT; the compose commands expect none")
	}
	images := map[string]bool{}
	for _, s := range d.services() {
		if s.Build == nil {
			if isEtcdImage(s.Image) {
				continue // checkEtcdCluster pins it and reads its command
			}
			if _, tag, ok := strings.Cut(path.Base(s.Image), ":"); !ok || tag == "latest" {
				bad("%s runs %s, neither built here nor pinned", s.Name, s.Image)
			}
			continue
		}
		images[s.Image] = true
		dockerfile := s.Build.Dockerfile
		if dockerfile == "" {
			dockerfile = "Dockerfile"
		}
		if s.Build.Context != d.root || dockerfile != "Dockerfile" {
			bad("%s builds %s in %s, want the repository's Dockerfile", s.Name, dockerfile, s.Build.Context)
			continue
		}
		if len(s.Entrypoint) > 0 {
			bad("%s sets an entrypoint %q", s.Name, s.Entrypoint)
		}
		args := d.argv(s)
		if len(args) == 0 {
			bad("%s runs nothing", s.Name)
			continue
		}
		if found := d.docker.lookPath(args[0]); found == "" {
			bad("%s runs %s, which the Dockerfile does not install (it installs %v)", s.Name, args[0], sorted(keys(d.docker.installed)))
		}
	}
	if len(images) > 1 {
		bad("the services build the one Dockerfile under several names: %v", sorted(keys(images)))
	}
	return problems
}

// checkFlags runs each of our Go programs as the compose file does, with
// -h added: the flags and their values must parse.
func checkFlags(d *deployment) []string {
	if d.dockErr != nil {
		return []string{d.dockErr.Error()}
	}
	var problems []string
	for _, s := range d.services() {
		if !d.ours(s) {
			continue
		}
		args := d.argv(s)
		prog := program(args)
		if prog == "caddy" {
			problems = append(problems, caddyArgs(s.Name, args)...)
			continue
		}
		pkg := ""
		if p := d.docker.lookPath(args[0]); p != "" {
			pkg = d.docker.goBuilds[d.docker.sourceOf(p)]
		}
		if pkg == "" {
			problems = append(problems, fmt.Sprintf("%s: %s is not a Go program the Dockerfile builds", s.Name, args[0]))
			continue
		}
		bin, err := buildProgram(pkg)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", s.Name, err))
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bin, append(slices.Clone(args[1:]), "-h")...)
		cmd.Env = os.Environ()
		for k, v := range s.Environment {
			if v != nil {
				cmd.Env = append(cmd.Env, k+"="+*v)
			}
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err = cmd.Run()
		cancel()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %q -h: %v\n%s", s.Name, args, err, lastLines(out.String(), 5)))
		}
	}
	return problems
}

// caddyArgs checks a Caddy command line: `caddy run` with flags it has.
func caddyArgs(service string, args []string) []string {
	known := []string{"config", "adapter", "envfile", "environ", "resume", "watch", "pidfile", "pingback"}
	if len(args) < 2 || args[1] != "run" {
		return []string{fmt.Sprintf("%s: %q: want caddy run", service, args)}
	}
	var problems []string
	for _, a := range args[2:] {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !slices.Contains(known, name) {
			problems = append(problems, fmt.Sprintf("%s: caddy run has no flag %s", service, a))
		}
	}
	return problems
}

// checkCaddyfile: the proxy's Caddyfile (mounted, or the one in the image)
// adapts with our modules, with the service's environment, and serves the
// published ports from the expected etcd endpoints and prefix.
func checkCaddyfile(d *deployment) []string {
	if d.dockErr != nil {
		return []string{d.dockErr.Error()}
	}
	proxy, ok := d.project.Services[d.want.proxy]
	if !ok {
		return []string{fmt.Sprintf("no proxy service %s", d.want.proxy)}
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	args := d.argv(proxy)
	if program(args) != "caddy" || len(args) < 2 || args[1] != "run" {
		return []string{fmt.Sprintf("%s runs %q, want caddy run", proxy.Name, args)}
	}
	if a, ok := flagValue(args, "adapter"); ok && a != "caddyfile" {
		bad("%s: --adapter %s; this check reads Caddyfiles", proxy.Name, a)
	}
	cfgPath, ok := flagValue(args, "config")
	if !ok {
		return []string{fmt.Sprintf("%s: %q has no --config", proxy.Name, args)}
	}
	var rel string
	if host := d.hostPath(proxy, cfgPath); host != "" {
		if !d.inRepo(host) {
			return []string{fmt.Sprintf("%s: --config %s is mounted from %s, outside the repository", proxy.Name, cfgPath, host)}
		}
		rel, _ = filepath.Rel(d.root, host)
	} else if src, ok := d.docker.files[cfgPath]; ok {
		rel = src
	} else {
		return []string{fmt.Sprintf("%s: --config %s is neither mounted nor copied by the Dockerfile (it copies %v)", proxy.Name, cfgPath, d.docker.files)}
	}
	text, err := d.read(rel)
	if err != nil {
		return []string{err.Error()}
	}
	var out []byte
	var warnings []caddyconfig.Warning
	withEnv(proxy.Environment, func() {
		out, warnings, err = caddyconfig.GetAdapter("caddyfile").Adapt(text, map[string]any{"filename": rel})
	})
	if err != nil {
		return []string{fmt.Sprintf("%s (%s in %s) does not adapt: %v", rel, cfgPath, proxy.Name, err)}
	}
	for _, w := range warnings {
		bad("%s:%d: %s", rel, w.Line, w.Message)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string          `json:"listen"`
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		return []string{fmt.Sprintf("%s: adapted JSON: %v", rel, err)}
	}
	prefix := d.clusterPrefix()
	served := map[uint32][]string{} // port → handlers
	for name, srv := range cfg.Apps.HTTP.Servers {
		var handlers []map[string]any
		for _, r := range srv.Routes {
			var v any
			json.Unmarshal(r, &v)
			findHandlers(v, &handlers)
		}
		for _, h := range handlers {
			kind, _ := h["handler"].(string)
			if kind != "dtable_bucket" && kind != "dtable_cluster_admin" {
				continue
			}
			var etcd []string
			if list, ok := h["etcd"].([]any); ok {
				for _, e := range list {
					etcd = append(etcd, fmt.Sprint(e))
				}
			}
			if !sameSet(hostPorts(etcd), d.want.etcdEndpoints) {
				bad("%s: server %s: %s reads etcd at %v, want %v", rel, name, kind, etcd, d.want.etcdEndpoints)
			}
			if p, _ := h["prefix"].(string); p != prefix {
				bad("%s: server %s: %s uses prefix %q, the registrars and monitors %q", rel, name, kind, p, prefix)
			}
			for _, l := range srv.Listen {
				if host, port, err := net.SplitHostPort(l); err == nil {
					var n uint32
					fmt.Sscan(port, &n)
					if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
						// Inside a container a loopback listener cannot be
						// reached through a published port.
						bad("%s: server %s listens on %s, a loopback address inside the container", rel, name, l)
						continue
					}
					served[n] = append(served[n], kind)
				}
			}
		}
	}
	for port, kind := range map[uint32]string{5550: "dtable_bucket", 5555: "dtable_cluster_admin"} {
		if !slices.Contains(served[port], kind) {
			bad("%s: nothing serves %s on :%d (served: %v)", rel, kind, port, served)
		}
	}
	for _, p := range proxy.Ports {
		if _, ok := served[p.Target]; !ok {
			bad("%s publishes %d, where the Caddyfile serves nothing of ours", proxy.Name, p.Target)
		}
	}
	return problems
}

// --- helpers ---

func (d *deployment) services() []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, name := range sorted(keys(d.project.Services)) {
		out = append(out, d.project.Services[name])
	}
	return out
}

// ours: the service runs the image our Dockerfile builds.
func (d *deployment) ours(s types.ServiceConfig) bool { return s.Build != nil }

// argv is what the container runs: the command, else the image's CMD.
func (d *deployment) argv(s types.ServiceConfig) []string {
	if len(s.Command) > 0 || !d.ours(s) || d.docker == nil {
		return s.Command
	}
	return d.docker.cmd
}

func (d *deployment) inRepo(abs string) bool {
	r, err := filepath.Rel(d.root, abs)
	return err == nil && r != ".." && !strings.HasPrefix(r, "../")
}

// hostPath maps a path in the service's container to the host file a bind
// mount puts there ("" if none does).
func (d *deployment) hostPath(s types.ServiceConfig, p string) string {
	best, host := "", ""
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		t := path.Clean(v.Target)
		if (p == t || strings.HasPrefix(p, t+"/")) && len(t) > len(best) {
			best, host = t, filepath.Join(v.Source, strings.TrimPrefix(p, t))
		}
	}
	return host
}

// clusterPrefix is the etcd prefix the registrars and monitors use.
func (d *deployment) clusterPrefix() string {
	prefix := schema.DefaultPrefix
	for _, s := range d.services() {
		if v, ok := flagValue(d.argv(s), "prefix"); ok && d.ours(s) {
			prefix = v
		}
	}
	return prefix
}

// lookPath finds a command in the image as a shell would: absolute, or
// on the PATH. It returns the installed path, or "".
func (df *dockerfile) lookPath(name string) string {
	if strings.Contains(name, "/") {
		if _, ok := df.installed[name]; ok {
			return name
		}
		return ""
	}
	for _, dir := range imagePath {
		if _, ok := df.installed[path.Join(dir, name)]; ok {
			return path.Join(dir, name)
		}
	}
	return ""
}

// sourceOf returns the build-stage output an installed path came from.
func (df *dockerfile) sourceOf(installed string) string {
	how := df.installed[installed]
	for out, pkg := range df.goBuilds {
		if "go build "+pkg == how {
			return out
		}
	}
	return ""
}

var (
	buildMu  sync.Mutex
	builtBin = map[string]string{}
	buildDir string
)

// buildProgram builds a package of the repository once per test run.
func buildProgram(pkg string) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := builtBin[pkg]; ok {
		return bin, nil
	}
	if buildDir == "" {
		dir, err := os.MkdirTemp("", "deploy-test-")
		if err != nil {
			return "", err
		}
		buildDir = dir
	}
	bin := filepath.Join(buildDir, strings.ReplaceAll(strings.Trim(pkg, "./"), "/", "_"))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	builtBin[pkg] = bin
	return bin, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// program is the base name of what a command line runs.
func program(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return path.Base(args[0])
}

// flagValue finds a flag's value in a command line: -name value,
// -name=value, or with two dashes.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		k, v, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if k != name {
			continue
		}
		if hasValue {
			return v, true
		}
		if i+1 < len(args) {
			return args[i+1], true
		}
		return "", true
	}
	return "", false
}

func publishes(s types.ServiceConfig, u *url.URL, target string) bool {
	host := u.Hostname()
	if host != "127.0.0.1" && host != "localhost" {
		return false
	}
	for _, p := range s.Ports {
		if p.Published == u.Port() && fmt.Sprint(p.Target) == target &&
			(p.HostIP == "" || p.HostIP == "0.0.0.0" || p.HostIP == "127.0.0.1") {
			return true
		}
	}
	return false
}

func portStrings(ports []types.ServicePortConfig) []string {
	var out []string
	for _, p := range ports {
		out = append(out, fmt.Sprintf("%s:%s->%d/%s", p.HostIP, p.Published, p.Target, p.Protocol))
	}
	return out
}

func mounts(s types.ServiceConfig) []string {
	var out []string
	for _, v := range s.Volumes {
		out = append(out, v.Source+":"+v.Target)
	}
	return out
}

func isEtcdImage(image string) bool {
	repo, _, _ := strings.Cut(image, ":")
	return slices.Contains(etcdImages, repo)
}

// goModMinor returns "vX.Y" of a module required in go.mod, or "".
func goModMinor(d *deployment, module string) string {
	gomod, err := d.read("go.mod")
	if err != nil {
		return ""
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(module) + `\s+(v\d+\.\d+)\.`).FindSubmatch(gomod)
	if m == nil {
		return ""
	}
	return string(m[1])
}

func isMainPackage(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		if b, err := os.ReadFile(f); err == nil && regexp.MustCompile(`(?m)^package main\b`).Match(b) {
			return true
		}
	}
	return false
}

// hostPorts strips schemes and slashes: "http://etcd-01:2379/" → "etcd-01:2379".
func hostPorts(list []string) []string {
	var out []string
	for _, e := range list {
		e = strings.TrimSpace(e)
		if u, err := url.Parse(e); err == nil && u.Host != "" {
			e = u.Host
		}
		out = append(out, strings.TrimRight(e, "/"))
	}
	return out
}

func normalizeCluster(m map[string]string) string {
	var parts []string
	for _, k := range sorted(keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// findHandlers collects every object with a "handler" key.
func findHandlers(v any, out *[]map[string]any) {
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v["handler"]; ok {
			*out = append(*out, v)
		}
		for _, x := range v {
			findHandlers(x, out)
		}
	case []any:
		for _, x := range v {
			findHandlers(x, out)
		}
	}
}

// withEnv runs f with the service's environment as the process's (the
// Caddyfile reads {$VAR}s when it is adapted), and the Caddyfile's own
// variables unset unless the service sets them.
func withEnv(env types.MappingWithEquals, f func()) {
	names := []string{"ETCD_ENDPOINTS", "DTABLE_PREFIX", "ETCD_PASSWORD", "DTABLE_ADMIN_BIND", "DTABLE_ADMIN_TOKEN"}
	for k := range env {
		names = append(names, k)
	}
	saved := map[string]*string{}
	for _, k := range names {
		if _, done := saved[k]; done {
			continue
		}
		if v, ok := os.LookupEnv(k); ok {
			saved[k] = &v
		} else {
			saved[k] = nil
		}
		os.Unsetenv(k)
		if v := env[k]; v != nil {
			os.Setenv(k, *v)
		}
	}
	defer func() {
		for k, v := range saved {
			if v == nil {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, *v)
			}
		}
	}()
	f()
}

// sameSet: a and b hold the same strings, as many times each.
func sameSet(a, b []string) bool { return slices.Equal(sorted(a), sorted(b)) }

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
