package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// healthChecker polls the local dtable-server so that the node is
// registered only while it answers.
type healthChecker struct {
	url    string
	cfg    healthSettings
	log    *zap.Logger
	client *http.Client

	state   atomic.Int32  // healthUnknown, healthUp or healthDown
	changed chan struct{} // signalled (buffer 1) when state changes
}

const (
	healthUnknown int32 = iota
	healthUp
	healthDown
)

func newHealthChecker(url string, cfg healthSettings, log *zap.Logger) *healthChecker {
	return &healthChecker{
		url:     url,
		cfg:     cfg,
		log:     log,
		client:  &http.Client{Timeout: cfg.timeout},
		changed: make(chan struct{}, 1),
	}
}

func (h *healthChecker) healthy() bool { return h.state.Load() == healthUp }
func (h *healthChecker) checked() bool { return h.state.Load() != healthUnknown }

func (h *healthChecker) set(s int32) {
	if h.state.Swap(s) != s {
		select {
		case h.changed <- struct{}{}:
		default:
		}
	}
}

// run checks at once and then every interval. One success makes the node
// healthy; from healthy, it takes cfg.failures failures in a row to count
// as down, so a single slow answer does not move the node's buckets.
func (h *healthChecker) run(ctx context.Context) {
	fails := 0
	ticker := time.NewTicker(h.cfg.interval)
	defer ticker.Stop()
	for {
		err := h.check(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			if !h.healthy() {
				h.log.Info("local server answers", zap.String("url", h.url))
			}
			fails = 0
			h.set(healthUp)
		default:
			fails++
			h.log.Warn("health check failed", zap.String("url", h.url), zap.Int("failures_in_a_row", fails), zap.Error(err))
			if !h.healthy() || fails >= h.cfg.failures {
				h.set(healthDown)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (h *healthChecker) check(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return err
	}
	return do2xx(h.client, req)
}

// do2xx sends req and accepts only a 2xx answer. The body is read (up to
// 64 KiB) so the connection can be reused.
func do2xx(client *http.Client, req *http.Request) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
