package schema

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

func TestNewLayout(t *testing.T) {
	l, err := NewLayout("")
	if err != nil || l.Prefix != DefaultPrefix {
		t.Fatalf("default layout = %+v, %v", l, err)
	}
	if got := l.NodeKey("dtable-server-01"); got != "/dtable-cluster/nodes/dtable-server-01" {
		t.Errorf("NodeKey = %q", got)
	}
	if got := l.AssignmentKey(); got != "/dtable-cluster/assignment" {
		t.Errorf("AssignmentKey = %q", got)
	}
	if l2, _ := NewLayout("/a/b/"); l2.Prefix != "/a/b" {
		t.Errorf("trailing slash kept: %q", l2.Prefix)
	}
	for _, bad := range []string{"x", "/", "//", "/a//b", "/a b"} {
		if _, err := NewLayout(bad); err == nil {
			t.Errorf("NewLayout(%q) accepted", bad)
		}
	}
	if id, ok := l.NodeIDFromKey("/dtable-cluster/nodes/n1"); !ok || id != "n1" {
		t.Errorf("NodeIDFromKey = %q, %v", id, ok)
	}
	for _, k := range []string{"/dtable-cluster/nodes/", "/dtable-cluster/nodes/a/b", "/dtable-cluster/assignment"} {
		if _, ok := l.NodeIDFromKey(k); ok {
			t.Errorf("NodeIDFromKey(%q) accepted", k)
		}
	}
}

func TestParseNode(t *testing.T) {
	good := `{"node_id":"dtable-server-01","node_url":"https://dtable-server-01.example.com/","local_node_url":"http://172.17.30.94/","extra":1}`
	n, err := ParseNode("dtable-server-01", []byte(good))
	if err != nil || n.LocalNodeURL != "http://172.17.30.94/" {
		t.Fatalf("ParseNode = %+v, %v", n, err)
	}
	bad := map[string]string{
		`nope`: "not a JSON node registration",
		`{"node_id":"","node_url":"http://a/","local_node_url":"http://b/"}`:              "node id is empty",
		`{"node_id":"n 1","node_url":"http://a/","local_node_url":"http://b/"}`:           "node id",
		`{"node_id":"n1","node_url":"ftp://a/","local_node_url":"http://b/"}`:             "node_url",
		`{"node_id":"n1","node_url":"http://a/","local_node_url":"http:///x"}`:            "local_node_url \"http:///x\" has no host",
		`{"node_id":"n1","node_url":"http://a/","local_node_url":"http://b/?q=1"}`:        "query",
		`{"node_id":"other","node_url":"http://a/","local_node_url":"http://b/"}`:         "does not match",
		`{"node_id":"n1","node_url":"http://a/","local_node_url":"172.17.30.94"}`:         "local_node_url",
		`{"node_id":"n1","node_url":"http://a/","local_node_url":"http://[::1/"}`:         "not a URL",
		`{"node_id":["n1"],"node_url":"http://a/","local_node_url":"http://b/"}`:          "not a JSON",
		`{"node_id":"n1","node_url":"http://a/","local_node_url":"http://b/","x":"\x01"}`: "not a JSON",
	}
	for in, want := range bad {
		id := "n1"
		if strings.Contains(in, `"n 1"`) {
			id = "n 1"
		}
		if _, err := ParseNode(id, []byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseNode(%s) error = %v; want it to contain %q", in, err, want)
		}
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
	cases := map[string]string{
		`[]`:                                          "not a JSON object",
		`null`:                                        "not a JSON object",
		`{"buckets":{}}`:                              `"version" is missing`,
		`{"version":"1","buckets":{}}`:                `"version"`,
		`{"version":0,"buckets":{}}`:                  "version 0",
		`{"version":1}`:                               `"buckets" is missing`,
		`{"version":1,"buckets":[]}`:                  `"buckets"`,
		`{"version":1,"buckets":{"100":"n1"}}`:        `invalid bucket "100"`,
		`{"version":1,"buckets":{"zz":"n1"}}`:         `invalid bucket "zz"`,
		`{"version":1,"buckets":{"0a":""}}`:           "bucket 0a has an empty node id",
		`{"version":1,"buckets":{"0a":"a/b"}}`:        "bucket 0a: node id",
		`{"version":1,"buckets":{"0a":"n","0A":"m"}}`: "listed twice",
		`{"version":1,"buckets":{"0a":5}}`:            `"buckets"`,
		`{"version":1.5,"buckets":{}}`:                `"version"`,
	}
	for in, want := range cases {
		if _, err := ParseAssignment([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAssignment(%s) error = %v; want it to contain %q", in, err, want)
		}
	}
}

func TestDiff(t *testing.T) {
	a := fullAssignment(1, "n1", "n2")
	b := a.Clone()
	b.Owners[3] = "n3"
	b.Owners[200] = ""
	moves := Diff(a, b)
	if len(moves) != 2 || moves[0] != (Move{Bucket: 3, From: "n2", To: "n3"}) || moves[1] != (Move{Bucket: 200, From: "n1", To: ""}) {
		t.Fatalf("Diff = %+v", moves)
	}
	if got := len(Diff(nil, a)); got != bucket.Count {
		t.Fatalf("Diff(nil, full) = %d moves", got)
	}
}

// FuzzParseAssignment: the parser never panics, and whatever it accepts
// survives an encode/parse round trip unchanged.
func FuzzParseAssignment(f *testing.F) {
	f.Add([]byte(`{"version":1,"buckets":{"00":"n1","ff":"n2"},"x":[1,2]}`))
	f.Add([]byte(`{"version":1,"buckets":{"0A":"n1"}}`))
	f.Add([]byte(`{"version":-1,"buckets":null}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := ParseAssignment(in)
		if err != nil {
			return
		}
		b, err := ParseAssignment(a.Encode())
		if err != nil {
			t.Fatalf("re-parse of %s failed: %v", a.Encode(), err)
		}
		if b.Version != a.Version || b.Owners != a.Owners || len(b.Extra) != len(a.Extra) {
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
	s := Settings{Drained: []string{"n3", "n1"}, Pins: map[bucket.Bucket]string{0x0a: "n2"}, AutoRebalance: true}
	enc := s.Encode()
	if string(enc) != `{"drained":["n1","n3"],"pins":{"0a":"n2"},"auto_rebalance":true}` {
		t.Fatalf("Encode = %s", enc)
	}
	got, err := ParseSettings(enc)
	if err != nil || !got.IsDrained("n3") || got.Pins[0x0a] != "n2" || !got.AutoRebalance {
		t.Fatalf("ParseSettings = %+v, %v", got, err)
	}
	if empty := (Settings{}).Encode(); string(empty) != `{"drained":[],"pins":{},"auto_rebalance":false}` {
		t.Errorf("empty = %s", empty)
	}
	for in, want := range map[string]string{
		`[]`:                             "not a JSON settings object",
		`{"drained":["a b"]}`:            `"drained"`,
		`{"pins":{"zz":"n1"}}`:           `invalid bucket "zz"`,
		`{"pins":{"0a":""}}`:             "bucket 0a: node id is empty",
		`{"pins":{"0a":"n1","0A":"n2"}}`: "listed twice",
		`{"auto_rebalance":"yes"}`:       "not a JSON settings object",
	} {
		if _, err := ParseSettings([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSettings(%s) = %v; want %q", in, err, want)
		}
	}
}

func TestSalvageAssignment(t *testing.T) {
	a, problems := SalvageAssignment([]byte(`{"version":9,"buckets":{"00":"n1","01":"","zz":"n2","02":"n 3","03":"n2","0A":"n1","0a":"n2"}}`))
	if a.Version != 9 || a.Owners[0] != "n1" || a.Owners[3] != "n2" || a.Owners[1] != "" || a.Owners[2] != "" || a.Owners[0x0a] != "" {
		t.Fatalf("salvaged %+v", a.Owners[:11])
	}
	if len(problems) != 4 {
		t.Fatalf("problems = %q", problems)
	}
	a, problems = SalvageAssignment([]byte(`garbage`))
	if a.Version != 0 || len(a.Counts()) != 0 || len(problems) != 1 {
		t.Fatalf("garbage: %+v %q", a, problems)
	}
}
