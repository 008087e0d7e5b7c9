package fakeserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/dtablecluster/dtable-router/internal/contract"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

const uuid0c = "0c264e76-0e5a-4d1b-9c1e-3b0f7a1c2d3e"

func notify(t *testing.T, url string, n contract.Notification) (int, time.Duration) {
	t.Helper()
	code, took, err := post(url, n)
	if err != nil {
		t.Fatal(err)
	}
	return code, took
}

// post sends a notification; safe to call from any goroutine.
func post(url string, n contract.Notification) (int, time.Duration, error) {
	body, _ := json.Marshal(n)
	start := time.Now()
	resp, err := http.Post(url+NotifyPath, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), nil
}

func request(t *testing.T, method, url string, epoch string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url+"/dtables/"+uuid0c+"/rows/", nil)
	if epoch != "" {
		req.Header.Set(contract.HeaderBucketEpoch, epoch)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

func TestStrictServerFollowsTheContract(t *testing.T) {
	s := New(Config{Name: "n1", Strict: true, SaveDelay: 150 * time.Millisecond})
	srv := httptest.NewServer(s)
	defer srv.Close()
	hold := contract.Notification{Protocol: 2, NodeID: "n1", Version: 3, Epochs: map[string]int64{"0c": 3}, ServeForMS: 60_000}

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"refuses a bucket it was not given", func(t *testing.T) {
			if code, body := request(t, "GET", srv.URL, ""); code != 421 || !strings.Contains(body, `"reason":"not_held"`) {
				t.Fatalf("%d %s", code, body)
			}
		}},
		{"a protocol 2 notification without a deadline holds nothing", func(t *testing.T) {
			n := hold
			n.ServeForMS = 0
			if code, _ := notify(t, srv.URL, n); code != 204 || len(s.Held()) != 0 {
				t.Fatalf("code %d, held %v", code, s.Held())
			}
		}},
		{"a notification for another node is refused", func(t *testing.T) {
			n := hold
			n.NodeID = "n2"
			if code, _ := notify(t, srv.URL, n); code != 409 {
				t.Fatalf("code %d", code)
			}
		}},
		{"serves a held bucket at its epoch or with no epoch", func(t *testing.T) {
			notify(t, srv.URL, hold)
			for _, epoch := range []string{"3", ""} {
				if code, body := request(t, "POST", srv.URL, epoch); code != 200 || !strings.Contains(body, `"node":"n1"`) {
					t.Fatalf("epoch %q: %d %s", epoch, code, body)
				}
			}
		}},
		{"refuses another epoch", func(t *testing.T) {
			if code, body := request(t, "GET", srv.URL, "4"); code != 421 || !strings.Contains(body, `"reason":"epoch"`) || !strings.Contains(body, `"epoch":3`) {
				t.Fatalf("%d %s", code, body)
			}
		}},
		{"a release closes sockets, saves the dirty bucket, then answers", func(t *testing.T) {
			ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/dtables/"+uuid0c+"/ws", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			n := hold
			n.Epochs = map[string]int64{}
			n.Release = map[string]contract.ReleaseOrder{"0c": {Epoch: 4, To: "n2"}}
			code, took := notify(t, srv.URL, n)
			if code != 204 || took < 150*time.Millisecond || len(s.Held()) != 0 {
				t.Fatalf("code %d after %v, held %v", code, took, s.Held())
			}
			if _, _, err := ws.ReadMessage(); err == nil {
				t.Fatal("socket still open after the release")
			}
			if code, _ := request(t, "GET", srv.URL, ""); code != 421 {
				t.Fatalf("served after release: %d", code)
			}
		}},
		{"fences at the deadline when not renewed", func(t *testing.T) {
			n := hold
			n.Epochs = map[string]int64{"0c": 5}
			n.ServeForMS = 200
			notify(t, srv.URL, n)
			if code, _ := request(t, "GET", srv.URL, "5"); code != 200 {
				t.Fatalf("not served before the deadline: %d", code)
			}
			testutil.Eventually(t, 2*time.Second, "fenced", func() bool { return len(s.Held()) == 0 })
			if code, _ := request(t, "GET", srv.URL, "5"); code != 421 {
				t.Fatalf("served after the deadline: %d", code)
			}
		}},
		{"a fence order drops everything at once", func(t *testing.T) {
			notify(t, srv.URL, hold)
			if code, _ := notify(t, srv.URL, contract.Notification{Protocol: 2, NodeID: "n1", Fence: true, Reason: "test"}); code != 204 || len(s.Held()) != 0 {
				t.Fatalf("code %d, held %v", code, s.Held())
			}
		}},
	}
	for _, st := range steps {
		t.Run(st.name, st.run)
	}
	var holds []string
	for _, iv := range s.Log() {
		if iv.Kind == "hold" {
			holds = append(holds, iv.How)
		}
	}
	if strings.Join(holds, ",") != "released,fenced,fenced" {
		t.Fatalf("holds ended %v", holds)
	}
}

func TestLenientServerServesEverything(t *testing.T) {
	srv := httptest.NewServer(Handler("n1"))
	defer srv.Close()
	if code, body := request(t, "GET", srv.URL, "9"); code != 200 || !strings.Contains(body, `"epoch":"9"`) {
		t.Fatalf("%d %s", code, body)
	}
}

func TestOverlaps(t *testing.T) {
	t0 := time.Now().Add(-time.Second) // in the past: an unended interval lasts until now
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for _, tc := range []struct {
		name string
		a, b []Interval
		want int
	}{
		{"handoff in order", []Interval{{Server: "a", Kind: "hold", Bucket: "0c", Start: at(0), End: at(10)}},
			[]Interval{{Server: "b", Kind: "hold", Bucket: "0c", Start: at(11), End: at(20)}}, 0},
		{"overlapping holds", []Interval{{Server: "a", Kind: "hold", Bucket: "0c", Start: at(0), End: at(10)}},
			[]Interval{{Server: "b", Kind: "hold", Bucket: "0c", Start: at(5), End: at(20)}}, 1},
		{"a hold that never ended", []Interval{{Server: "a", Kind: "hold", Bucket: "0c", Start: at(0)}},
			[]Interval{{Server: "b", Kind: "hold", Bucket: "0c", Start: at(5), End: at(6)}}, 1},
		{"other buckets do not conflict", []Interval{{Server: "a", Kind: "serve", Bucket: "0c", Start: at(0), End: at(10)}},
			[]Interval{{Server: "b", Kind: "serve", Bucket: "0d", Start: at(5), End: at(20)}}, 0},
		{"overlapping requests", []Interval{{Server: "a", Kind: "serve", Bucket: "0c", Start: at(0), End: at(10)}, {Server: "a", Kind: "serve", Bucket: "0c", Start: at(1), End: at(2)}},
			[]Interval{{Server: "b", Kind: "serve", Bucket: "0c", Start: at(9), End: at(20)}}, 1},
		{"a request served while another server holds the bucket", []Interval{{Server: "a", Kind: "hold", Bucket: "0c", Start: at(0), End: at(10)}},
			[]Interval{{Server: "b", Kind: "serve", Bucket: "0c", Start: at(9), End: at(11)}}, 1},
		{"a request served after the other server's hold ended", []Interval{{Server: "a", Kind: "hold", Bucket: "0c", Start: at(0), End: at(10)}},
			[]Interval{{Server: "b", Kind: "serve", Bucket: "0c", Start: at(11), End: at(12)}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Overlaps(tc.a, tc.b); len(got) != tc.want {
				t.Fatalf("Overlaps = %v, want %d", got, tc.want)
			}
		})
	}
}

// The cases the safety review found: every one would let a base be on two
// servers, lose unsaved changes, or leave a bucket unserved.
func TestStrictServerEdgeCases(t *testing.T) {
	hold := func(seq int64) contract.Notification {
		return contract.Notification{Protocol: 2, NodeID: "n1", Seq: seq, Version: 3, Epochs: map[string]int64{"0c": 3}, ServeForMS: 60_000}
	}
	release := func(seq int64) contract.Notification {
		n := hold(seq)
		n.Epochs = map[string]int64{}
		n.Release = map[string]contract.ReleaseOrder{"0c": {Epoch: 4, To: "n2"}}
		return n
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, s *Server, url string)
	}{
		{"a repeated release order answers only when the save is done", func(t *testing.T, s *Server, url string) {
			notify(t, url, hold(1))
			request(t, "POST", url, "3") // dirty: the release saves (300ms)
			first := make(chan time.Duration, 1)
			go func() { _, d, _ := post(url, release(2)); first <- d }()
			time.Sleep(50 * time.Millisecond)
			code, took := notify(t, url, release(3)) // a retry while the first still saves
			if code != 204 || took < 200*time.Millisecond || len(s.Held()) != 0 {
				t.Fatalf("retry answered %d after %v (the save takes 300ms), held %v", code, took, s.Held())
			}
			<-first
		}},
		{"a fence during a release answers 409: nothing was saved", func(t *testing.T, s *Server, url string) {
			notify(t, url, hold(1))
			request(t, "POST", url, "3")
			got := make(chan int, 1)
			go func() { code, _, _ := post(url, release(2)); got <- code }()
			time.Sleep(50 * time.Millisecond)
			notify(t, url, contract.Notification{Protocol: 2, NodeID: "n1", Seq: 3, Fence: true})
			if code := <-got; code != 409 {
				t.Fatalf("release answered %d after a fence", code)
			}
		}},
		{"a message sent before a fence is ignored after it", func(t *testing.T, s *Server, url string) {
			notify(t, url, contract.Notification{Protocol: 2, NodeID: "n1", Seq: 10, Fence: true})
			if code, _ := notify(t, url, hold(9)); code != 409 || len(s.Held()) != 0 {
				t.Fatalf("stale state: %d, held %v", code, s.Held())
			}
			if code, _ := notify(t, url, hold(11)); code != 204 || len(s.Held()) != 1 {
				t.Fatalf("newer state: %d, held %v", code, s.Held())
			}
		}},
		{"a heartbeat before any state asks for the state", func(t *testing.T, s *Server, url string) {
			hb := contract.Notification{Protocol: 2, NodeID: "n1", Seq: 1, Heartbeat: true, ServeForMS: 60_000}
			if code, _ := notify(t, url, hb); code != 409 {
				t.Fatalf("heartbeat without state: %d", code)
			}
			notify(t, url, hold(2))
			hb.Seq = 3
			if code, _ := notify(t, url, hb); code != 204 {
				t.Fatalf("heartbeat with state: %d", code)
			}
		}},
		{"a move aborted during the save takes the bucket back after it", func(t *testing.T, s *Server, url string) {
			notify(t, url, hold(1))
			request(t, "POST", url, "3")
			go post(url, release(2))
			time.Sleep(50 * time.Millisecond)
			notify(t, url, hold(3)) // aborted: hold it again
			testutil.Eventually(t, 2*time.Second, "held again after the save", func() bool { return s.Held()["0c"] == 3 })
		}},
		{"each base is dirty on its own; the release saves them together", func(t *testing.T, s *Server, url string) {
			notify(t, url, hold(1))
			other := "0c000000-0000-4000-8000-000000000000" // another base of bucket 0c
			for _, path := range []string{"/dtables/" + uuid0c + "/rows/", "/dtables/" + strings.ToUpper(uuid0c) + "/", "/dtables/" + other + "/", "/api/?dtable_uuid=" + other} {
				resp, err := http.Post(url+path, "text/plain", nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			code, took := notify(t, url, release(2))
			var saved []int
			for _, iv := range s.Log() {
				if iv.Kind == "hold" {
					saved = append(saved, iv.Saved)
				}
			}
			if code != 204 || took < 300*time.Millisecond || fmt.Sprint(saved) != "[2]" {
				t.Fatalf("release answered %d after %v (the save takes 300ms); bases saved per hold %v, want [2]", code, took, saved)
			}
		}},
		{"a bucket only read is released without saving", func(t *testing.T, s *Server, url string) {
			notify(t, url, hold(1))
			request(t, "GET", url, "3")
			if code, took := notify(t, url, release(2)); code != 204 || took >= 300*time.Millisecond {
				t.Fatalf("release answered %d after %v: a clean bucket has nothing to save", code, took)
			}
		}},
		{"another epoch drops the stale copy and loads it again", func(t *testing.T, s *Server, url string) {
			notify(t, url, hold(1))
			n := hold(2)
			n.Epochs = map[string]int64{"0c": 7}
			notify(t, url, n)
			var hows []string
			for _, iv := range s.Log() {
				if iv.Kind == "hold" {
					hows = append(hows, fmt.Sprintf("%d:%s", iv.Epoch, iv.How))
				}
			}
			if s.Held()["0c"] != 7 || strings.Join(hows, ",") != "3:dropped,7:" {
				t.Fatalf("held %v, holds %v", s.Held(), hows)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{Name: "n1", Strict: true, SaveDelay: 300 * time.Millisecond})
			srv := httptest.NewServer(s)
			defer srv.Close()
			tc.run(t, s, srv.URL)
		})
	}
}
