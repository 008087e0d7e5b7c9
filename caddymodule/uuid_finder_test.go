package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

func defaultFinder() *uuidFinder {
	f := newUUIDFinder(DefaultUUIDPathPrefixes, DefaultUUIDQueryParams)
	return &f
}

// Base UUIDs of the finder tests: a and b in buckets 5c and 7d, aHex the
// same base as a in the 32-character form, upper case.
const (
	uuidA    = "5c264e76-0e5a-448a-9f34-580b551364ca"
	uuidAHex = "5C264E760E5A448A9F34580B551364CA"
	uuidB    = "7d264e76-0e5a-448a-9f34-580b551364ca"
)

func TestFindUUID(t *testing.T) {
	f := defaultFinder()
	tests := []struct {
		name   string
		target string
		found  bool
		bucket bucket.Bucket
		err    string // the error contains this
		reason string // and has this routing reason
	}{
		{"dashed in /dtables/", "/dtables/5c264e76-0e5a-448a-9f34-580b551364ca", true, 0x5c, "", ""},
		{"hex in /api/v1/dtables/", "/api/v1/dtables/5C264E760E5A448A9F34580B551364CA/rows/", true, 0x5c, "", ""},
		{"internal API", "/api/v1/internal/dtables/ab264e76-0e5a-448a-9f34-580b551364ca/view-rows/?x=1", true, 0xab, "", ""},
		{"API v2", "/api/v2/dtables/00264e76-0e5a-448a-9f34-580b551364ca/", true, 0x00, "", ""},
		{"socket.io query", "/socket.io/?EIO=4&dtable_uuid=ff264e76-0e5a-448a-9f34-580b551364ca&transport=websocket", true, 0xff, "", ""},
		{"percent-encoded query", "/socket.io/?dtable_uuid=ff264e76%2D0e5a-448a-9f34-580b551364ca", true, 0xff, "", ""},
		{"no base: /ping/", "/ping/", false, 0, "", ""},
		{"no base: admin API", "/api/v1/admin/sys-info/", false, 0, "", ""},
		{"no base: other query", "/socket.io/?other=1", false, 0, "", ""},
		{"no base: the prefix without its slash", "/dtables", false, 0, "", ""},
		{"no base: empty segments", "//ping//", false, 0, "", ""},
		{"empty segment at the end", "/api/v1/dtables/", false, 0, "path after /api/v1/dtables/: missing base UUID", reasonMissingUUID},
		{"short UUID", "/dtables/5c264e76", false, 0, "path after /dtables/: invalid base UUID \"5c264e76\": length 8", reasonMalformedUUID},
		{"non-hex UUID", "/dtables/5g264e76-0e5a-448a-9f34-580b551364ca", false, 0, "non-hex character 'g' at position 2", reasonMalformedUUID},
		{"empty query value", "/socket.io/?dtable_uuid=", false, 0, "query parameter dtable_uuid: invalid base UUID \"\"", reasonMalformedUUID},

		// Prefixes match as the servers' routes do: in any case (Express's
		// default), after percent-decoding.
		{"prefix in upper case", "/DTABLES/" + uuidA + "/", true, 0x5c, "", ""},
		{"prefix in mixed case", "/Api/V1/DTables/" + uuidB + "/rows/", true, 0x7d, "", ""},
		{"internal prefix in upper case", "/API/V1/INTERNAL/DTABLES/" + uuidB + "/view-rows/", true, 0x7d, "", ""},
		{"percent-encoded prefix", "/%64tables/" + uuidA, true, 0x5c, "", ""},
		{"percent-encoded UUID", "/dtables/%35c264e76-0e5a-448a-9f34-580b551364ca/", true, 0x5c, "", ""},
		{"empty segment after the UUID", "/dtables/" + uuidA + "//rows/", true, 0x5c, "", ""},

		// Ambiguous paths: a server or a proxy in front of it that
		// normalises the path would act on another base than the one the
		// router reads.
		{"dot-dot segments", "/dtables/" + uuidA + "/../../dtables/" + uuidB + "/rows/", false, 0, `path: dot segment ".."`, reasonAmbiguous},
		{"encoded dot-dot segments", "/dtables/" + uuidA + "/%2e%2e/%2E%2E/dtables/" + uuidB + "/", false, 0, `dot segment ".."`, reasonAmbiguous},
		{"half-encoded dot-dot segment", "/dtables/" + uuidA + "/.%2e/x/", false, 0, `dot segment ".."`, reasonAmbiguous},
		{"dot segment", "/dtables/./" + uuidA, false, 0, `path: dot segment "."`, reasonAmbiguous},
		{"dot segment at the end", "/dtables/" + uuidA + "/.", false, 0, `dot segment "."`, reasonAmbiguous},
		{"dot segment without a base", "/ping/../dtables/" + uuidB, false, 0, `dot segment ".."`, reasonAmbiguous},
		{"encoded slashes", "/dtables/" + uuidA + "/..%2f..%2fdtables%2f" + uuidB + "/", false, 0, "path: encoded slash %2f", reasonAmbiguous},
		{"encoded slash in upper case", "/dtables%2F" + uuidB + "/", false, 0, "path: encoded slash %2F", reasonAmbiguous},
		{"encoded backslash", "/dtables/" + uuidA + "%5c..%5c" + uuidB, false, 0, "path: encoded slash %5c", reasonAmbiguous},
		{"empty segment before the prefix", "//dtables/" + uuidB + "/", false, 0, "path: empty segment (//) before the base UUID after /dtables/", reasonAmbiguous},
		{"empty segment in the prefix", "/api//v1/dtables/" + uuidB + "/", false, 0, "empty segment (//) before the base UUID after /api/v1/dtables/", reasonAmbiguous},
		{"empty segment before the UUID", "/api/v1/dtables//" + uuidB + "/rows/", false, 0, "empty segment (//) before the base UUID", reasonAmbiguous},
		{"empty segment, no UUID", "/api/v1/dtables//rows/", false, 0, "empty segment (//) before the base UUID", reasonAmbiguous},

		// The query: every value of every UUID parameter must be a valid
		// UUID, of one base, and the path's if the path names one.
		{"the same UUID twice", "/socket.io/?dtable_uuid=" + uuidA + "&dtable_uuid=" + uuidA, true, 0x5c, "", ""},
		{"the same UUID in both forms", "/socket.io/?dtable_uuid=" + uuidA + "&dtable_uuid=" + uuidAHex, true, 0x5c, "", ""},
		{"two UUIDs in the query", "/socket.io/?dtable_uuid=" + uuidA + "&dtable_uuid=" + uuidB, false, 0,
			"query parameter dtable_uuid: two different base UUIDs (" + uuidA + ", " + uuidB + ")", reasonAmbiguous},
		{"a valid and a malformed value", "/socket.io/?dtable_uuid=" + uuidA + "&dtable_uuid=xyz", false, 0, "query parameter dtable_uuid: invalid base UUID \"xyz\"", reasonMalformedUUID},
		{"path and query agree", "/dtables/" + uuidA + "?dtable_uuid=" + uuidAHex, true, 0x5c, "", ""},
		{"path and query disagree", "/dtables/" + uuidA + "?dtable_uuid=" + uuidB, false, 0,
			"path after /dtables/ names base " + uuidA + ", query parameter dtable_uuid names " + uuidB, reasonAmbiguous},
		{"path and query disagree, same bucket", "/dtables/" + uuidA + "?dtable_uuid=5c000000-0000-0000-0000-000000000000", false, 0, "query parameter dtable_uuid names", reasonAmbiguous},
		{"malformed query beside a path UUID", "/dtables/" + uuidA + "?dtable_uuid=nope", false, 0, "query parameter dtable_uuid: invalid base UUID \"nope\"", reasonMalformedUUID},
		{"percent-encoded parameter name", "/socket.io/?dtable%5Fuuid=" + uuidB, true, 0x7d, "", ""},
		{"percent-encoded parameter name, conflicting", "/socket.io/?dtable_uuid=" + uuidA + "&dtable%5fuuid=" + uuidB, false, 0, "two different base UUIDs", reasonAmbiguous},
		{"bracket form", "/socket.io/?dtable_uuid[]=" + uuidB, true, 0x7d, "", ""},
		{"bracket form, conflicting", "/socket.io/?dtable_uuid=" + uuidA + "&dtable_uuid%5B0%5D=" + uuidB, false, 0, "two different base UUIDs", reasonAmbiguous},
		{"parameter names are case-sensitive", "/socket.io/?DTABLE_UUID=" + uuidB, false, 0, "", ""},
		{"a parameter with a longer name", "/socket.io/?dtable_uuids=" + uuidB, false, 0, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, found, err := f.find(httptest.NewRequest("GET", tt.target, nil))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || err.reason() != tt.reason || found {
					t.Errorf("%s: err %v (reason %v), found %v; want %q (reason %s)", tt.target, err, reasonOf(err), found, tt.err, tt.reason)
				}
				return
			}
			if err != nil || found != tt.found || b != tt.bucket {
				t.Errorf("%s: %v %v %v; want %v %v", tt.target, b, found, err, tt.bucket, tt.found)
			}
		})
	}
}

// A configured prefix matches as the default ones do.
func TestFindUUIDConfiguredPrefix(t *testing.T) {
	f := newUUIDFinder([]string{"/dtable-server/api/v1/dtables"}, []string{"base", "dtable_uuid"})
	for target, want := range map[string]bucket.Bucket{
		"/dtable-server/api/v1/dtables/" + uuidB + "/rows/":         0x7d,
		"/DTABLE-SERVER/API/V1/DTABLES/" + uuidB:                    0x7d,
		"/x/?base=" + uuidA:                                         0x5c,
		"/x/?base=" + uuidA + "&dtable_uuid=" + uuidAHex:            0x5c,
		"/dtable-server/api/v1/dtables/" + uuidA + "?base=" + uuidA: 0x5c,
	} {
		if b, found, err := f.find(httptest.NewRequest("GET", target, nil)); err != nil || !found || b != want {
			t.Errorf("%s: %v %v %v; want %v", target, b, found, err, want)
		}
	}
	if _, _, err := f.find(httptest.NewRequest("GET", "/x/?base="+uuidA+"&dtable_uuid="+uuidB, nil)); err == nil || err.reason() != reasonAmbiguous {
		t.Errorf("two parameters naming two bases: %v; want %s", err, reasonAmbiguous)
	}
}

func reasonOf(err *uuidError) string {
	if err == nil {
		return ""
	}
	return err.reason()
}

// testFollower is a shared follower with a table but no etcd, for unit
// tests: every bucket on n1, after change (if any) edits the snapshot.
func testFollower(change ...func(*watch.Snapshot)) *follower {
	fw := &follower{}
	snap := watch.EmptySnapshot()
	snap.Nodes["n1"] = schema.Node{NodeID: "n1", NodeURL: "https://n1/", LocalNodeURL: "http://127.0.0.1:5000/"}
	snap.Assignment = &schema.Assignment{Version: 3}
	for b := range snap.Assignment.Owners {
		snap.Assignment.Owners[b] = "n1"
	}
	for _, c := range change {
		c(snap)
	}
	fw.table.Store(buildTable(fw, snap, nil))
	return fw
}

func TestRequestPathLookupAllocatesNothing(t *testing.T) {
	f, fw := defaultFinder(), testFollower()
	r := httptest.NewRequest("GET", "/api/v1/dtables/5c264e76-0e5a-448a-9f34-580b551364ca/rows/", nil)
	q := httptest.NewRequest("GET", "/socket.io/?EIO=4&dtable_uuid=5c264e76-0e5a-448a-9f34-580b551364ca&transport=websocket", nil)
	u := httptest.NewRequest("GET", "/API/V1/DTABLES/5C264E760E5A448A9F34580B551364CA/rows/?dtable_uuid=5c264e76-0e5a-448a-9f34-580b551364ca", nil)
	allocs := testing.AllocsPerRun(1000, func() {
		for _, req := range []*http.Request{r, q, u} {
			b, found, err := f.find(req)
			_, rt := fw.lookup(b)
			if !found || err != nil || !rt.ok || rt.dial != "127.0.0.1:5000" {
				t.Fatal("not routed")
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("finding the UUID and looking up the owner allocates %v times per request; want 0", allocs)
	}
}

func BenchmarkFindAndLookup(b *testing.B) {
	f, fw := defaultFinder(), testFollower()
	r := httptest.NewRequest("GET", "/api/v1/dtables/5c264e76-0e5a-448a-9f34-580b551364ca/rows/", nil)
	b.ReportAllocs()
	for b.Loop() {
		bk, _, _ := f.find(r)
		fw.lookup(bk)
	}
}

// FuzzFind: the request UUID finder never panics, and whatever it accepts
// is a valid UUID of the bucket it reports.
func FuzzFind(f *testing.F) {
	f.Add("/api/v1/dtables/5c264e76-0e5a-448a-9f34-580b551364ca/rows/", "")
	f.Add("/socket.io/", "EIO=4&dtable_uuid=ff264e76-0e5a-448a-9f34-580b551364ca")
	f.Add("/dtables/", "dtable_uuid=%zz")
	f.Add("/dtables/"+uuidA+"/../../dtables/"+uuidB+"/", "")
	f.Add("/dtables/"+uuidA+"/%2e%2e/%2e%2e/dtables/"+uuidB+"/", "")
	f.Add("/dtables/"+uuidA+"/..%2f..%2fdtables%2f"+uuidB+"/", "")
	f.Add("/DTABLES/"+uuidA+"/", "")
	f.Add("//api//v1/dtables//"+uuidA, "")
	f.Add("/socket.io/", "dtable_uuid="+uuidA+"&dtable_uuid="+uuidB)
	f.Add("/dtables/"+uuidA, "dtable_uuid="+uuidB)
	f.Add("/socket.io/", "dtable%5Fuuid[]="+uuidAHex)
	finder := defaultFinder()
	f.Fuzz(func(t *testing.T, target, query string) {
		// The target as a client sends it, parsed as the server does.
		u, perr := url.ParseRequestURI("/" + strings.TrimLeft(target, "/"))
		if perr != nil {
			return
		}
		u.RawQuery = query
		r := httptest.NewRequest("GET", "/", nil)
		r.URL = u
		b, found, err := finder.find(r)
		if err != nil && found {
			t.Fatal("found and error at once")
		}
		if found && b.String() == "" {
			t.Fatal("found an impossible bucket")
		}
		if !found {
			return
		}
		// Whatever is routed has no dot segment and no encoded slash, and
		// its path, normalised as a server in front could, names no
		// other bucket.
		if strings.Contains("/"+u.Path+"/", "/./") || strings.Contains("/"+u.Path+"/", "/../") {
			t.Fatalf("%q routed with a dot segment", u.EscapedPath())
		}
		lower := strings.ToLower(u.EscapedPath())
		if strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
			t.Fatalf("%q routed with an encoded slash", u.EscapedPath())
		}
		norm := httptest.NewRequest("GET", "/", nil)
		norm.URL = &url.URL{Path: collapseSlashes(u.Path), RawQuery: query}
		if b2, found2, err2 := finder.find(norm); err2 == nil && found2 && b2 != b {
			t.Fatalf("%q routed to bucket %s; collapsed it names %s", u.EscapedPath(), b, b2)
		}
	})
}

// collapseSlashes merges runs of slashes, as nginx's merge_slashes does.
func collapseSlashes(p string) string {
	for strings.Contains(p, "//") {
		p = strings.ReplaceAll(p, "//", "/")
	}
	return p
}

// Segments that only look like dot segments to a server that decodes
// twice or reads path parameters. SeaTable's servers (Node.js routes and
// nginx in front of Django) percent-decode once and take ";" as an
// ordinary character, so for them these are ordinary segments and the base
// is the one the finder reads: the finder routes by it rather than refuse
// requests that no such server would misread. (A Java servlet container,
// which reads "..;" as "..", is not among the backends.) Recorded here so
// a change of that decision is a visible one.
func TestFindUUIDLookalikeDotSegments(t *testing.T) {
	f := defaultFinder()
	for _, tt := range []struct {
		name, target string
		found        bool
		bucket       bucket.Bucket
		err          string
	}{
		{"double-encoded dot-dot: a literal %2e%2e segment", "/dtables/" + uuidA + "/%252e%252e/%252E%252E/dtables/" + uuidB + "/", true, 0x5c, ""},
		{"double-encoded slash", "/dtables/" + uuidA + "/..%252f..%252fdtables%252f" + uuidB + "/", true, 0x5c, ""},
		{"dot-dot with a path parameter", "/dtables/" + uuidA + "/..;/..;/dtables/" + uuidB + "/", true, 0x5c, ""},
		{"dot with a path parameter", "/dtables/.;/" + uuidA + "/", false, 0, `path after /dtables/: invalid base UUID ".;"`},
		{"path parameter on the UUID", "/dtables/" + uuidA + ";jsessionid=1/rows/", false, 0, "path after /dtables/: invalid base UUID"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, found, err := f.find(httptest.NewRequest("GET", tt.target, nil))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || found {
					t.Fatalf("%s: err %v, found %v; want an error containing %q", tt.target, err, found, tt.err)
				}
				return
			}
			if err != nil || found != tt.found || b != tt.bucket {
				t.Fatalf("%s: bucket %v, found %v, err %v; want %v %v", tt.target, b, found, err, tt.bucket, tt.found)
			}
		})
	}
}
