package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/watch"
)

// notification is the JSON body POSTed to -notify-url on every assignment
// change: the docs promise servers "real-time notification" of changes, and
// a server that does not watch etcd itself gets it this way.
type notification struct {
	NodeID string `json:"node_id"`
	// Version is the new assignment version; PreviousVersion the one the
	// last notification carried (0 for the first one after start).
	Version         int64 `json:"version"`
	PreviousVersion int64 `json:"previous_version"`
	// Gained and Lost are the buckets ("00".."ff") this node gained and lost
	// since the previous notification; Buckets is everything it owns now.
	Gained  []string `json:"gained"`
	Lost    []string `json:"lost"`
	Buckets []string `json:"buckets"`
}

// notifier POSTs notifications (protocol 1): always the latest state, with
// gained and lost counted from the last state the server accepted. A
// notification that fails is not retried as it was: after a back-off the
// latest state is sent, so a server that refuses one (even for good, a
// 4xx) does not block the later ones, and a slow server skips the states
// it missed instead of receiving them one by one.
type notifier struct {
	url    string
	nodeID string
	log    *zap.Logger
	client *http.Client
	// retry bounds the back-off between attempts; tests shorten it.
	retryMin, retryMax time.Duration
}

func (n *notifier) run(ctx context.Context, w *watch.Watcher) {
	if n.client == nil {
		n.client = &http.Client{Timeout: 10 * time.Second}
	}
	if n.retryMin == 0 {
		n.retryMin, n.retryMax = 200*time.Millisecond, 10*time.Second
	}
	sub := w.Subscribe()
	defer sub.Close()
	var (
		acked   *schema.Assignment // the last state the server accepted
		backoff = n.retryMin
		retry   <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.C:
		case <-retry:
		}
		retry = nil
		snap := w.Snapshot()
		a := snap.Assignment
		if a == nil || (acked != nil && a.Version == acked.Version) {
			continue
		}
		msg := notification{NodeID: n.nodeID, Version: a.Version, Gained: []string{}, Lost: []string{}, Buckets: []string{}}
		if acked != nil {
			msg.PreviousVersion = acked.Version
		}
		for b := range bucket.Count {
			was := acked != nil && acked.Owners[b] == n.nodeID
			is := a.Owners[b] == n.nodeID
			name := bucket.Bucket(b).String()
			if is {
				msg.Buckets = append(msg.Buckets, name)
			}
			switch {
			case is && !was:
				msg.Gained = append(msg.Gained, name)
			case was && !is:
				msg.Lost = append(msg.Lost, name)
			}
		}
		body, _ := json.Marshal(msg)
		if err := n.post(ctx, body); err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Warn("notification refused; sending the latest state again after a back-off", zap.String("url", n.url),
				zap.Int64("version", msg.Version), zap.Duration("retry_in", backoff), zap.Error(err))
			retry = time.After(backoff)
			backoff = min(2*backoff, n.retryMax)
			continue
		}
		n.log.Info("notified assignment change", zap.Int64("version", msg.Version),
			zap.Int("gained", len(msg.Gained)), zap.Int("lost", len(msg.Lost)))
		acked, backoff = a, n.retryMin
	}
}

func (n *notifier) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return do2xx(n.client, req)
}
