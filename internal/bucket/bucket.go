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

// Reason says what is wrong with a string that is not a base UUID.
type Reason string

// The reasons FromUUID rejects a string.
const (
	WrongLength Reason = "wrong_length" // neither 36 (dashed) nor 32 (hex) characters
	MissingDash Reason = "missing_dash" // dashed form without a '-' at position 9, 14, 19 or 24
	NonHex      Reason = "non_hex"      // a character that is not a hex digit where one must be
)

// UUIDError says why a string is not a base UUID.
type UUIDError struct {
	Input  string // the rejected input, truncated to 64 bytes
	Reason Reason
	Length int  // the length of the whole input
	Pos    int  // MissingDash, NonHex: the 1-based position of the wrong character
	Char   byte // MissingDash, NonHex: the character found there
}

func (e *UUIDError) Error() string {
	var what string
	switch e.Reason {
	case WrongLength:
		what = fmt.Sprintf("length %d, want 36 (dashed) or 32 (hex)", e.Length)
	case MissingDash:
		what = fmt.Sprintf("expected '-' at position %d, found %q", e.Pos, e.Char)
	case NonHex:
		what = fmt.Sprintf("non-hex character %q at position %d", e.Char, e.Pos)
	default:
		what = string(e.Reason)
	}
	return fmt.Sprintf("invalid base UUID %q: %s", e.Input, what)
}

// dashAt lists the positions of the dashes in the 36-character form
// (8-4-4-4-12).
var dashAt = [36]bool{8: true, 13: true, 18: true, 23: true}

// FromUUID returns the bucket of a base UUID given in the dashed 36-character
// form or the 32-character hex form, in any case. The whole UUID is checked,
// not only its first two digits, so that a mangled identifier is reported
// rather than routed. The error, if any, is a *UUIDError.
func FromUUID(s string) (Bucket, error) {
	switch len(s) {
	case 36:
		for i := 0; i < 36; i++ {
			c := s[i]
			if dashAt[i] {
				if c != '-' {
					return 0, uuidError(s, MissingDash, i, c)
				}
				continue
			}
			if unhex(c) < 0 {
				return 0, uuidError(s, NonHex, i, c)
			}
		}
	case 32:
		for i := 0; i < 32; i++ {
			if c := s[i]; unhex(c) < 0 {
				return 0, uuidError(s, NonHex, i, c)
			}
		}
	default:
		return 0, uuidError(s, WrongLength, -1, 0)
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

// uuidError rejects s for reason; i is the index of the wrong character c
// (-1 if there is none).
func uuidError(s string, reason Reason, i int, c byte) error {
	const max = 64
	e := &UUIDError{Input: s, Reason: reason, Length: len(s), Pos: i + 1, Char: c}
	if len(s) > max {
		e.Input = s[:max] + "…"
	}
	return e
}
