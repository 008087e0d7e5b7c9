package schema

import (
	"strings"
	"testing"
)

func TestAssignmentEpochs(t *testing.T) {
	t.Run("round trip keeps epochs and they are not extra fields", func(t *testing.T) {
		in := `{"version":9,"buckets":{"00":"n1","0a":"n2"},"epochs":{"00":3,"0a":9},"updated_by":"m1"}`
		a, err := ParseAssignment([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if a.Epochs[0x00] != 3 || a.Epochs[0x0a] != 9 || len(a.Extra) != 1 {
			t.Fatalf("epochs %d %d, extra %v", a.Epochs[0], a.Epochs[0x0a], a.Extra)
		}
		if got := string(a.Encode()); got != in {
			t.Fatalf("Encode = %s, want %s", got, in)
		}
	})
	t.Run("no epochs field: all zero, none written", func(t *testing.T) {
		a, err := ParseAssignment([]byte(`{"version":2,"buckets":{"00":"n1"}}`))
		if err != nil || a.Epochs[0] != 0 || strings.Contains(string(a.Encode()), "epochs") {
			t.Fatalf("%+v %v %s", a, err, a.Encode())
		}
	})
	for _, tc := range []struct{ name, in, wantErr string }{
		{"not an object", `{"version":2,"buckets":{"00":"n1"},"epochs":[1]}`, `field "epochs": want an object`},
		{"not a number", `{"version":2,"buckets":{"00":"n1"},"epochs":{"00":"x"}}`, `field "epochs": want an object`},
		{"bad bucket", `{"version":2,"buckets":{"00":"n1"},"epochs":{"zz":1}}`, `field "epochs": `},
		{"zero", `{"version":2,"buckets":{"00":"n1"},"epochs":{"00":0}}`, `epoch 0: want 1 or more`},
		{"after the version", `{"version":2,"buckets":{"00":"n1"},"epochs":{"00":3}}`, `bucket 00: epoch 3: want 1 to the version (2)`},
		{"unassigned bucket", `{"version":2,"buckets":{"00":"n1"},"epochs":{"01":1}}`, `bucket 01: epoch 1 for an unassigned bucket`},
		{"listed twice", `{"version":2,"buckets":{"0a":"n1"},"epochs":{"0a":1,"0A":2}}`, `listed twice`},
	} {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			_, err := ParseAssignment([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestNextEpochs(t *testing.T) {
	prev := &Assignment{Version: 5}
	prev.Owners[0], prev.Epochs[0] = "n1", 2 // stays: keeps 2
	prev.Owners[1], prev.Epochs[1] = "n1", 4 // moves to n2: takes 6
	prev.Owners[2] = "n1"                    // no epoch recorded: takes 6
	prev.Owners[3], prev.Epochs[3] = "n2", 5 // becomes unassigned: 0
	next := &Assignment{Version: 6}
	next.Owners[0], next.Owners[1], next.Owners[2], next.Owners[4] = "n1", "n2", "n1", "n3"
	next.NextEpochs(prev)
	for b, want := range map[int]int64{0: 2, 1: 6, 2: 6, 3: 0, 4: 6, 5: 0} {
		if next.Epochs[b] != want {
			t.Errorf("bucket %02x: epoch %d, want %d", b, next.Epochs[b], want)
		}
	}
	if err := next.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Run("first assignment", func(t *testing.T) {
		first := &Assignment{Version: 1}
		first.Owners[7] = "n1"
		first.NextEpochs(nil)
		if first.Epochs[7] != 1 || first.Epochs[8] != 0 {
			t.Fatalf("epochs %d %d", first.Epochs[7], first.Epochs[8])
		}
	})
}

func TestSalvageKeepsReadableEpochs(t *testing.T) {
	a, problems := SalvageAssignment([]byte(`{"version":4,"buckets":{"00":"n1","01":"n2","02":"bad id!"},"epochs":{"00":2,"01":"x","02":3,"03":1}}`))
	if a.Epochs[0] != 2 || a.Epochs[1] != 0 || a.Epochs[2] != 0 || a.Epochs[3] != 0 || len(problems) != 1 {
		t.Fatalf("epochs %v, problems %v", a.Epochs[:4], problems)
	}
}
