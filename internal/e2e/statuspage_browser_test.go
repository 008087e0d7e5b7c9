package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/monitorapi"
	"github.com/dtablecluster/dtable-router/internal/schema"
	"github.com/dtablecluster/dtable-router/internal/testutil"
)

const statusPageToken = "browser-test-token"

// findChromium returns Debian's chromium, or skips the test.
func findChromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Skip("no chromium (neither /usr/bin/chromium nor on PATH): the status page's browser test needs it; " +
		"install it with `apt-get install chromium` (.ci/run does)")
	return ""
}

// addAdminSite loads the running config (the harness's) again with the
// operator site added on 127.0.0.1:port, with a token.
func (c *cluster) addAdminSite(port int) {
	c.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/config/", adminPort))
	if err != nil {
		c.t.Fatal(err)
	}
	var cfg map[string]any
	err = json.NewDecoder(resp.Body).Decode(&cfg)
	resp.Body.Close()
	if err != nil {
		c.t.Fatal(err)
	}
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, ok := httpApp["servers"].(map[string]any)
	if !ok {
		c.t.Fatalf("the running config has no HTTP servers: %v", cfg)
	}
	servers["operator_site"] = map[string]any{
		"listen": []string{fmt.Sprintf("127.0.0.1:%d", port)},
		"routes": []any{map[string]any{"handle": []any{map[string]any{
			"handler": "dtable_cluster_admin", "etcd": c.etcd.Endpoints(), "token": statusPageToken,
		}}}},
	}
	body, _ := json.Marshal(cfg)
	resp, err = http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "application/json", bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("load the config with the operator site: %d %s", resp.StatusCode, msg)
	}
}

// browser is one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
	mu  sync.Mutex
	js  []string // the page's uncaught exceptions and logged errors (a refused Content-Security-Policy among them)
}

func newBrowser(t *testing.T, bin string) *browser {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1366, 768),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx}
	if err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			b.mu.Lock()
			d := ev.ExceptionDetails
			msg := fmt.Sprintf("%s at %s:%d:%d", d.Text, d.URL, d.LineNumber+1, d.ColumnNumber+1)
			if d.Exception != nil {
				msg += ": " + d.Exception.Description
			}
			b.js = append(b.js, msg)
			b.mu.Unlock()
		case *cdplog.EventEntryAdded:
			e := ev.Entry
			// The 401 of the first GET events is the page asking for the token.
			if e.Level == cdplog.EntryLevelError && !(e.Source == cdplog.EntrySourceNetwork && strings.Contains(e.Text, "401")) {
				b.mu.Lock()
				b.js = append(b.js, fmt.Sprintf("%s: %s (%s)", e.Source, e.Text, e.URL))
				b.mu.Unlock()
			}
		case *runtime.EventConsoleAPICalled:
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			t.Logf("page console.%s: %s", ev.Type, strings.Join(args, " "))
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b.do("enable the log", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, cdplog.Enable, cdp.Empty{})
		return err
	}))
	return b
}

// do runs browser actions, each bounded.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	b.checkJS()
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func (b *browser) checkJS() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.js) > 0 {
		b.t.Fatalf("the page threw: %v", b.js)
	}
}

// cellOwners is the page's grid: bucket -> owner, or -> owner>target while moving.
const cellOwners = `Object.fromEntries(Array.from(document.querySelectorAll('#grid .cell')).map(c =>
	[c.dataset.bucket, c.dataset.owner + (c.dataset.movingTo ? '>' + c.dataset.movingTo : '')]))`

// owners is the same for an assignment.
func owners(a *schema.Assignment) map[string]string {
	out := map[string]string{}
	for i, n := range a.Owners {
		b := bucket.Bucket(i)
		if m, ok := a.Moving[b]; ok {
			n += ">" + m.To
		}
		out[b.String()] = n
	}
	return out
}

// The status page in a real browser against a real cluster: it asks for
// the token, shows the 256 buckets with the owners the assignment in etcd
// names, shows a move within a second of its write, undrains a node and
// shows a rebalance's plan (dry run) and applies it; it saves a screenshot.
func TestStatusPageInABrowser(t *testing.T) {
	bin := findChromium(t)
	c := newCluster(t, options{servers: 3, monitors: 1, save: 300 * time.Millisecond})
	sitePort := testutil.FreePort(t)
	c.addAdminSite(sitePort)
	pageURL := fmt.Sprintf("http://127.0.0.1:%d/", sitePort)
	b := newBrowser(t, bin)

	start := time.Now()
	b.do("open the page and give the token",
		chromedp.EmulateViewport(1366, 768),
		chromedp.Navigate(pageURL),
		chromedp.WaitVisible(chromedp.CSS("#token-input")),
		chromedp.SendKeys(chromedp.CSS("#token-input"), statusPageToken),
		chromedp.Click(chromedp.CSS("#token-form button[type=submit]")),
	)
	a := c.assignment()
	waitPage(b, 5*time.Second, "the page shows the assignment of etcd", func() bool {
		return eval[string](b, `document.body.dataset.version || ''`) == fmt.Sprint(a.Version)
	})
	t.Logf("page live with version %d %v after opening it", a.Version, time.Since(start).Round(time.Millisecond))
	if n := eval[int](b, `document.querySelectorAll('#grid .cell').length`); n != bucket.Count {
		t.Fatalf("%d cells; want %d", n, bucket.Count)
	}
	if got, want := eval[map[string]string](b, cellOwners), owners(a); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("cells %v\nassignment %v", got, want)
	}

	// A drain (by the CLI's way, monitorapi): the first move it writes is
	// on the page within a second of the write.
	firstMove := make(chan time.Time, 1)
	var moved map[string]string
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	wch := c.cli.Watch(wctx, layout.AssignmentKey())
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if a, err := schema.ParseAssignment(ev.Kv.Value); err == nil && len(a.Moving) > 0 {
					moved = owners(a)
					firstMove <- time.Now()
					return
				}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	resp, err := monitorapi.Send(ctx, c.cli, layout, monitorapi.Request{Op: monitorapi.OpDrain, Node: "s3", From: "browser-test"})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var wrote time.Time
	select {
	case wrote = <-firstMove:
	case <-time.After(5 * time.Second):
		t.Fatal("no move written after the drain")
	}
	var bucketMoved, target string
	for bk, o := range moved {
		if from, to, ok := strings.Cut(o, ">"); ok && from == "s3" {
			bucketMoved, target = bk, to
			break
		}
	}
	sel := fmt.Sprintf(`document.querySelector('#grid .cell[data-bucket="%s"]')`, bucketMoved)
	shown := waitPage(b, 2*time.Second, "bucket "+bucketMoved+" shown moving to "+target+" (or moved)", func() bool {
		return eval[bool](b, sel+`.dataset.movingTo === '`+target+`' || `+sel+`.dataset.owner === '`+target+`'`)
	})
	if lag := shown.Sub(wrote); lag > time.Second {
		t.Fatalf("bucket %s's move shown %v after its write was seen in etcd; want within 1 s", bucketMoved, lag)
	}
	t.Logf("drain of s3 (%d moves): bucket %s on the page %v after the write was seen in etcd", len(resp.Moves), bucketMoved, shown.Sub(wrote).Round(time.Millisecond))
	a = c.waitAssignment("s3 drained", 30*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s3")) == 0 })
	waitPage(b, 2*time.Second, "the page shows the drained assignment", func() bool {
		return fmt.Sprint(eval[map[string]string](b, cellOwners)) == fmt.Sprint(owners(a))
	})
	if st := eval[string](b, `document.querySelector('#nodes tr[data-node="s3"]').dataset.state`); st != "drained" {
		t.Fatalf("s3 shown %q", st)
	}

	// Undrain s3 from the page: its dry run, then Apply.
	b.do("undrain s3", chromedp.Click(chromedp.CSS(`#nodes tr[data-node="s3"] td.actions button`)), chromedp.WaitVisible(chromedp.CSS("#plan-apply")))
	if title := eval[string](b, `document.getElementById('plan-title').textContent`); !strings.Contains(title, "Undrain s3") {
		t.Fatalf("plan title %q", title)
	}
	b.do("apply the undrain", chromedp.Click(chromedp.CSS("#plan-apply")))
	waitPage(b, 5*time.Second, "s3 shown live again", func() bool {
		return eval[string](b, `document.querySelector('#nodes tr[data-node="s3"]').dataset.state`) == "live"
	})

	// Rebalance: the dry run's plan is on the page, as the monitor gives it.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	dry, err := monitorapi.Send(ctx, c.cli, layout, monitorapi.Request{Op: monitorapi.OpRebalance, DryRun: true, From: "browser-test"})
	cancel()
	if err != nil || len(dry.Moves) == 0 {
		t.Fatalf("rebalance dry run: %v %+v", err, dry)
	}
	b.do("rebalance, dry run", chromedp.Click(chromedp.CSS("#rebalance")))
	waitPage(b, 5*time.Second, "the rebalance plan", func() bool {
		return strings.HasPrefix(eval[string](b, `document.getElementById('plan-title').textContent`), "Rebalance — plan (dry run)")
	})
	summary := eval[string](b, `document.getElementById('plan-summary').textContent`)
	if want := fmt.Sprintf("%d moves in about %d waves", len(dry.Moves), dry.Waves); !strings.HasPrefix(summary, want) {
		t.Fatalf("plan %q; want it to start with %q", summary, want)
	}
	if gains := eval[string](b, `Array.from(document.querySelectorAll('#plan-body tbody tr')).find(r => r.textContent.startsWith('s3')).children[1].textContent`); gains != fmt.Sprint(dry.MovesPerNode["s3"].Gained) {
		t.Fatalf("s3 gains %s in the plan; want %d", gains, dry.MovesPerNode["s3"].Gained)
	}
	b.do("apply the rebalance", chromedp.Click(chromedp.CSS("#plan-apply")))
	waitPage(b, 5*time.Second, "handoffs to s3 on the page", func() bool {
		return eval[int](b, `document.querySelectorAll('#grid .cell.moving[data-moving-to="s3"]').length`) > 0
	})
	// Details of a moving bucket (the last in the grid: among the latest
	// started), taken at once, so it still moves in the screenshot.
	shot := b.screenshot(`Array.from(document.querySelectorAll('#grid .cell.moving')).pop().click()`)
	a = c.waitAssignment("rebalanced", 60*time.Second, func(a *schema.Assignment) bool { return settled(a) && len(a.Owned("s3")) >= 85 })
	waitPage(b, 2*time.Second, "the page shows the rebalanced assignment", func() bool {
		return fmt.Sprint(eval[map[string]string](b, cellOwners)) == fmt.Sprint(owners(a))
	})
	if n := eval[int](b, `document.querySelectorAll('#moves li[data-kind="committed"]').length`); n == 0 {
		t.Fatal("no committed move in the recent moves")
	}

	path := filepath.Join(t.TempDir(), "status-page.png")
	for _, p := range []string{path, os.Getenv("STATUS_PAGE_SCREENSHOT")} {
		if p == "" {
			continue
		}
		if err := os.WriteFile(p, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
	b.checkJS()
}

// screenshot runs a script, then takes a PNG of the viewport.
func (b *browser) screenshot(script string) []byte {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, func(ctx context.Context, t *chromedp.Target) ([]byte, error) {
		if _, err := chromedp.Evaluate[chromedp.Void](script)(ctx, t); err != nil {
			return nil, err
		}
		return chromedp.CaptureScreenshot()(ctx, t)
	})
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		b.t.Fatalf("screenshot: %v (%d bytes)", err, len(png))
	}
	return png
}

// waitPage is testutil.Eventually for the page, and returns when cond
// came to hold. An error the page threw meanwhile fails the test at once:
// it is the likely reason cond does not hold (the test would fail on it
// at its next browser action anyway).
func waitPage(b *browser, d time.Duration, what string, cond func() bool) time.Time {
	b.t.Helper()
	testutil.Eventually(b.t, d, what, func() bool {
		b.checkJS()
		return cond()
	})
	return time.Now()
}
