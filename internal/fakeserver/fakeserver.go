// Package fakeserver is a stand-in dtable-server for tests and the local
// cluster: it answers every HTTP request with its name and what it
// received (path, query, Host, the proxy's fencing headers) as JSON, and
// echoes WebSocket messages prefixed with its name ("n1:hello").
package fakeserver

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/websocket"
)

// Answer is the JSON body of every HTTP response.
type Answer struct {
	Node    string `json:"node"`
	Method  string `json:"method"`
	Path    string `json:"path"`
	Query   string `json:"query"`
	Host    string `json:"host"`
	Bucket  string `json:"bucket"`  // X-Dtable-Bucket as received
	Version string `json:"version"` // X-Dtable-Assignment-Version as received
}

// Handler returns the fake server named name.
func Handler(name string) http.Handler {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				if c.WriteMessage(mt, []byte(name+":"+string(msg))) != nil {
					return
				}
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Answer{
			Node: name, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host,
			Bucket: r.Header.Get("X-Dtable-Bucket"), Version: r.Header.Get("X-Dtable-Assignment-Version"),
		})
	})
}
