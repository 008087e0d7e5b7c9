package caddymodule

import (
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

// uuidFinder finds the base UUID of a request.
type uuidFinder struct {
	pathPrefixes []string // each ends with "/"; the UUID is the next path segment
	queryParams  []string
}

// find returns the request's bucket; found is false when the request names
// no base at all (e.g. /ping/). A UUID that is present but empty or
// malformed is a *uuidError saying where and what is wrong. It does not
// allocate unless it fails or the query value is percent-encoded.
func (f *uuidFinder) find(r *http.Request) (b bucket.Bucket, found bool, err *uuidError) {
	path := r.URL.Path
	for _, prefix := range f.pathPrefixes {
		rest, ok := strings.CutPrefix(path, prefix)
		if !ok {
			continue
		}
		seg := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seg = rest[:i]
		}
		if seg == "" {
			return 0, false, &uuidError{where: "path after " + prefix}
		}
		b, err := bucket.FromUUID(seg)
		if err != nil {
			return 0, false, &uuidError{where: "path after " + prefix, invalid: err.(*bucket.UUIDError)}
		}
		return b, true, nil
	}
	for _, name := range f.queryParams {
		v, ok := queryValue(r.URL.RawQuery, name)
		if !ok {
			continue
		}
		b, err := bucket.FromUUID(v)
		if err != nil {
			return 0, false, &uuidError{where: "query parameter " + name, invalid: err.(*bucket.UUIDError)}
		}
		return b, true, nil
	}
	return 0, false, nil
}

// uuidError says where a request's base UUID should have been and what is
// wrong with it.
type uuidError struct {
	where   string            // "path after /dtables/" or "query parameter dtable_uuid"
	invalid *bucket.UUIDError // what is wrong with the UUID; nil if it is missing
}

func (e *uuidError) Error() string {
	if e.invalid == nil {
		return e.where + ": missing base UUID"
	}
	return e.where + ": " + e.invalid.Error()
}

// reason is the routing error reason of the 400 answer: missing_uuid for an
// empty path segment, malformed_uuid for a UUID that bucket.FromUUID
// rejects (whatever its bucket.Reason).
func (e *uuidError) reason() string {
	if e.invalid == nil {
		return reasonMissingUUID
	}
	return reasonMalformedUUID
}

// queryValue returns the first value of name in a raw query without
// parsing the whole query into a map.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k != name {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			if u, err := url.QueryUnescape(v); err == nil {
				v = u
			}
		}
		return v, true
	}
	return "", false
}
