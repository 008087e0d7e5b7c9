package statusview

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

func node(id string) schema.Node {
	return schema.Node{NodeID: id, NodeURL: "https://" + id + ".example.com/", LocalNodeURL: "http://127.0.0.1:9/" + id + "/"}
}

// emptySnap is a cluster with nothing in etcd.
func emptySnap() *watch.Snapshot { return watch.EmptySnapshot() }

// mixedSnap has every node state: n1 live, n2 drained, n3 owning buckets
// without a valid registration, n4 live without buckets. The assignment
// (version 7) gives bucket b to n1, n2, n3 in turn (86, 85, 85), except
// bucket 7f (n2's turn), which is unassigned.
func mixedSnap() *watch.Snapshot {
	s := watch.EmptySnapshot()
	s.Revision = 42
	s.Nodes["n1"], s.Nodes["n2"], s.Nodes["n4"] = node("n1"), node("n2"), node("n4")
	s.NodeErrors["n3"] = errors.New(`node_url "nope" is not an absolute http or https URL`)
	a := &schema.Assignment{Version: 7}
	for b := range a.Owners {
		a.Owners[b] = []string{"n1", "n2", "n3"}[b%3]
	}
	a.Owners[0x7f] = ""
	s.Assignment = a
	s.Settings = schema.Settings{Drained: []string{"n2"}, Pins: map[bucket.Bucket]string{0x0a: "n1"}, AutoRebalance: true}
	return s
}

// corruptSnap has registered nodes but no valid assignment nor settings.
func corruptSnap() *watch.Snapshot {
	s := watch.EmptySnapshot()
	s.Revision = 5
	s.Nodes["n1"] = node("n1")
	s.AssignmentError = errors.New(`invalid bucket "zz"`)
	s.SettingsError = errors.New("not a JSON settings object")
	return s
}

func TestNewStatus(t *testing.T) {
	cases := []struct {
		name string
		snap *watch.Snapshot
		want Status
	}{
		{
			name: "nothing in etcd: every bucket unassigned",
			snap: emptySnap(),
			want: Status{Prefix: "/p", Nodes: []Node{}, Unassigned: bucket.Count, Drained: []string{}, Pins: map[string]string{}, Moving: []Handoff{}},
		},
		{
			name: "live, drained and not registered nodes",
			snap: mixedSnap(),
			want: Status{
				Prefix: "/p", Revision: 42, Version: 7,
				Nodes: []Node{
					{NodeID: "n1", NodeURL: node("n1").NodeURL, LocalNodeURL: node("n1").LocalNodeURL, State: StateLive, Buckets: 86},
					{NodeID: "n2", NodeURL: node("n2").NodeURL, LocalNodeURL: node("n2").LocalNodeURL, State: StateDrained, Buckets: 84},
					{NodeID: "n3", State: StateNotRegistered, Buckets: 85, Error: `node_url "nope" is not an absolute http or https URL`},
					{NodeID: "n4", NodeURL: node("n4").NodeURL, LocalNodeURL: node("n4").LocalNodeURL, State: StateLive},
				},
				Unassigned:    1,
				Drained:       []string{"n2"},
				Pins:          map[string]string{"0a": "n1"},
				AutoRebalance: true,
				Moving:        []Handoff{},
			},
		},
		{
			name: "corrupt assignment and settings with no good value",
			snap: corruptSnap(),
			want: Status{
				Prefix: "/p", Revision: 5,
				AssignmentError: `invalid bucket "zz"`,
				Nodes:           []Node{{NodeID: "n1", NodeURL: node("n1").NodeURL, LocalNodeURL: node("n1").LocalNodeURL, State: StateLive}},
				Unassigned:      bucket.Count,
				Drained:         []string{},
				Pins:            map[string]string{},
				SettingsError:   "not a JSON settings object",
				Moving:          []Handoff{},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := NewStatus("/p", tc.snap); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("NewStatus =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestBuckets(t *testing.T) {
	cases := []struct {
		name     string
		snap     *watch.Snapshot
		routable int               // how many buckets have a registered owner
		want     map[string]Bucket // some buckets, by name
	}{
		{
			name:     "no assignment",
			snap:     corruptSnap(),
			routable: 0,
			want:     map[string]Bucket{"00": {Bucket: "00"}, "ff": {Bucket: "ff"}},
		},
		{
			name:     "live, drained, not registered and unassigned owners",
			snap:     mixedSnap(),
			routable: 86 + 84, // n1's and drained n2's; not n3's, not 7f
			want: map[string]Bucket{
				"00": {Bucket: "00", NodeID: "n1", Routable: true, LocalNodeURL: node("n1").LocalNodeURL},
				"01": {Bucket: "01", NodeID: "n2", Routable: true, LocalNodeURL: node("n2").LocalNodeURL},
				"02": {Bucket: "02", NodeID: "n3"},
				"7f": {Bucket: "7f"},
				"ff": {Bucket: "ff", NodeID: "n1", Routable: true, LocalNodeURL: node("n1").LocalNodeURL},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Buckets(tc.snap)
			if len(got) != bucket.Count {
				t.Fatalf("Buckets lists %d buckets, want %d", len(got), bucket.Count)
			}
			routable := 0
			for i, b := range got {
				if b.Bucket != bucket.Bucket(i).String() {
					t.Fatalf("entry %d is bucket %q", i, b.Bucket)
				}
				if b.Routable {
					routable++
				}
				if want, ok := tc.want[b.Bucket]; ok && b != want {
					t.Errorf("bucket %s = %+v, want %+v", b.Bucket, b, want)
				}
			}
			if routable != tc.routable {
				t.Errorf("%d routable buckets, want %d", routable, tc.routable)
			}
		})
	}
}

func TestHandoffsInTheViews(t *testing.T) {
	snap := watch.EmptySnapshot()
	leaving := node("n2")
	leaving.State = schema.NodeLeaving
	snap.Nodes["n1"], snap.Nodes["n2"] = node("n1"), leaving
	a := &schema.Assignment{Version: 9}
	for b := range a.Owners {
		a.Owners[b] = "n2"
	}
	a.NextEpochs(nil)
	since := time.Now().Add(-3 * time.Second)
	a.Moving = map[bucket.Bucket]schema.MoveState{
		0x10: {From: "n2", To: "n1", Epoch: 9, Since: since, Reason: "drained"},
		0x01: {From: "n2", To: "n1", Epoch: 8, Since: since.Add(-time.Second), Reason: "drained"},
	}
	a.Queued = map[bucket.Bucket]schema.QueuedMove{0x02: {To: "n1"}}
	snap.Assignment = a
	st := NewStatus("/p", snap)
	if len(st.Moving) != 2 || st.Moving[0].Bucket != "01" || st.Moving[1].Bucket != "10" || st.Moving[1].AgeMS < 3000 || st.Queued != 1 {
		t.Fatalf("moving %+v queued %d", st.Moving, st.Queued)
	}
	if st.Nodes[1].State != StateLeaving {
		t.Fatalf("n2 state %s", st.Nodes[1].State)
	}
	bs := Buckets(snap)
	if bs[0x10].MovingTo != "n1" || bs[0x10].MovingAgeMS < 3000 || bs[0x02].QueuedTo != "n1" || bs[0x03].MovingTo != "" || bs[0x03].Epoch != 9 {
		t.Fatalf("buckets %+v %+v %+v", bs[0x10], bs[0x02], bs[0x03])
	}
}
