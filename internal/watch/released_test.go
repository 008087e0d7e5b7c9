package watch

import (
	"testing"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/etcdtest"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// Release acknowledgements are part of the snapshot: listed at start,
// followed by the watch, invalid ones left out, deletes removed.
func TestReleasedKeys(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, layout.ReleasedKey(0x0a), schema.Released{From: "n1", Epoch: 3}.Encode())
	w := startWatcher(t, cli, zap.NewNop(), nil)
	if r, ok := w.Snapshot().Released[0x0a]; !ok || r.From != "n1" || r.Epoch != 3 || r.ModRevision == 0 {
		t.Fatalf("listed released = %+v", w.Snapshot().Released)
	}
	sub := w.Subscribe()
	defer sub.Close()
	for _, tc := range []struct {
		name  string
		do    func()
		check func(*Snapshot) bool
	}{
		{"a new acknowledgement arrives", func() { put(t, cli, layout.ReleasedKey(0xff), schema.Released{From: "n2", Epoch: 7}.Encode()) },
			func(s *Snapshot) bool { return s.Released[0xff].Epoch == 7 && len(s.Released) == 2 }},
		{"an invalid value is left out", func() { put(t, cli, layout.ReleasedKey(0xff), []byte(`{"from":"n2"}`)) },
			func(s *Snapshot) bool { _, ok := s.Released[0xff]; return !ok && len(s.Released) == 1 }},
		{"a malformed key is ignored", func() {
			put(t, cli, layout.ReleasedPrefix()+"zz", []byte(`{}`))
			put(t, cli, layout.ReleasedKey(0x01), schema.Released{From: "n3", Epoch: 1}.Encode())
		},
			func(s *Snapshot) bool { return len(s.Released) == 2 && s.Released[0x01].From == "n3" }},
		{"a delete removes it", func() { del(t, cli, layout.ReleasedKey(0x0a)) },
			func(s *Snapshot) bool { _, ok := s.Released[0x0a]; return !ok && len(s.Released) == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.do()
			waitFor(t, sub, tc.name, tc.check)
		})
	}
}
