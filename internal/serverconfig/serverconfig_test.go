package serverconfig

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestDocumentedServerConfig(t *testing.T) {
	cfg, err := Load("testdata/dtable_server_config.json")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"etcd-01.example.com:2379", "etcd-02.example.com:2379", "etcd-03.example.com:2379"}
	if !slices.Equal(cfg.EtcdHostList, want) || cfg.NodeID != "dtable-server-01" ||
		cfg.NodeURL != "https://dtable-server-01.example.com/" || cfg.LocalNodeURL != "http://172.17.30.94/" {
		t.Fatalf("parsed %+v", cfg)
	}
	if cfg.Lines["node_url"] != 5 || cfg.Lines["local_node_url"] != 6 {
		t.Errorf("lines = %v", cfg.Lines)
	}
	if e := cfg.At("node_url", "bad").Error(); e != "testdata/dtable_server_config.json:5: bad" {
		t.Errorf("At = %q", e)
	}
}

func TestDocumentedProxyConfigAndLeniency(t *testing.T) {
	t.Run("proxy node with comments and trailing commas", func(t *testing.T) {
		in := `/* proxy node */
{
  "dtable_server": {"port": 5000, "note": "// not a comment", "q": "a\"//b"},
  "cluster_config": {
    "etcd_host_list": ["etcd-01.example.com:2379",],  // trailing comma
    "etcd_host": "ignored-when-list-given:2379",
  },
}`
		cfg, err := Parse("proxy.json", []byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.EtcdHostList, []string{"etcd-01.example.com:2379"}) || cfg.NodeID != "" {
			t.Fatalf("parsed %+v", cfg)
		}
	})
	t.Run("old single-host form", func(t *testing.T) {
		old, err := Parse("old.json", []byte(`{"cluster_config": {"etcd_host": "etcd:2379"}}`))
		if err != nil || !slices.Equal(old.EtcdHostList, []string{"etcd:2379"}) {
			t.Fatalf("old single-host form: %+v %v", old, err)
		}
	})
}

func TestErrorsNameFileLineAndProblem(t *testing.T) {
	cases := []struct {
		name, in string
		want     string // part of the error
	}{
		{"empty file", "", "c.json:1:1: invalid JSON: the file ends early"},
		{"top-level object not closed", "{\n  \"cluster_config\": {\n    \"node_id\": \"a\"\n  }\n", "c.json:5:1: invalid JSON: the file ends early"},
		{"missing comma", "{\n  \"cluster_config\": {\n    \"node_id\": \"a\" \"node_url\": \"b\"\n  }\n}", "c.json:3:20: invalid JSON"},
		{"node_id a number", "{\n  \"cluster_config\": {\n    \"node_id\": 17\n  }\n}", `c.json:3:16: "node_id" must be a string, found 17`},
		{"etcd_host_list a string", "{\"cluster_config\": {\n\"etcd_host_list\": \"etcd:2379\"}}", `c.json:2:19: "etcd_host_list" must be a list of strings`},
		{"etcd_host a list", "{\"cluster_config\": {\"etcd_host\": [1]}}", `c.json:1:34: "etcd_host" must be a string`},
		{"cluster_config a number", "{\"cluster_config\": 3}", `c.json:1:20: "cluster_config" must be an object`},
		{"no cluster_config", "{\"other\": 1}", `c.json: no "cluster_config" object`},
		{"top level a list", "[1]", "c.json:1:1: the file must hold a JSON object"},
		{"data after the object", "{\"cluster_config\": {}} {}", "more data after the top-level object"},
		{"unclosed block comment", "{\n/* open\n\"cluster_config\": {}}", "c.json:2:1: comment /* is never closed"},
		{"single quotes", "{'cluster_config': {}}", "c.json:1:2: invalid JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("c.json", []byte(tc.in))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse(%q) error = %v; want *Error", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse(%q) error = %q; want it to contain %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestMissingFileIsNamed(t *testing.T) {
	if _, err := Load("testdata/missing.json"); err == nil || !strings.Contains(err.Error(), "testdata/missing.json: cannot read") {
		t.Errorf("missing file error = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"cluster_config": {"etcd_host_list": ["a:1"], "node_id": "n"}} // x`))
	f.Add([]byte("{/* */\"cluster_config\":{\"node_url\":\"http://x//y\",},}"))
	f.Add([]byte(`{"a":"\\","cluster_config":{}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		cfg, err := Parse("f.json", in)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.Msg == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if cfg == nil || cfg.Lines == nil {
			t.Fatal("nil config without error")
		}
	})
}

func FuzzStripJSONCKeepsOffsets(f *testing.F) {
	f.Add([]byte("{\"a\": 1, // c\n \"b\": [1,2,],/* x\n*/}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, _, ok := stripJSONC(in)
		if !ok {
			return
		}
		if len(out) != len(in) {
			t.Fatalf("length changed: %d -> %d", len(in), len(out))
		}
		for i := range in {
			if (in[i] == '\n') != (out[i] == '\n') {
				t.Fatalf("newline moved at %d", i)
			}
		}
	})
}
