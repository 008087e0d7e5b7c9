package schema

import (
	"strings"
	"testing"
	"time"
)

func TestAssignmentHandoffFields(t *testing.T) {
	since := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	t.Run("round trip", func(t *testing.T) {
		in := `{"version":12,"buckets":{"0b":"n1","0c":"n1"},"epochs":{"0b":3,"0c":4},` +
			`"moving":{"0c":{"from":"n1","to":"n2","epoch":12,"since":"2026-11-21T10:00:00Z","reason":"rebalance"}},` +
			`"queued":{"0b":{"to":"n3","reason":"rebalance","aborted_version":11}},"updated_by":"m"}`
		a, err := ParseAssignment([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		want := MoveState{From: "n1", To: "n2", Epoch: 12, Since: since, Reason: "rebalance"}
		if a.Moving[0x0c] != want || a.Queued[0x0b] != (QueuedMove{To: "n3", Reason: "rebalance", AbortedVersion: 11}) || len(a.Extra) != 1 {
			t.Fatalf("moving %+v queued %+v extra %v", a.Moving, a.Queued, a.Extra)
		}
		if got := string(a.Encode()); got != in {
			t.Fatalf("Encode =\n%s\nwant\n%s", got, in)
		}
		if a.Effective(0x0c) != "n2" || a.Effective(0x0b) != "n3" || a.Owners[0x0c] != "n1" {
			t.Fatalf("effective owners %s %s", a.Effective(0x0c), a.Effective(0x0b))
		}
		c := a.Clone()
		delete(c.Moving, 0x0c)
		if _, ok := a.Moving[0x0c]; !ok {
			t.Fatal("Clone shares the moving map")
		}
	})
	base := `{"version":12,"buckets":{"0b":"n1","0c":"n1"},`
	for _, tc := range []struct{ name, in, wantErr string }{
		{"moving not an object", base + `"moving":[1]}`, `field "moving": want an object keyed by bucket`},
		{"moving bad bucket", base + `"moving":{"x":{}}}`, `field "moving": `},
		{"from is not the owner", base + `"moving":{"0c":{"from":"n2","to":"n3","epoch":1,"since":"2026-11-21T10:00:00Z"}}}`, `from "n2" is not its owner "n1"`},
		{"unassigned bucket", base + `"moving":{"0d":{"from":"n1","to":"n3","epoch":1,"since":"2026-11-21T10:00:00Z"}}}`, `from "n1" is not its owner ""`},
		{"to invalid", base + `"moving":{"0c":{"from":"n1","to":"","epoch":1,"since":"2026-11-21T10:00:00Z"}}}`, `to: node id is empty`},
		{"to is from", base + `"moving":{"0c":{"from":"n1","to":"n1","epoch":1,"since":"2026-11-21T10:00:00Z"}}}`, `from and to are both`},
		{"epoch after version", base + `"moving":{"0c":{"from":"n1","to":"n2","epoch":13,"since":"2026-11-21T10:00:00Z"}}}`, `epoch 13: want 1 to the version (12)`},
		{"no since", base + `"moving":{"0c":{"from":"n1","to":"n2","epoch":3}}}`, `since is missing`},
		{"queued and moving", base + `"moving":{"0c":{"from":"n1","to":"n2","epoch":3,"since":"2026-11-21T10:00:00Z"}},"queued":{"0c":{"to":"n3"}}}`, `queued bucket 0c is also moving`},
		{"queued to owner", base + `"queued":{"0c":{"to":"n1"}}}`, `already owned by "n1"`},
		{"queued to invalid", base + `"queued":{"0c":{"to":"a b"}}}`, `queued bucket 0c: to:`},
		{"queued aborted after version", base + `"queued":{"0c":{"to":"n2","aborted_version":13}}}`, `aborted_version 13: want 0 (none) to the version (12)`},
		{"queued aborted negative", base + `"queued":{"0c":{"to":"n2","aborted_version":-1}}}`, `aborted_version -1`},
	} {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			_, err := ParseAssignment([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestReleased(t *testing.T) {
	r, err := ParseReleased([]byte(`{"from":"n1","epoch":12}`))
	if err != nil || !r.Matches(MoveState{From: "n1", To: "n2", Epoch: 12}) || r.Matches(MoveState{From: "n1", Epoch: 11}) {
		t.Fatalf("%+v %v", r, err)
	}
	if string(r.Encode()) != `{"from":"n1","epoch":12}` {
		t.Fatalf("Encode = %s", r.Encode())
	}
	for _, tc := range []struct{ name, in, wantErr string }{
		{"not JSON", `x`, "not a JSON release acknowledgement"},
		{"no from", `{"epoch":1}`, "from: node id is empty"},
		{"zero epoch", `{"from":"n1"}`, "epoch 0: want 1 or more"},
	} {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			if _, err := ParseReleased([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	l, _ := NewLayout("/p")
	if k := l.ReleasedKey(0x0c); k != "/p/released/0c" {
		t.Fatalf("key %s", k)
	}
	for key, want := range map[string]bool{"/p/released/0c": true, "/p/released/0C": true, "/p/released/0cc": false, "/p/released/": false, "/p/nodes/0c": false} {
		t.Run("released key "+key, func(t *testing.T) {
			if _, ok := l.BucketFromReleasedKey(key); ok != want {
				t.Fatalf("ok = %v", ok)
			}
		})
	}
}

func TestNodeState(t *testing.T) {
	for _, tc := range []struct {
		name, state string
		ok, leaving bool
	}{{"active", "", true, false}, {"leaving", "leaving", true, true}, {"unknown", "gone", false, false}} {
		t.Run(tc.name, func(t *testing.T) {
			n := Node{NodeID: "n1", NodeURL: "http://a/", LocalNodeURL: "http://b/", State: tc.state}
			got, err := ParseNode("n1", n.Encode())
			if (err == nil) != tc.ok || got.Leaving() != tc.leaving {
				t.Fatalf("ParseNode = %+v, %v", got, err)
			}
		})
	}
}

// FuzzParseReleased: never panics; what it accepts survives a round trip.
func FuzzParseReleased(f *testing.F) {
	f.Add([]byte(`{"from":"n1","epoch":12}`))
	f.Add([]byte(`{"from":"","epoch":-1}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ParseReleased(in)
		if err != nil {
			return
		}
		if again, err := ParseReleased(r.Encode()); err != nil || again != r {
			t.Fatalf("round trip of %s: %+v %v", in, again, err)
		}
	})
}
