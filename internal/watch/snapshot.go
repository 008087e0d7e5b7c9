package watch

import (
	"errors"
	"maps"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/dtablecluster/dtable-router/internal/bucket"
	"github.com/dtablecluster/dtable-router/internal/schema"
)

// Snapshot is the cluster state at one etcd revision. It is immutable once
// published: readers share it without locks and must not modify it.
type Snapshot struct {
	// Revision is the etcd revision this state reflects.
	Revision int64
	// Nodes holds the valid registrations by node id; never nil. A node whose
	// value in etcd is invalid keeps its last valid registration (or is
	// absent if it never had one) and is listed in NodeErrors.
	Nodes map[string]schema.Node
	// NodeErrors says, per node id, why its current value was rejected.
	NodeErrors map[string]error
	// NodeLeases holds, for every node in Nodes, the etcd lease its
	// registration is attached to (0: none): the lease of the value in
	// Nodes, so a node that keeps its last valid registration keeps that
	// value's lease; never nil. A key can be deleted while its lease lives
	// (by hand), so a vanished key alone does not prove that a node's lease
	// ended: the monitor asks etcd about the last lease it saw.
	NodeLeases map[string]clientv3.LeaseID
	// NodeCreateRevisions holds the create revision of every node key in
	// etcd now (valid value or not); never nil. A writer that gives a node
	// buckets compares it, so a node that left (or left and came back)
	// since the snapshot makes the write fail.
	NodeCreateRevisions map[string]int64
	// Assignment is the last valid assignment; nil if there has been none
	// since the watcher started (the key was never written, or held no
	// valid value). A deleted assignment key does not clear it: the last
	// valid one stays, with AssignmentError ErrAssignmentDeleted.
	Assignment *schema.Assignment
	// AssignmentModRevision is the mod revision of the assignment key as it
	// is in etcd now, valid or not (0: the key does not exist). A writer
	// compares against it.
	AssignmentModRevision int64
	// AssignmentError says why the current value of the assignment key was
	// rejected (ErrAssignmentDeleted: the key was deleted, and Assignment
	// is the last valid value); nil when it is valid, or absent with no
	// valid value seen before.
	AssignmentError error
	// Settings are the operator's drains, pins and auto-rebalance switch
	// (the last valid value; zero if none), with the key's mod revision as
	// it is now and why its current value was rejected, if it was.
	Settings            schema.Settings
	SettingsModRevision int64
	SettingsError       error
	// Released holds the valid release acknowledgements
	// (<prefix>/released/<bucket>) with their keys' mod revisions, which a
	// commit compares; never nil. An invalid value is logged and left out.
	Released map[bucket.Bucket]ReleasedKey
}

// ErrAssignmentDeleted is the AssignmentError of a snapshot whose
// assignment key was deleted after a valid value had been seen: readers
// keep routing by the last valid assignment (Assignment), and the leading
// monitor writes it back.
var ErrAssignmentDeleted = errors.New("deleted from etcd")

// ErrSettingsDeleted is the SettingsError of a snapshot whose settings key
// was deleted: the last valid settings stay (drains and pins are not lost
// to a slip), and the leading monitor writes them back.
var ErrSettingsDeleted = errors.New("deleted from etcd")

// ReleasedKey is one release acknowledgement and its key's mod revision.
type ReleasedKey struct {
	schema.Released
	ModRevision int64
}

// EmptySnapshot is the state of a cluster with nothing in etcd.
func EmptySnapshot() *Snapshot {
	return &Snapshot{Nodes: map[string]schema.Node{}, NodeErrors: map[string]error{},
		NodeLeases: map[string]clientv3.LeaseID{}, NodeCreateRevisions: map[string]int64{}, Released: map[bucket.Bucket]ReleasedKey{}}
}

// clone copies the maps, so that the copy can be changed and published.
func (s *Snapshot) clone() *Snapshot {
	c := *s
	c.Nodes = maps.Clone(s.Nodes)
	c.NodeErrors = maps.Clone(s.NodeErrors)
	c.NodeLeases = maps.Clone(s.NodeLeases)
	c.NodeCreateRevisions = maps.Clone(s.NodeCreateRevisions)
	c.Released = maps.Clone(s.Released)
	return &c
}

// sameState reports whether two snapshots hold the same cluster state
// (their revisions may differ through changes to other keys).
func (s *Snapshot) sameState(o *Snapshot) bool {
	return s.AssignmentModRevision == o.AssignmentModRevision &&
		errText(s.AssignmentError) == errText(o.AssignmentError) &&
		s.SettingsModRevision == o.SettingsModRevision &&
		errText(s.SettingsError) == errText(o.SettingsError) &&
		maps.Equal(s.Nodes, o.Nodes) &&
		maps.Equal(s.NodeLeases, o.NodeLeases) &&
		maps.Equal(s.NodeCreateRevisions, o.NodeCreateRevisions) &&
		maps.Equal(s.Released, o.Released) &&
		maps.EqualFunc(s.NodeErrors, o.NodeErrors, func(a, b error) bool { return errText(a) == errText(b) })
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Owner returns the registration of the node that owns bucket b under the
// current assignment, and false if the bucket is unassigned or its owner is
// not registered.
func (s *Snapshot) Owner(b bucket.Bucket) (schema.Node, bool) {
	if s.Assignment == nil {
		return schema.Node{}, false
	}
	id := s.Assignment.Owners[b]
	if id == "" {
		return schema.Node{}, false
	}
	n, ok := s.Nodes[id]
	return n, ok
}
