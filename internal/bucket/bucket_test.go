package bucket

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestFromUUID(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Bucket
	}{
		{"dashed", "5c264e76-0e5a-448a-9f34-580b551364ca", 0x5c},
		{"dashed upper case", "5C264E76-0E5A-448A-9F34-580B551364CA", 0x5c},
		{"hex", "2d0d0c325e794437a414766ade7618a5", 0x2d},
		{"hex upper case", "FF0D0C325E794437A414766ADE7618A5", 0xff},
		{"bucket 00", "00000000-0000-0000-0000-000000000000", 0x00},
		{"mixed case", "aB000000000000000000000000000000", 0xab},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromUUID(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("FromUUID(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFromUUIDRejects(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		reason Reason
		pos    int
		msg    string
	}{
		{"empty", "", WrongLength, 0, `invalid base UUID "": length 0, want 36 (dashed) or 32 (hex)`},
		{"dashed, one short", "5c264e76-0e5a-448a-9f34-580b551364c", WrongLength, 0, "length 35"},
		{"dashed, one long", "5c264e76-0e5a-448a-9f34-580b551364cab", WrongLength, 0, "length 37"},
		{"first dash missing", "5c264e76x0e5a-448a-9f34-580b551364ca", MissingDash, 9, "expected '-' at position 9, found 'x'"},
		{"last dash missing", "5c264e76-0e5a-448a-9f34_580b551364ca", MissingDash, 24, "expected '-' at position 24"},
		{"non-hex second digit", "5g264e76-0e5a-448a-9f34-580b551364ca", NonHex, 2, "non-hex character 'g' at position 2"},
		{"non-hex last digit", "5c264e76-0e5a-448a-9f34-580b551364cz", NonHex, 36, "non-hex character 'z' at position 36"},
		{"dash at the end of hex", "2d0d0c325e794437a414766ade7618a-", NonHex, 32, "non-hex character '-' at position 32"},
		{"dash at the start of hex", "-d0d0c325e794437a414766ade7618a5", NonHex, 1, "non-hex character '-' at position 1"},
		{"very long", strings.Repeat("a", 1000), WrongLength, 0, "length 1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FromUUID(tt.in)
			var ue *UUIDError
			if !errors.As(err, &ue) {
				t.Fatalf("FromUUID(%q) error = %v; want *UUIDError", tt.in, err)
			}
			if ue.Reason != tt.reason || ue.Pos != tt.pos || ue.Length != len(tt.in) {
				t.Errorf("FromUUID(%q): reason %q at %d, length %d; want %q at %d, length %d",
					tt.in, ue.Reason, ue.Pos, ue.Length, tt.reason, tt.pos, len(tt.in))
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("FromUUID(%q) error = %q; want it to contain %q", tt.in, err, tt.msg)
			}
			if len(ue.Input) > 70 {
				t.Errorf("FromUUID error keeps %d bytes of input; want it truncated", len(ue.Input))
			}
		})
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
		t.Run(fmt.Sprintf("%q", s), func(t *testing.T) {
			if _, err := Parse(s); err == nil {
				t.Errorf("Parse(%q) accepted", s)
			}
		})
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
			if !errors.As(err, &ue) {
				t.Fatalf("FromUUID(%q) returned untyped error %v", s, err)
			}
			switch ue.Reason {
			case WrongLength, MissingDash, NonHex:
			default:
				t.Fatalf("FromUUID(%q) returned unknown reason %q", s, ue.Reason)
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
