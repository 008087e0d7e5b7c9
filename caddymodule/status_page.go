package caddymodule

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"time"

	"go.uber.org/zap"
)

// The status page (GET / on the operator site) is a static shell: HTML,
// CSS and JavaScript embedded in the binary, no framework, nothing
// fetched from elsewhere. It holds no cluster data, so it is served
// without the site's token (a browser's navigation cannot send a bearer
// header); the page asks for the token and sends it with every fetch of
// GET /events and of the actions, which need it like every other path.
//
//go:embed statuspage
var statusPageFiles embed.FS

// pageAsset is one embedded file of the page, by the URL path it is served at.
type pageAsset struct {
	name        string
	contentType string
	etag        string
	body        []byte
}

var pageAssets = loadPageAssets(map[string]string{
	"/":               "statuspage/index.html",
	"/assets/app.css": "statuspage/app.css",
	"/assets/app.js":  "statuspage/app.js",
})

func loadPageAssets(files map[string]string) map[string]pageAsset {
	out := map[string]pageAsset{}
	for urlPath, file := range files {
		body, err := statusPageFiles.ReadFile(file)
		if err != nil { // the files are embedded at build time: a missing one is a bug in this list
			panic(fmt.Sprintf("status page: %v", err))
		}
		sum := sha256.Sum256(body)
		out[urlPath] = pageAsset{name: path.Base(file), contentType: mime.TypeByExtension(path.Ext(file)),
			etag: `"` + hex.EncodeToString(sum[:8]) + `"`, body: body}
	}
	return out
}

// pageSecurityHeaders keep the page from loading anything but its own
// files, from being framed (its buttons drain nodes) and from leaking its
// address.
func pageSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "+
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

func (a pageAsset) serve(w http.ResponseWriter, r *http.Request) error {
	pageSecurityHeaders(w.Header())
	w.Header().Set("Content-Type", a.contentType)
	w.Header().Set("ETag", a.etag)
	w.Header().Set("Cache-Control", "no-cache") // revalidate: a new binary may bring new files
	http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(a.body))
	return nil
}

// Server-sent events pacing. Tests shorten them.
var (
	// sseKeepAlive is how often an idle stream gets a comment, so proxies
	// and browsers keep it open and the page sees it is alive.
	sseKeepAlive = 15 * time.Second
	// sseWriteTimeout bounds each write to a viewer: one that stops
	// reading is dropped rather than kept forever.
	sseWriteTimeout = 10 * time.Second
	// statusRefreshInterval is how often the shared state is rebuilt while
	// viewers watch, to show a new leader or a lost etcd connection that
	// no snapshot announces.
	statusRefreshInterval = 2 * time.Second
)

// events streams the status page's state (GET /events, text/event-stream):
// a "state" event with the whole state at once, another after each
// change, a comment every sseKeepAlive. A viewer that falls behind gets
// only the latest state. The stream ends when the client goes away, when
// this handler is cleaned up (a config reload: the page reconnects to
// the new config), when the follower stops, and when the server begins
// to shut down.
func (h *DtableClusterAdmin) events(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // an nginx in front must not buffer the stream
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	shuttingDown := h.serverShutdown(r)
	hub := h.follower.live
	v, leave := hub.join()
	defer leave()
	rc := http.NewResponseController(w)
	// A connection kept alive for another request must not keep this
	// stream's write deadline.
	defer rc.SetWriteDeadline(time.Time{})
	w.WriteHeader(http.StatusOK)
	send := func(s string) bool {
		if err := rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout)); err != nil && err != http.ErrNotSupported {
			return false
		}
		if _, err := io.WriteString(w, s); err != nil {
			h.log.Debug("status stream ended", zap.String("remote", r.RemoteAddr), zap.Error(err))
			return false
		}
		return rc.Flush() == nil
	}
	if !send(": dtable cluster status\n\n") { // headers out at once: the page knows it is connected
		return nil
	}
	keepAlive := time.NewTicker(sseKeepAlive)
	defer keepAlive.Stop()
	var sent uint64
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-h.closing:
			return nil
		case <-shuttingDown:
			return nil
		case <-hub.stopped():
			return nil
		case <-keepAlive.C:
			if !send(": keep-alive\n\n") {
				return nil
			}
		case <-v.wake:
			data, seq := hub.latest()
			if data == nil || seq == sent {
				continue
			}
			if !send(fmt.Sprintf("event: state\nid: %d\ndata: %s\n\n", seq, data)) {
				return nil
			}
			sent = seq
		}
	}
}

// serverShutdown returns a channel closed when the net/http server
// serving r begins to shut down (nil, which never fires, without one).
// A stream must end then: on exit Caddy waits for the server's Shutdown,
// which waits for every response in progress, before it cleans modules up
// (closing), so an open status page would keep the process from exiting.
// The hook is registered once per server.
func (h *DtableClusterAdmin) serverShutdown(r *http.Request) <-chan struct{} {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return nil
	}
	ch := make(chan struct{})
	actual, loaded := h.shutdowns.LoadOrStore(srv, ch)
	if !loaded {
		srv.RegisterOnShutdown(func() { close(ch) })
	}
	return actual.(chan struct{})
}
