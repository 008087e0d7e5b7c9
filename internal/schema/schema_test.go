package schema

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

func TestNewLayout(t *testing.T) {
	cases := []struct {
		name, prefix string
		want         string // the normalized prefix; "" if the prefix is rejected
	}{
		{"empty means the default", "", DefaultPrefix},
		{"trailing slash dropped", "/a/b/", "/a/b"},
		{"no leading slash", "x", ""},
		{"only a slash", "/", ""},
		{"only slashes", "//", ""},
		{"empty path segment", "/a//b", ""},
		{"whitespace", "/a b", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewLayout(tc.prefix)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("NewLayout(%q) accepted: %+v", tc.prefix, l)
				}
				return
			}
			if err != nil || l.Prefix != tc.want {
				t.Fatalf("NewLayout(%q) = %+v, %v; want prefix %q", tc.prefix, l, err, tc.want)
			}
		})
	}
}

func TestLayoutKeys(t *testing.T) {
	l, err := NewLayout("")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.NodeKey("dtable-server-01"); got != "/dtable-cluster/nodes/dtable-server-01" {
		t.Errorf("NodeKey = %q", got)
	}
	if got := l.AssignmentKey(); got != "/dtable-cluster/assignment" {
		t.Errorf("AssignmentKey = %q", got)
	}
}

func TestNodeIDFromKey(t *testing.T) {
	l, err := NewLayout("")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, key string
		wantID    string
		wantOK    bool
	}{
		{"node key", "/dtable-cluster/nodes/n1", "n1", true},
		{"empty node id", "/dtable-cluster/nodes/", "", false},
		{"nested below a node", "/dtable-cluster/nodes/a/b", "", false},
		{"not under nodes", "/dtable-cluster/assignment", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if id, ok := l.NodeIDFromKey(tc.key); id != tc.wantID || ok != tc.wantOK {
				t.Errorf("NodeIDFromKey(%q) = %q, %v; want %q, %v", tc.key, id, ok, tc.wantID, tc.wantOK)
			}
		})
	}
}

func TestParseNode(t *testing.T) {
	good := `{"node_id":"dtable-server-01","node_url":"https://dtable-server-01.example.com/","local_node_url":"http://172.17.30.94/","extra":1}`
	n, err := ParseNode("dtable-server-01", []byte(good))
	if err != nil || n.LocalNodeURL != "http://172.17.30.94/" {
		t.Fatalf("ParseNode = %+v, %v", n, err)
	}
}

func TestParseNodeRejects(t *testing.T) {
	cases := []struct {
		name string
		id   string // the node id from the key
		in   string
		want string // part of the error
	}{
		{"not JSON", "n1", `nope`, "not a JSON node registration"},
		{"empty node id", "n1", `{"node_id":"","node_url":"http://a/","local_node_url":"http://b/"}`, "node id is empty"},
		{"node id with a space", "n 1", `{"node_id":"n 1","node_url":"http://a/","local_node_url":"http://b/"}`, "node id"},
		{"node_url not http", "n1", `{"node_id":"n1","node_url":"ftp://a/","local_node_url":"http://b/"}`, "node_url"},
		{"local_node_url without host", "n1", `{"node_id":"n1","node_url":"http://a/","local_node_url":"http:///x"}`, "local_node_url \"http:///x\" has no host"},
		{"local_node_url with a query", "n1", `{"node_id":"n1","node_url":"http://a/","local_node_url":"http://b/?q=1"}`, "query"},
		{"node id differs from the key", "n1", `{"node_id":"other","node_url":"http://a/","local_node_url":"http://b/"}`, "does not match"},
		{"local_node_url not absolute", "n1", `{"node_id":"n1","node_url":"http://a/","local_node_url":"172.17.30.94"}`, "local_node_url"},
		{"local_node_url unparsable", "n1", `{"node_id":"n1","node_url":"http://a/","local_node_url":"http://[::1/"}`, "not a URL"},
		{"node id not a string", "n1", `{"node_id":["n1"],"node_url":"http://a/","local_node_url":"http://b/"}`, "not a JSON"},
		{"invalid escape in an unknown field", "n1", `{"node_id":"n1","node_url":"http://a/","local_node_url":"http://b/","x":"\x01"}`, "not a JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseNode(tc.id, []byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseNode(%q, %s) error = %v; want it to contain %q", tc.id, tc.in, err, tc.want)
			}
		})
	}
}

func fullAssignment(version int64, nodes ...string) *Assignment {
	a := &Assignment{Version: version}
	for b := range a.Owners {
		a.Owners[b] = nodes[b%len(nodes)]
	}
	return a
}

func TestAssignmentRoundTrip(t *testing.T) {
	a := fullAssignment(3, "n1", "n2", "n3")
	a.Owners[0x7f] = "" // unassigned
	a.Extra = map[string]json.RawMessage{"states": json.RawMessage(`{"01":{"state":"moving"}}`)}
	enc := a.Encode()
	if !strings.HasPrefix(string(enc), `{"version":3,"buckets":{"00":"n1","01":"n2"`) {
		t.Fatalf("encoding starts %q", enc[:60])
	}
	b, err := ParseAssignment(enc)
	if err != nil {
		t.Fatal(err)
	}
	if b.Owners != a.Owners || b.Version != 3 || string(b.Extra["states"]) != `{"01":{"state":"moving"}}` {
		t.Fatalf("round trip lost data: %+v", b)
	}
	// Also decodable by a plain JSON reader (other services read it).
	var plain struct {
		Version int64             `json:"version"`
		Buckets map[string]string `json:"buckets"`
	}
	if err := json.Unmarshal(enc, &plain); err != nil || len(plain.Buckets) != 255 || plain.Buckets["ff"] != a.Owners[0xff] {
		t.Fatalf("plain decode = %v, %d buckets", err, len(plain.Buckets))
	}
	if got := len(b.Owned("n2")); got != 84 { // 85 minus the unassigned 0x7f (127 % 3 == 1)
		t.Errorf("Owned(n2) = %d buckets", got)
	}
	if c := b.Counts(); c["n1"]+c["n2"]+c["n3"] != 255 {
		t.Errorf("Counts = %v", c)
	}
	c := b.Clone()
	c.Owners[0] = "zz"
	c.Extra["states"][0] = 'X'
	if b.Owners[0] == "zz" || b.Extra["states"][0] == 'X' {
		t.Error("Clone shares memory with the original")
	}
}

func TestParseAssignmentRejects(t *testing.T) {
	cases := []struct {
		name, in string
		want     string // part of the error
	}{
		{"a JSON list", `[]`, "not a JSON object"},
		{"JSON null", `null`, "not a JSON object"},
		{"version missing", `{"buckets":{}}`, `"version" is missing`},
		{"version a string", `{"version":"1","buckets":{}}`, `"version"`},
		{"version zero", `{"version":0,"buckets":{}}`, "version 0"},
		{"version not an integer", `{"version":1.5,"buckets":{}}`, `"version"`},
		{"buckets missing", `{"version":1}`, `"buckets" is missing`},
		{"buckets a list", `{"version":1,"buckets":[]}`, `"buckets"`},
		{"bucket out of range", `{"version":1,"buckets":{"100":"n1"}}`, `invalid bucket "100"`},
		{"bucket not hex", `{"version":1,"buckets":{"zz":"n1"}}`, `invalid bucket "zz"`},
		{"empty node id", `{"version":1,"buckets":{"0a":""}}`, "bucket 0a has an empty node id"},
		{"invalid node id", `{"version":1,"buckets":{"0a":"a/b"}}`, "bucket 0a: node id"},
		{"bucket twice in two cases", `{"version":1,"buckets":{"0a":"n","0A":"m"}}`, "listed twice"},
		{"node id a number", `{"version":1,"buckets":{"0a":5}}`, `"buckets"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseAssignment([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseAssignment(%s) error = %v; want it to contain %q", tc.in, err, tc.want)
			}
		})
	}
}

// FuzzParseAssignment: the parser never panics, and whatever it accepts
// survives an encode/parse round trip unchanged.
func FuzzParseAssignment(f *testing.F) {
	f.Add([]byte(`{"version":1,"buckets":{"00":"n1","ff":"n2"},"x":[1,2]}`))
	f.Add([]byte(`{"version":1,"buckets":{"0A":"n1"}}`))
	f.Add([]byte(`{"version":-1,"buckets":null}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":12,"buckets":{"0b":"n1","0c":"n1"},"epochs":{"0b":3,"0c":4},"moving":{"0c":{"from":"n1","to":"n2","epoch":12,"since":"2026-11-21T10:00:00Z"}},"queued":{"0b":{"to":"n3"}}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := ParseAssignment(in)
		if err != nil {
			return
		}
		b, err := ParseAssignment(a.Encode())
		if err != nil {
			t.Fatalf("re-parse of %s failed: %v", a.Encode(), err)
		}
		if b.Version != a.Version || b.Owners != a.Owners || b.Epochs != a.Epochs || len(b.Moving) != len(a.Moving) || len(b.Queued) != len(a.Queued) || len(b.Extra) != len(a.Extra) {
			t.Fatalf("round trip changed %s", in)
		}
	})
}

func FuzzParseNode(f *testing.F) {
	f.Add("n1", []byte(`{"node_id":"n1","node_url":"http://a/","local_node_url":"http://b:5000/x/"}`))
	f.Fuzz(func(t *testing.T, id string, in []byte) {
		n, err := ParseNode(id, in)
		if err != nil {
			return
		}
		if n.Validate() != nil || n.NodeID != id {
			t.Fatalf("accepted invalid node %+v", n)
		}
		if m, err := ParseNode(id, n.Encode()); err != nil || !m.SameEndpoints(n) {
			t.Fatalf("round trip: %+v %v", m, err)
		}
	})
}

func TestSettingsRoundTrip(t *testing.T) {
	t.Run("drains, pins and auto-rebalance", func(t *testing.T) {
		s := Settings{Drained: []string{"n3", "n1"}, Pins: map[bucket.Bucket]string{0x0a: "n2"}, AutoRebalance: true}
		enc := s.Encode()
		if string(enc) != `{"drained":["n1","n3"],"pins":{"0a":"n2"},"auto_rebalance":true}` {
			t.Fatalf("Encode = %s", enc)
		}
		got, err := ParseSettings(enc)
		if err != nil || !got.IsDrained("n3") || got.Pins[0x0a] != "n2" || !got.AutoRebalance {
			t.Fatalf("ParseSettings = %+v, %v", got, err)
		}
	})
	t.Run("empty settings are written in full", func(t *testing.T) {
		if empty := (Settings{}).Encode(); string(empty) != `{"drained":[],"pins":{},"auto_rebalance":false}` {
			t.Errorf("empty = %s", empty)
		}
	})
}

func TestParseSettingsRejects(t *testing.T) {
	cases := []struct {
		name, in string
		want     string // part of the error
	}{
		{"a JSON list", `[]`, "not a JSON settings object"},
		{"invalid drained node id", `{"drained":["a b"]}`, `"drained"`},
		{"pin of an invalid bucket", `{"pins":{"zz":"n1"}}`, `invalid bucket "zz"`},
		{"pin to an empty node id", `{"pins":{"0a":""}}`, "bucket 0a: node id is empty"},
		{"bucket pinned twice in two cases", `{"pins":{"0a":"n1","0A":"n2"}}`, "listed twice"},
		{"auto_rebalance not a bool", `{"auto_rebalance":"yes"}`, "not a JSON settings object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseSettings([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseSettings(%s) = %v; want %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestSalvageAssignment(t *testing.T) {
	t.Run("keeps the valid buckets", func(t *testing.T) {
		a, problems := SalvageAssignment([]byte(`{"version":9,"buckets":{"00":"n1","01":"","zz":"n2","02":"n 3","03":"n2","0A":"n1","0a":"n2"}}`))
		if a.Version != 9 || a.Owners[0] != "n1" || a.Owners[3] != "n2" || a.Owners[1] != "" || a.Owners[2] != "" || a.Owners[0x0a] != "" {
			t.Fatalf("salvaged %+v", a.Owners[:11])
		}
		if len(problems) != 4 {
			t.Fatalf("problems = %q", problems)
		}
	})
	t.Run("garbage gives an empty assignment", func(t *testing.T) {
		a, problems := SalvageAssignment([]byte(`garbage`))
		if a.Version != 0 || len(a.Counts()) != 0 || len(problems) != 1 {
			t.Fatalf("garbage: %+v %q", a, problems)
		}
	})
}
