package caddymodule

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

func defaultFinder() *uuidFinder {
	return &uuidFinder{pathPrefixes: DefaultUUIDPathPrefixes, queryParams: DefaultUUIDQueryParams}
}

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
		{"empty segment at the end", "/api/v1/dtables/", false, 0, "path after /api/v1/dtables/: missing base UUID", reasonMissingUUID},
		{"empty segment", "/api/v1/dtables//rows/", false, 0, "missing base UUID", reasonMissingUUID},
		{"short UUID", "/dtables/5c264e76", false, 0, "path after /dtables/: invalid base UUID \"5c264e76\": length 8", reasonMalformedUUID},
		{"non-hex UUID", "/dtables/5g264e76-0e5a-448a-9f34-580b551364ca", false, 0, "non-hex character 'g' at position 2", reasonMalformedUUID},
		{"empty query value", "/socket.io/?dtable_uuid=", false, 0, "query parameter dtable_uuid: invalid base UUID \"\"", reasonMalformedUUID},
		{"path wins over query", "/dtables/11264e76-0e5a-448a-9f34-580b551364ca?dtable_uuid=22264e76-0e5a-448a-9f34-580b551364ca", true, 0x11, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, found, err := f.find(httptest.NewRequest("GET", tt.target, nil))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || err.reason() != tt.reason {
					t.Errorf("%s: err %v (reason %v); want %q (reason %s)", tt.target, err, reasonOf(err), tt.err, tt.reason)
				}
				return
			}
			if err != nil || found != tt.found || b != tt.bucket {
				t.Errorf("%s: %v %v %v; want %v %v", tt.target, b, found, err, tt.bucket, tt.found)
			}
		})
	}
}

func reasonOf(err *uuidError) string {
	if err == nil {
		return ""
	}
	return err.reason()
}

// testFollower is a shared follower with a table but no etcd, for unit tests.
func testFollower() *follower {
	fw := &follower{}
	snap := watch.EmptySnapshot()
	snap.Nodes["n1"] = schema.Node{NodeID: "n1", NodeURL: "https://n1/", LocalNodeURL: "http://127.0.0.1:5000/"}
	snap.Assignment = &schema.Assignment{Version: 3}
	for b := range snap.Assignment.Owners {
		snap.Assignment.Owners[b] = "n1"
	}
	fw.table.Store(buildTable(fw, snap, nil))
	return fw
}

func TestRequestPathLookupAllocatesNothing(t *testing.T) {
	f, fw := defaultFinder(), testFollower()
	r := httptest.NewRequest("GET", "/api/v1/dtables/5c264e76-0e5a-448a-9f34-580b551364ca/rows/", nil)
	q := httptest.NewRequest("GET", "/socket.io/?EIO=4&dtable_uuid=5c264e76-0e5a-448a-9f34-580b551364ca", nil)
	allocs := testing.AllocsPerRun(1000, func() {
		b, _, _ := f.find(r)
		_, rt := fw.lookup(b)
		b2, _, _ := f.find(q)
		_, rt2 := fw.lookup(b2)
		if !rt.ok || !rt2.ok || rt.dial != "127.0.0.1:5000" {
			t.Fatal("not routed")
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
	finder := defaultFinder()
	f.Fuzz(func(t *testing.T, path, query string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.URL.Path, r.URL.RawQuery = path, query
		b, found, err := finder.find(r)
		if err != nil && found {
			t.Fatal("found and error at once")
		}
		if found && b.String() == "" {
			t.Fatal("found an impossible bucket")
		}
	})
}
