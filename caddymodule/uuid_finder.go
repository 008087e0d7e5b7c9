package caddymodule

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/dtablecluster/dtable-router/internal/bucket"
)

// Default places where a request carries its base UUID.
var (
	DefaultUUIDPathPrefixes = []string{"/dtables/", "/api/v1/dtables/", "/api/v1/internal/dtables/", "/api/v2/dtables/"}
	DefaultUUIDQueryParams  = []string{"dtable_uuid"}
)

// uuidFinder finds the base UUID of a request. Its rule: whatever a
// dtable-server (or a proxy in front of it that normalises paths) will
// understand as the request's base, the finder reports that base, or it
// reports the request as ambiguous. In detail (README, "Routing rules"):
//
//   - The path is refused if it has a dot segment ("." or "..", plain or
//     percent-encoded), an encoded slash or backslash (%2F, %5C), or a
//     backslash: normalising it would give another path than the one
//     read here.
//   - A path prefix matches segment by segment, in any case (Express, the
//     usual Node.js router, routes case-insensitively by default; routing
//     a variant the server does not serve by its UUID costs nothing),
//     after percent-decoding; the UUID is the next segment,
//     percent-decoded.
//     Empty segments (//) are skipped when matching, as a proxy that
//     merges slashes would; one before or in the UUID makes the request
//     ambiguous, one after it is harmless.
//   - Every value of every UUID query parameter (names are case-sensitive,
//     as the servers' query parsers; a percent-encoded name and the
//     bracket form name[...] count) must be a valid UUID of one base, and
//     of the path's base if the path names one.
//
// A request that names no base in any of these forms is not for a base
// (found false, no error).
type uuidFinder struct {
	pathPrefixes []pathPrefix
	queryParams  []string
}

// pathPrefix is one place in the path where the UUID is.
type pathPrefix struct {
	name string   // as configured, ending in "/": "/api/v1/dtables/"
	segs []string // its segments: "api", "v1", "dtables"
}

// newUUIDFinder returns a finder for the given path prefixes (each
// starting with "/"; a missing final "/" is added) and query parameters.
func newUUIDFinder(prefixes, params []string) uuidFinder {
	f := uuidFinder{queryParams: params}
	for _, p := range prefixes {
		if !strings.HasSuffix(p, "/") {
			p += "/"
		}
		pp := pathPrefix{name: p}
		for s := range strings.SplitSeq(p, "/") {
			if s != "" {
				pp.segs = append(pp.segs, s)
			}
		}
		f.pathPrefixes = append(f.pathPrefixes, pp)
	}
	return f
}

// checkPathPrefix says what is wrong with a configured UUID path prefix:
// it must start with "/" and have no empty or dot segments.
func checkPathPrefix(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%q must start with /", p)
	}
	for i, s := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		if i > 0 && (s == "" || s == "." || s == "..") || strings.ContainsAny(s, "%\\?#") {
			return fmt.Errorf("%q: want segments of a plain path, without //, . or .., %%, \\, ? or #", p)
		}
	}
	return nil
}

// checkQueryParam says what is wrong with a configured UUID query
// parameter name.
func checkQueryParam(q string) error {
	if q == "" || strings.ContainsAny(q, "&=[]%+#; ") {
		return fmt.Errorf("%q is not a query parameter name", q)
	}
	return nil
}

// prefixNames lists the path prefixes, for messages.
func (f *uuidFinder) prefixNames() []string {
	names := make([]string, len(f.pathPrefixes))
	for i, p := range f.pathPrefixes {
		names[i] = p.name
	}
	return names
}

// find returns the request's bucket; found is false when the request names
// no base at all (e.g. /ping/). A UUID that is present but empty,
// malformed or ambiguous is a *uuidError saying where and what is wrong.
// It does not allocate unless it fails or the query is percent-encoded.
func (f *uuidFinder) find(r *http.Request) (b bucket.Bucket, found bool, err *uuidError) {
	path := r.URL.Path
	if err := checkPath(path, r.URL.RawPath); err != nil {
		return 0, false, err
	}
	var pathUUID string
	var pathAt *pathPrefix
	for i := range f.pathPrefixes {
		p := &f.pathPrefixes[i]
		seg, matched, empty := p.match(path)
		if !matched {
			continue
		}
		if empty {
			return 0, false, &uuidError{where: "path", problem: "empty segment (//) before the base UUID after " + p.name +
				": a server or proxy that merges slashes would see another path"}
		}
		if seg == "" {
			return 0, false, &uuidError{where: "path after " + p.name}
		}
		var uerr error
		if b, uerr = bucket.FromUUID(seg); uerr != nil {
			return 0, false, &uuidError{where: "path after " + p.name, invalid: uerr.(*bucket.UUIDError)}
		}
		pathUUID, pathAt, found = seg, p, true
		break
	}
	qb, qfound, err := f.findQuery(r.URL.RawQuery, pathUUID, pathAt)
	if err != nil {
		return 0, false, err
	}
	if found {
		return b, true, nil
	}
	return qb, qfound, nil
}

// checkPath refuses a path that a server or a proxy normalising it would
// read as another path: dot segments (in the decoded path, so %2e counts),
// encoded slashes and backslashes (in the raw path), and backslashes.
func checkPath(path, rawPath string) *uuidError {
	if rawPath != "" {
		for i := 0; i+2 < len(rawPath); i++ {
			if rawPath[i] != '%' {
				continue
			}
			if e := rawPath[i : i+3]; strings.EqualFold(e, "%2f") || strings.EqualFold(e, "%5c") {
				return &uuidError{where: "path", problem: "encoded slash " + e + ": a server or proxy that decodes it would see another path"}
			}
		}
	}
	for rest := path; strings.IndexByte(rest, '.') >= 0; {
		seg, next, more := strings.Cut(rest, "/")
		if seg == "." || seg == ".." {
			return &uuidError{where: "path", problem: fmt.Sprintf("dot segment %q (plain or %%2e-encoded): "+
				"a server or proxy that normalises the path would see another path", seg)}
		}
		if !more {
			break
		}
		rest = next
	}
	if strings.IndexByte(path, '\\') >= 0 {
		return &uuidError{where: "path", problem: "backslash: a server that takes it for a slash would see another path"}
	}
	return nil
}

// match reports whether path begins with the prefix's segments (in any
// ASCII case, skipping empty segments) followed by a slash. If so, seg is
// the next non-empty segment ("" if there is none) and empty says whether
// an empty segment was skipped before it.
func (p *pathPrefix) match(path string) (seg string, matched, empty bool) {
	if rest, ok := strings.CutPrefix(path, p.name); ok {
		// The common case: the prefix as configured, then the UUID.
		if seg, _, _ = strings.Cut(rest, "/"); seg != "" {
			return seg, true, false
		}
	}
	if path == "" || path[0] != '/' {
		return "", false, false
	}
	rest, more := path[1:], true
	for _, want := range p.segs {
		var s string
		for {
			if !more {
				return "", false, false
			}
			s, rest, more = strings.Cut(rest, "/")
			if s != "" {
				break
			}
			empty = true
		}
		if !asciiEqualFold(s, want) {
			return "", false, false
		}
	}
	if !more { // "/dtables": the prefix without its slash names no base
		return "", false, false
	}
	for {
		seg, rest, more = strings.Cut(rest, "/")
		if seg != "" || !more {
			return seg, true, empty
		}
		empty = true
	}
}

// asciiEqualFold compares ASCII case-insensitively (strings.EqualFold
// would also fold non-ASCII letters such as the Kelvin sign onto "k",
// which a router's case-insensitive match does not).
func asciiEqualFold(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if lowerASCII(s[i]) != lowerASCII(t[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// findQuery reads every value of the UUID query parameters. Each must be
// a valid UUID, all of the same base, and of pathUUID's base if it is
// not "" (after the prefix pathAt).
func (f *uuidFinder) findQuery(raw, pathUUID string, pathAt *pathPrefix) (b bucket.Bucket, found bool, err *uuidError) {
	var first, firstName string
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		name, ok := f.queryParam(k)
		if !ok {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			if u, err := url.QueryUnescape(v); err == nil {
				v = u
			}
		}
		vb, verr := bucket.FromUUID(v)
		if verr != nil {
			return 0, false, &uuidError{where: "query parameter " + name, invalid: verr.(*bucket.UUIDError)}
		}
		switch {
		case pathUUID != "" && !sameUUID(pathUUID, v):
			return 0, false, &uuidError{where: "path and query", problem: fmt.Sprintf("path after %s names base %s, query parameter %s names %s",
				pathAt.name, pathUUID, name, v)}
		case first == "":
			first, firstName, b, found = v, name, vb, true
		case !sameUUID(first, v):
			names := name
			if firstName != name {
				names = firstName + " and " + name
			}
			return 0, false, &uuidError{where: "query parameter " + names,
				problem: fmt.Sprintf("two different base UUIDs (%s, %s)", first, v)}
		}
	}
	return b, found, nil
}

// queryParam reports whether the query key k is one of the UUID
// parameters: the name itself, percent-encoded or not, or its bracket
// form (name[] or name[...], which Express's query parser reads as the
// same parameter). It returns the configured name.
func (f *uuidFinder) queryParam(k string) (string, bool) {
	if strings.ContainsAny(k, "%+") {
		if u, err := url.QueryUnescape(k); err == nil {
			k = u
		}
	}
	for _, name := range f.queryParams {
		if rest, ok := strings.CutPrefix(k, name); ok && (rest == "" || rest[0] == '[') {
			return name, true
		}
	}
	return "", false
}

// sameUUID reports whether two valid UUIDs (dashed or hex, any case) are
// the same base.
func sameUUID(a, b string) bool {
	i, j := 0, 0
	for {
		for i < len(a) && a[i] == '-' {
			i++
		}
		for j < len(b) && b[j] == '-' {
			j++
		}
		if i == len(a) || j == len(b) {
			return i == len(a) && j == len(b)
		}
		if lowerASCII(a[i]) != lowerASCII(b[j]) {
			return false
		}
		i++
		j++
	}
}

// uuidError says where a request's base UUID should have been and what is
// wrong with it.
type uuidError struct {
	where   string            // "path after /dtables/", "query parameter dtable_uuid", "path"
	invalid *bucket.UUIDError // what is wrong with the UUID; nil if it is missing or ambiguous
	problem string            // what makes the request ambiguous; "" if it is not
}

func (e *uuidError) Error() string {
	switch {
	case e.problem != "":
		return e.where + ": " + e.problem
	case e.invalid == nil:
		return e.where + ": missing base UUID"
	}
	return e.where + ": " + e.invalid.Error()
}

// reason is the routing error reason of the 400 answer: ambiguous_request
// for a request that could name another base than the one read,
// missing_uuid for an empty path segment, malformed_uuid for a UUID that
// bucket.FromUUID rejects (whatever its bucket.Reason).
func (e *uuidError) reason() string {
	switch {
	case e.problem != "":
		return reasonAmbiguous
	case e.invalid == nil:
		return reasonMissingUUID
	}
	return reasonMalformedUUID
}
