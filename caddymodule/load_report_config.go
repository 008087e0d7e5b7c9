package caddymodule

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/dtablecluster/dtable-router/internal/schema"
)

// LoadReportConfig is the load_report setting of the dtable_bucket
// handler: how this proxy publishes what it measures per bucket
// (<prefix>/load/<id>, read by the monitor to balance by load).
type LoadReportConfig struct {
	// Off: publish nothing (the counting goes on; it costs a few atomic
	// adds per request).
	Off bool `json:"off,omitempty"`
	// Interval between reports; default 30s. The key lives under a lease
	// of three intervals, so a proxy that stops is forgotten that long
	// after its last report.
	Interval caddy.Duration `json:"interval,omitempty"`
	// ID names this proxy in the key; default "caddy@<hostname>". Give
	// each proxy process its own (two on one host need one each).
	ID string `json:"id,omitempty"`
}

// defaultLoadInterval is the report interval when none is configured.
const defaultLoadInterval = 30 * time.Second

// loadReportSettings is a resolved LoadReportConfig.
type loadReportSettings struct {
	off      bool
	interval time.Duration
	id       string
}

// resolve applies the defaults and checks the id.
func (c *LoadReportConfig) resolve() (loadReportSettings, error) {
	s := loadReportSettings{interval: defaultLoadInterval, id: defaultProxyID()}
	if c == nil {
		return s, nil
	}
	s.off = c.Off
	if c.Interval < 0 {
		return s, fmt.Errorf("load_report interval %v: want a positive duration", time.Duration(c.Interval))
	}
	if c.Interval > 0 {
		s.interval = time.Duration(c.Interval)
	}
	if c.ID != "" {
		if err := schema.ValidateProxyID(c.ID); err != nil {
			return s, fmt.Errorf("load_report id: %v", err)
		}
		s.id = c.ID
	}
	return s, nil
}

// defaultProxyID is "caddy@<hostname>", with characters a proxy id does
// not allow replaced by "-".
func defaultProxyID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-:", r) {
			return r
		}
		return '-'
	}, host)
	return "caddy@" + host[:min(len(host), 120)]
}

// parseLoadReport reads the arguments of the load_report subdirective:
//
//	load_report off
//	load_report <interval> [<proxy id>]
func parseLoadReport(args []string) (*LoadReportConfig, error) {
	switch {
	case len(args) == 1 && args[0] == "off":
		return &LoadReportConfig{Off: true}, nil
	case len(args) == 0 || len(args) > 2:
		return nil, errors.New("want off, or an interval and optionally a proxy id (load_report 30s caddy@proxy-01)")
	}
	dur, err := caddy.ParseDuration(args[0])
	if err != nil || dur <= 0 {
		return nil, fmt.Errorf("interval %q: want a positive duration or off", args[0])
	}
	c := &LoadReportConfig{Interval: caddy.Duration(dur)}
	if len(args) == 2 {
		if err := schema.ValidateProxyID(args[1]); err != nil {
			return nil, err
		}
		c.ID = args[1]
	}
	return c, nil
}
