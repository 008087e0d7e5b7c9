package watch

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// The bad-input matrix for etcd values: every key of the layout, written
// with corrupt JSON, wrong types or an unknown bucket, or deleted. Each
// case checks what the readers keep (nothing good is lost) and that the
// log names the key; none may crash the watcher.
func TestBadInputMatrixForEveryKey(t *testing.T) {
	good := func(s *Snapshot) bool {
		return s.Assignment != nil && s.Assignment.Version == 5 && s.Settings.IsDrained("n2") &&
			s.Nodes["n1"].NodeURL == node("n1").NodeURL
	}
	// unchanged: the whole state is as before, with only the marker (n3)
	// added.
	unchanged := func(s *Snapshot) bool {
		_, marker := s.Nodes["n3"]
		return good(s) && s.AssignmentError == nil && s.SettingsError == nil && len(s.NodeErrors) == 0 &&
			len(s.Released) == 1 && marker
	}
	const ignoredKey = "not part of the state: ignored, nothing published, the next change seen"
	for _, tc := range []struct {
		name    string
		key     string
		value   string // "" = delete
		logs    bool   // an error names the key
		check   func(*Snapshot) bool
		checked string
	}{
		{"assignment: corrupt JSON", layout.AssignmentKey(), `{"version":`, true, func(s *Snapshot) bool { return good(s) && s.AssignmentError != nil }, "last valid assignment kept, error set"},
		{"assignment: wrong types", layout.AssignmentKey(), `{"version":"7","buckets":[]}`, true, func(s *Snapshot) bool { return good(s) && s.AssignmentError != nil }, "last valid assignment kept"},
		{"assignment: unknown bucket", layout.AssignmentKey(), `{"version":8,"buckets":{"zz":"n1"}}`, true, func(s *Snapshot) bool { return good(s) && s.AssignmentError != nil }, "last valid assignment kept"},
		{"assignment: bad handoff state", layout.AssignmentKey(), `{"version":8,"buckets":{"00":"n1"},"moving":{"00":{"from":"n2","to":"n1","epoch":1,"since":"2026-11-21T10:00:00Z"}}}`, true, func(s *Snapshot) bool { return good(s) && s.AssignmentError != nil }, "last valid assignment kept"},
		{"assignment: deleted", layout.AssignmentKey(), "", true, func(s *Snapshot) bool { return good(s) && s.AssignmentError == ErrAssignmentDeleted }, "last valid assignment kept, marked deleted"},
		{"settings: corrupt JSON", layout.SettingsKey(), `{`, true, func(s *Snapshot) bool { return good(s) && s.SettingsError != nil }, "last valid settings kept"},
		{"settings: wrong types", layout.SettingsKey(), `{"drained":"n1"}`, true, func(s *Snapshot) bool { return good(s) && s.SettingsError != nil }, "last valid settings kept"},
		{"settings: unknown bucket", layout.SettingsKey(), `{"pins":{"zz":"n1"}}`, true, func(s *Snapshot) bool { return good(s) && s.SettingsError != nil }, "last valid settings kept"},
		{"settings: deleted", layout.SettingsKey(), "", true, func(s *Snapshot) bool { return good(s) && s.SettingsError == ErrSettingsDeleted }, "last valid settings kept, marked deleted"},
		{"node: corrupt JSON", layout.NodeKey("n1"), `{`, true, func(s *Snapshot) bool { return good(s) && s.NodeErrors["n1"] != nil }, "last valid registration kept"},
		{"node: wrong types", layout.NodeKey("n1"), `{"node_id":1}`, true, func(s *Snapshot) bool { return good(s) && s.NodeErrors["n1"] != nil }, "last valid registration kept"},
		{"node: another node's id", layout.NodeKey("n1"), string(node("n2").Encode()), true, func(s *Snapshot) bool { return good(s) && s.NodeErrors["n1"] != nil }, "last valid registration kept"},
		{"node: unknown state", layout.NodeKey("n1"), `{"node_id":"n1","node_url":"http://a/","local_node_url":"http://b/","state":"gone"}`, true, func(s *Snapshot) bool { return good(s) && s.NodeErrors["n1"] != nil }, "last valid registration kept"},
		{"node: deleted", layout.NodeKey("n1"), "", false, func(s *Snapshot) bool { _, ok := s.Nodes["n1"]; return !ok && s.Assignment.Version == 5 }, "unregistered; the monitor asks about its lease"},
		{"released: corrupt JSON", layout.ReleasedKey(0x0c), `{`, true, func(s *Snapshot) bool { _, ok := s.Released[0x0c]; return good(s) && !ok }, "ignored"},
		{"released: wrong types", layout.ReleasedKey(0x0c), `{"from":1,"epoch":"x"}`, true, func(s *Snapshot) bool { _, ok := s.Released[0x0c]; return good(s) && !ok }, "ignored"},
		{"released: unknown bucket (a key that is not one: ignored, nothing published)", layout.ReleasedPrefix() + "zz", `{"from":"n1","epoch":1}`, false, func(s *Snapshot) bool {
			_, marker := s.Nodes["n3"]
			return good(s) && len(s.Released) == 1 && marker
		}, "ignored, and the next change seen"},
		{"released: deleted", layout.ReleasedKey(0x0c), "", false, func(s *Snapshot) bool { _, ok := s.Released[0x0c]; return good(s) && !ok }, "removed"},
		// Keys that are no part of the routing state: whatever they hold,
		// the watcher publishes nothing for them and keeps its state (the
		// monitor reads and reports them: monitor/badinput_test.go).
		{"load: corrupt JSON", layout.LoadKey("caddy@p1"), `{`, false, unchanged, ignoredKey},
		{"load: wrong types", layout.LoadKey("caddy@p1"), `{"proxy":1,"interval_seconds":"x"}`, false, unchanged, ignoredKey},
		{"load: unknown bucket", layout.LoadKey("caddy@p1"), `{"proxy":"caddy@p1","interval_seconds":30,"at":"2026-11-21T10:00:00Z","buckets":{"zz":{"requests":1}}}`, false, unchanged, ignoredKey},
		{"load: deleted", layout.LoadKey("caddy@p1"), "", false, unchanged, ignoredKey},
		{"requests: corrupt JSON", layout.RequestsPrefix() + "r1", `{`, false, unchanged, ignoredKey},
		{"requests: unknown op", layout.RequestsPrefix() + "r1", `{"id":"r1","op":"explode"}`, false, unchanged, ignoredKey},
		{"requests: deleted", layout.RequestsPrefix() + "r1", "", false, unchanged, ignoredKey},
		{"responses: deleted", layout.ResponsesPrefix() + "r0", "", false, unchanged, ignoredKey},
		{"monitor/election: deleted", layout.ElectionPrefix() + "/694d7e", "", false, unchanged, ignoredKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t)
			cli := c.Client(t)
			put(t, cli, layout.NodeKey("n1"), node("n1").Encode())
			put(t, cli, layout.NodeKey("n2"), node("n2").Encode())
			put(t, cli, layout.AssignmentKey(), assignment(5, "n1", "n2").Encode())
			put(t, cli, layout.SettingsKey(), schema.Settings{Drained: []string{"n2"}}.Encode())
			put(t, cli, layout.ReleasedKey(0x0c), schema.Released{From: "n1", Epoch: 5}.Encode())
			put(t, cli, layout.LoadKey("caddy@p1"), schema.LoadReport{Proxy: "caddy@p1", Interval: time.Second, At: time.Now()}.Encode())
			put(t, cli, layout.RequestsPrefix()+"r1", []byte(`{"id":"r1","op":"rebalance"}`))
			put(t, cli, layout.ResponsesPrefix()+"r0", []byte(`{"id":"r0","op":"rebalance","ok":true}`))
			put(t, cli, layout.ElectionPrefix()+"/694d7e", []byte("mon-a"))
			core, logs := observer.New(zapcore.WarnLevel)
			w := startWatcher(t, cli, zap.New(core), nil)
			sub := w.Subscribe()
			defer sub.Close()
			waitFor(t, sub, "the good state", func(s *Snapshot) bool { return good(s) && len(s.Released) == 1 })
			var rev int64
			if tc.value == "" {
				del(t, cli, tc.key)
			} else {
				rev = put(t, cli, tc.key, []byte(tc.value))
			}
			ignored := strings.HasSuffix(tc.key, "/zz") || tc.checked == ignoredKey
			if ignored { // ignored keys publish nothing: a marker change shows it was passed
				rev = put(t, cli, layout.NodeKey("n3"), node("n3").Encode())
			}
			s := waitFor(t, sub, tc.checked, func(s *Snapshot) bool { return s.Revision >= rev && tc.check(s) })
			if s == nil {
				return
			}
			if ignored && s.Revision != rev {
				t.Fatalf("a snapshot at revision %d before the marker's (%d): the ignored key was published", s.Revision, rev)
			}
			if tc.logs {
				named := false
				for _, e := range logs.All() {
					for _, f := range e.Context {
						if f.Key == "key" && f.String == tc.key {
							named = true
						}
					}
				}
				if !named {
					t.Fatalf("no log names the key %s: %v", tc.key, logs.All())
				}
			}
		})
	}
}
