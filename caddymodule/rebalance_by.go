package caddymodule

import (
	"fmt"
	"net/url"

	"github.com/dtablecluster/dtable-router/internal/monitorapi"
)

// parseBy reads the by query parameter of POST /rebalance/: absent or
// count evens out bucket counts, load the load the proxies measure;
// anything else (also repeated values that disagree) is an error naming
// the value, answered 400 like a bad dry_run.
func parseBy(rawQuery string) (string, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", fmt.Errorf("query: %v", err)
	}
	values, ok := q["by"]
	if !ok {
		return "", nil
	}
	for _, v := range values {
		if v != monitorapi.ByCount && v != monitorapi.ByLoad {
			return "", fmt.Errorf("by: %q; want count or load", v)
		}
		if v != values[0] {
			return "", fmt.Errorf("by: given as %q and %q", values[0], v)
		}
	}
	if values[0] == monitorapi.ByCount {
		return "", nil // the default: a request without it means the same to every monitor
	}
	return values[0], nil
}
