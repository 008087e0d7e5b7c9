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
// no base at all (e.g. /ping/). A UUID that is present but malformed is an
// error saying what is wrong. It does not allocate unless it fails or the
// query value is percent-encoded.
func (f *uuidFinder) find(r *http.Request) (b bucket.Bucket, found bool, err error) {
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
			return 0, false, &uuidErr{where: "path after " + prefix, msg: "missing base UUID"}
		}
		b, err := bucket.FromUUID(seg)
		if err != nil {
			return 0, false, &uuidErr{where: "path after " + prefix, err: err}
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
			return 0, false, &uuidErr{where: "query parameter " + name, err: err}
		}
		return b, true, nil
	}
	return 0, false, nil
}

// uuidErr says where a bad UUID was found.
type uuidErr struct {
	where string
	msg   string
	err   error
}

func (e *uuidErr) Error() string {
	if e.err != nil {
		return e.where + ": " + e.err.Error()
	}
	return e.where + ": " + e.msg
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
