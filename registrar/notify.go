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

// notifier POSTs notifications in order; each is retried until it is
// accepted (2xx) or the registrar stops, and later ones wait for it.
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
	var last *schema.Assignment
	for {
		var snap *watch.Snapshot
		select {
		case <-ctx.Done():
			return
		case snap = <-sub.C:
		}
		a := snap.Assignment
		if a == nil || (last != nil && a.Version == last.Version) {
			continue
		}
		msg := notification{NodeID: n.nodeID, Version: a.Version, Gained: []string{}, Lost: []string{}, Buckets: []string{}}
		if last != nil {
			msg.PreviousVersion = last.Version
		}
		for b := range bucket.Count {
			was := last != nil && last.Owners[b] == n.nodeID
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
		if !n.deliver(ctx, msg) {
			return
		}
		last = a
	}
}

// deliver posts msg until it is accepted; false if ctx ended first.
func (n *notifier) deliver(ctx context.Context, msg notification) bool {
	body, _ := json.Marshal(msg)
	backoff := n.retryMin
	for attempt := 1; ; attempt++ {
		err := n.post(ctx, body)
		if err == nil {
			n.log.Info("notified assignment change", zap.Int64("version", msg.Version),
				zap.Int("gained", len(msg.Gained)), zap.Int("lost", len(msg.Lost)))
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		n.log.Warn("notification failed; retrying", zap.String("url", n.url), zap.Int64("version", msg.Version),
			zap.Int("attempt", attempt), zap.Duration("retry_in", backoff), zap.Error(err))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, n.retryMax)
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
