// Package serverconfig reads a dtable-server's dtable_server_config.json as
// the operator docs write it: JSON with "//" comments (and, leniently, "/* */"
// comments and trailing commas), whose "cluster_config" object names the
// etcd hosts and this node. Other top-level keys belong to dtable-server and
// are ignored. Errors name the file, the line and what is wrong.
package serverconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// ClusterConfig is the "cluster_config" object of the file.
type ClusterConfig struct {
	EtcdHostList []string // "etcd_host_list" (or the older single "etcd_host")
	NodeID       string   // "node_id"
	NodeURL      string   // "node_url"
	LocalNodeURL string   // "local_node_url"

	// File is the path it was read from; Lines gives, per JSON field name,
	// the line of its value, so later validation can point at it.
	File  string
	Lines map[string]int
}

// Error is a problem with a config file at a position.
type Error struct {
	File string
	Line int // 0 if the problem is not at one place (e.g. a missing object)
	Col  int
	Msg  string
}

func (e *Error) Error() string {
	switch {
	case e.Line > 0 && e.Col > 0:
		return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// At returns an error about the value of field (a JSON name such as
// "node_url"), pointing at its line if the file has it.
func (c *ClusterConfig) At(field, format string, args ...any) error {
	return &Error{File: c.File, Line: c.Lines[field], Msg: fmt.Sprintf(format, args...)}
}

// Load reads and parses the file at path.
func Load(path string) (*ClusterConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("cannot read: %v", err)}
	}
	return Parse(path, data)
}

// Parse parses the contents of a config file; name is used in errors.
func Parse(name string, data []byte) (*ClusterConfig, error) {
	clean, off, ok := stripJSONC(data)
	if !ok {
		l, c := lineCol(data, off)
		return nil, &Error{File: name, Line: l, Col: c, Msg: "comment /* is never closed"}
	}
	p := &parser{name: name, src: clean, dec: json.NewDecoder(bytes.NewReader(clean))}
	p.dec.UseNumber()
	return p.parse()
}

type parser struct {
	name string
	src  []byte
	dec  *json.Decoder
}

// errAt builds an Error at byte offset off.
func (p *parser) errAt(off int64, format string, args ...any) error {
	l, c := lineCol(p.src, int(off))
	return &Error{File: p.name, Line: l, Col: c, Msg: fmt.Sprintf(format, args...)}
}

// syntax turns a decoder error into an Error with a position.
func (p *parser) syntax(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return p.errAt(se.Offset, "invalid JSON: %v", se)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return p.errAt(int64(len(p.src)), "invalid JSON: the file ends early (a '}' or ']' missing?)")
	}
	return p.errAt(p.dec.InputOffset(), "invalid JSON: %v", err)
}

// valueStart returns the offset of the next value after the decoder's
// position (skipping white space and the ':' after a key).
func (p *parser) valueStart() int64 {
	off := p.dec.InputOffset()
	for int(off) < len(p.src) {
		switch p.src[off] {
		case ' ', '\t', '\r', '\n', ':', ',':
			off++
			continue
		}
		break
	}
	return off
}

func (p *parser) parse() (*ClusterConfig, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return nil, p.syntax(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, p.errAt(0, "the file must hold a JSON object, found %v", tok)
	}
	var cfg *ClusterConfig
	for p.dec.More() {
		key, err := p.dec.Token()
		if err != nil {
			return nil, p.syntax(err)
		}
		start := p.valueStart()
		if key == "cluster_config" {
			if cfg, err = p.clusterConfig(start); err != nil {
				return nil, err
			}
			continue
		}
		var skip json.RawMessage // a setting of dtable-server's own
		if err := p.dec.Decode(&skip); err != nil {
			return nil, p.syntax(err)
		}
	}
	if _, err := p.dec.Token(); err != nil {
		return nil, p.syntax(err)
	}
	if p.dec.More() {
		return nil, p.errAt(p.valueStart(), "invalid JSON: more data after the top-level object")
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.errAt(p.valueStart(), "invalid JSON: more data after the top-level object")
	}
	if cfg == nil {
		return nil, &Error{File: p.name, Msg: `no "cluster_config" object: the cluster settings go in "cluster_config": {"etcd_host_list": [...], "node_id": ..., "node_url": ..., "local_node_url": ...}`}
	}
	return cfg, nil
}

func (p *parser) clusterConfig(start int64) (*ClusterConfig, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return nil, p.syntax(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, p.errAt(start, `"cluster_config" must be an object`)
	}
	cfg := &ClusterConfig{File: p.name, Lines: map[string]int{}}
	line, _ := lineCol(p.src, int(start))
	cfg.Lines["cluster_config"] = line
	for p.dec.More() {
		tok, err := p.dec.Token()
		if err != nil {
			return nil, p.syntax(err)
		}
		key := tok.(string)
		at := p.valueStart()
		cfg.Lines[key], _ = lineCol(p.src, int(at))
		var raw json.RawMessage
		if err := p.dec.Decode(&raw); err != nil {
			return nil, p.syntax(err)
		}
		var target any
		switch key {
		case "etcd_host_list":
			target = &cfg.EtcdHostList
		case "etcd_host": // the single-host form of older docs
			var host string
			if err := json.Unmarshal(raw, &host); err != nil {
				return nil, p.errAt(at, `"etcd_host" must be a string such as "etcd-01.example.com:2379"`)
			}
			if cfg.EtcdHostList == nil {
				cfg.EtcdHostList = []string{host}
			}
			continue
		case "node_id":
			target = &cfg.NodeID
		case "node_url":
			target = &cfg.NodeURL
		case "local_node_url":
			target = &cfg.LocalNodeURL
		default:
			continue // other settings are not ours
		}
		if err := json.Unmarshal(raw, target); err != nil {
			want := "a string"
			if key == "etcd_host_list" {
				want = `a list of strings such as ["etcd-01.example.com:2379"]`
			}
			return nil, p.errAt(at, "%q must be %s, found %s", key, want, raw)
		}
	}
	if _, err := p.dec.Token(); err != nil { // the closing '}'
		return nil, p.syntax(err)
	}
	return cfg, nil
}
