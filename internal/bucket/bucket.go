// Package bucket maps a base UUID to one of the 256 buckets of the cluster.
//
// A base's bucket is the value of the first two hex digits of its UUID, so
// "5c264e76-0e5a-448a-9f34-580b551364ca" and "5C264E760E5A448A9F34580B551364CA"
// are both in bucket 0x5c. Both the dashed 36-character form (used in URLs) and
// the 32-character hex form (used in databases) are accepted, in any case.
//
// The functions here run on the proxy's request path: they never allocate
// unless they fail.
package bucket

import "fmt"

// Count is the number of buckets in a cluster.
const Count = 256

// Bucket is one of the 256 buckets, identified by its number 0..255.
type Bucket uint8

// String returns the bucket as two lowercase hex digits, the form used in
// etcd keys, JSON and HTTP headers ("00".."ff").
func (b Bucket) String() string { return hexNames[b] }

// MarshalText writes the bucket as two hex digits, so JSON shows "0a".
func (b Bucket) MarshalText() ([]byte, error) { return []byte(hexNames[b]), nil }

// UnmarshalText reads two hex digits (see Parse).
func (b *Bucket) UnmarshalText(text []byte) error {
	v, err := Parse(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// hexNames holds "00".."ff" so that String never allocates.
var hexNames = func() (names [Count]string) {
	for i := range names {
		names[i] = fmt.Sprintf("%02x", i)
	}
	return names
}()

// UUIDError says why a string is not a base UUID.
type UUIDError struct {
	Input  string // the rejected input, truncated to 64 bytes
	Reason string // what is wrong, e.g. "length 35, want 36 (dashed) or 32 (hex)"
}

func (e *UUIDError) Error() string {
	return fmt.Sprintf("invalid base UUID %q: %s", e.Input, e.Reason)
}

// dashAt lists the positions of the dashes in the 36-character form
// (8-4-4-4-12).
var dashAt = [36]bool{8: true, 13: true, 18: true, 23: true}

// FromUUID returns the bucket of a base UUID given in the dashed 36-character
// form or the 32-character hex form, in any case. The whole UUID is checked,
// not only its first two digits, so that a mangled identifier is reported
// rather than routed.
func FromUUID(s string) (Bucket, error) {
	switch len(s) {
	case 36:
		for i := 0; i < 36; i++ {
			c := s[i]
			if dashAt[i] {
				if c != '-' {
					return 0, uuidError(s, "expected '-' at position %d, found %q", i+1, c)
				}
				continue
			}
			if unhex(c) < 0 {
				return 0, uuidError(s, "non-hex character %q at position %d", c, i+1)
			}
		}
	case 32:
		for i := 0; i < 32; i++ {
			if c := s[i]; unhex(c) < 0 {
				return 0, uuidError(s, "non-hex character %q at position %d", c, i+1)
			}
		}
	default:
		return 0, uuidError(s, "length %d, want 36 (dashed) or 32 (hex)", len(s))
	}
	return Bucket(unhex(s[0])<<4 | unhex(s[1])), nil
}

// Parse reads a bucket name of exactly two hex digits ("00".."ff", any case),
// the form used as keys of an assignment.
func Parse(s string) (Bucket, error) {
	if len(s) != 2 || unhex(s[0]) < 0 || unhex(s[1]) < 0 {
		return 0, fmt.Errorf("invalid bucket %q: want two hex digits 00..ff", s)
	}
	return Bucket(unhex(s[0])<<4 | unhex(s[1])), nil
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func uuidError(s, format string, args ...any) error {
	const max = 64
	if len(s) > max {
		s = s[:max] + "…"
	}
	return &UUIDError{Input: s, Reason: fmt.Sprintf(format, args...)}
}
