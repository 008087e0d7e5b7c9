package bucket

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestFromUUID(t *testing.T) {
	ok := []struct {
		in   string
		want Bucket
	}{
		{"5c264e76-0e5a-448a-9f34-580b551364ca", 0x5c},
		{"5C264E76-0E5A-448A-9F34-580B551364CA", 0x5c},
		{"2d0d0c325e794437a414766ade7618a5", 0x2d},
		{"FF0D0C325E794437A414766ADE7618A5", 0xff},
		{"00000000-0000-0000-0000-000000000000", 0x00},
		{"aB000000000000000000000000000000", 0xab},
	}
	for _, c := range ok {
		got, err := FromUUID(c.in)
		if err != nil || got != c.want {
			t.Errorf("FromUUID(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}

	bad := []struct{ in, reason string }{
		{"", "length 0"},
		{"5c264e76-0e5a-448a-9f34-580b551364c", "length 35"},
		{"5c264e76-0e5a-448a-9f34-580b551364cab", "length 37"},
		{"5c264e76x0e5a-448a-9f34-580b551364ca", "expected '-' at position 9"},
		{"5c264e76-0e5a-448a-9f34_580b551364ca", "expected '-' at position 24"},
		{"5g264e76-0e5a-448a-9f34-580b551364ca", "non-hex character 'g' at position 2"},
		{"5c264e76-0e5a-448a-9f34-580b551364cz", "non-hex character 'z' at position 36"},
		{"2d0d0c325e794437a414766ade7618a-", "non-hex character '-' at position 32"},
		{"-d0d0c325e794437a414766ade7618a5", "non-hex character '-' at position 1"},
		{strings.Repeat("a", 1000), "length 1000"},
	}
	for _, c := range bad {
		_, err := FromUUID(c.in)
		var ue *UUIDError
		if !errors.As(err, &ue) {
			t.Fatalf("FromUUID(%q) error = %v; want *UUIDError", c.in, err)
		}
		if !strings.Contains(ue.Reason, c.reason) {
			t.Errorf("FromUUID(%q) reason = %q; want it to contain %q", c.in, ue.Reason, c.reason)
		}
		if len(ue.Input) > 70 {
			t.Errorf("FromUUID error keeps %d bytes of input; want it truncated", len(ue.Input))
		}
	}
}

func TestEveryBucketReachable(t *testing.T) {
	for i := 0; i < Count; i++ {
		u := fmt.Sprintf("%02x264e76-0e5a-448a-9f34-580b551364ca", i)
		got, err := FromUUID(u)
		if err != nil || int(got) != i {
			t.Fatalf("FromUUID(%q) = %v, %v", u, got, err)
		}
		if got.String() != u[:2] {
			t.Fatalf("Bucket(%d).String() = %q", i, got.String())
		}
		p, err := Parse(strings.ToUpper(u[:2]))
		if err != nil || p != got {
			t.Fatalf("Parse(%q) = %v, %v", u[:2], p, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{"", "0", "000", "g0", " 0", "0x"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
}

func TestFromUUIDDoesNotAllocate(t *testing.T) {
	n := testing.AllocsPerRun(100, func() {
		_, _ = FromUUID("5c264e76-0e5a-448a-9f34-580b551364ca")
		_ = Bucket(7).String()
	})
	if n != 0 {
		t.Fatalf("FromUUID allocates %v times per call; the request path needs 0", n)
	}
}

// FuzzFromUUID checks that FromUUID never panics, that it accepts exactly
// the two UUID shapes, and that an accepted UUID's bucket is its first two
// hex digits.
func FuzzFromUUID(f *testing.F) {
	for _, s := range []string{
		"5c264e76-0e5a-448a-9f34-580b551364ca", "2d0d0c325e794437a414766ade7618a5",
		"", "zz", "5c264e76-0e5a-448a-9f34-580b551364c\xff", "5c264e76x0e5a-448a-9f34-580b551364ca",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := FromUUID(s)
		valid := isUUID(s)
		if valid != (err == nil) {
			t.Fatalf("FromUUID(%q) err = %v; reference says valid=%v", s, err, valid)
		}
		if err != nil {
			var ue *UUIDError
			if !errors.As(err, &ue) || ue.Reason == "" {
				t.Fatalf("FromUUID(%q) returned untyped error %v", s, err)
			}
			return
		}
		if b.String() != strings.ToLower(s[:2]) {
			t.Fatalf("FromUUID(%q) = %s", s, b)
		}
	})
}

// isUUID is a slow, obviously correct reference for the accepted shapes.
func isUUID(s string) bool {
	const hex = "0123456789abcdefABCDEF"
	switch len(s) {
	case 32:
		for _, r := range s {
			if !strings.ContainsRune(hex, r) {
				return false
			}
		}
		return true
	case 36:
		groups := strings.Split(s, "-")
		if len(groups) != 5 {
			return false
		}
		for i, want := range []int{8, 4, 4, 4, 12} {
			if len(groups[i]) != want || !isUUIDHex(groups[i]) {
				return false
			}
		}
		return true
	}
	return false
}

func isUUIDHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}
