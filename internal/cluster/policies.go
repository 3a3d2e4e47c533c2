package cluster

import (
	"bytes"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// PolicyEntry is one entry of the cluster-wide policy map. Data is opaque to
// this package (the server stores an encoded policy there). Of two entries
// with the same Name, the one with the higher Version wins; at equal
// versions a deletion wins, then the greater Data, so every node settles on
// the same entry whatever order messages arrive in.
type PolicyEntry struct {
	Name    string
	Data    []byte
	Version uint64
	// Deleted marks a tombstone left by DeletePolicy.
	Deleted bool
}

// newer reports whether a should replace b.
func (a PolicyEntry) newer(b PolicyEntry) bool {
	if a.Version != b.Version {
		return a.Version > b.Version
	}
	if a.Deleted != b.Deleted {
		return a.Deleted
	}
	return bytes.Compare(a.Data, b.Data) > 0
}

func (a PolicyEntry) equal(b PolicyEntry) bool {
	return a.Name == b.Name && a.Version == b.Version && a.Deleted == b.Deleted && bytes.Equal(a.Data, b.Data)
}

// policyMap is the versioned map, tombstones included.
type policyMap struct {
	mu sync.Mutex
	m  map[string]PolicyEntry
}

// mergeLocked stores e if it is newer than what the map has and reports
// whether it did. p.mu must be held.
func (p *policyMap) mergeLocked(e PolicyEntry) bool {
	if cur, ok := p.m[e.Name]; ok && !e.newer(cur) {
		return false
	}
	p.m[e.Name] = e
	return true
}

// Message type tags: the first byte of every gossiped user message.
const (
	msgPolicy   byte = 1 // a PolicyEntry
	stateFormat byte = 1 // LocalState: a PolicySnapshot
)

// SetPolicy stores data under name with the given version and spreads it
// to every member. It returns ErrStaleVersion when the node already has a
// newer entry for name (or one that wins a tie); setting the exact entry
// the node already has does nothing and returns nil. OnPolicy fires when
// the entry is stored. It does not block on the network.
func (n *Node) SetPolicy(name string, data []byte, version uint64) error {
	return n.putPolicy(PolicyEntry{Name: name, Data: bytes.Clone(data), Version: version})
}

// DeletePolicy removes name cluster-wide by storing a tombstone with the
// given version, which must be newer than the entry's; see SetPolicy.
// Tombstones are kept for the life of the process.
func (n *Node) DeletePolicy(name string, version uint64) error {
	return n.putPolicy(PolicyEntry{Name: name, Version: version, Deleted: true})
}

func (n *Node) putPolicy(e PolicyEntry) error {
	if n.closed.Load() {
		return ErrClosed
	}
	if !n.applyPolicy(e) {
		if cur, ok := n.policyEntry(e.Name); ok && cur.equal(e) {
			return nil
		}
		return ErrStaleVersion
	}
	return nil
}

// applyPolicy merges e and, when it is new here, re-broadcasts it and
// queues OnPolicy. Re-broadcasting on first sight makes messages spread
// like an epidemic; versions stop the echo.
func (n *Node) applyPolicy(e PolicyEntry) bool {
	// The lock is held while queueing so that broadcasts and callbacks for
	// one policy go out in version order.
	n.policies.mu.Lock()
	defer n.policies.mu.Unlock()
	if !n.policies.mergeLocked(e) {
		return false
	}
	msg, err := proto.Marshal(&limiterv1.PolicyEntry{Name: e.Name, Data: e.Data, Version: e.Version, Deleted: e.Deleted})
	if err != nil {
		n.log.Error("cluster: encode policy broadcast", "policy", e.Name, "err", err)
	} else {
		n.bcast.QueueBroadcast(&policyBroadcast{name: "policy/" + e.Name, msg: append([]byte{msgPolicy}, msg...)})
	}
	n.log.Debug("cluster policy changed", "policy", e.Name, "version", e.Version, "deleted", e.Deleted)
	if cb := n.cfg.OnPolicy; cb != nil {
		n.events.push(func() { cb(e) })
	}
	return true
}

// Policy returns the live entry for name; false when there is none or it
// was deleted.
func (n *Node) Policy(name string) (PolicyEntry, bool) {
	e, ok := n.policyEntry(name)
	if !ok || e.Deleted {
		return PolicyEntry{}, false
	}
	return e, true
}

func (n *Node) policyEntry(name string) (PolicyEntry, bool) {
	n.policies.mu.Lock()
	defer n.policies.mu.Unlock()
	e, ok := n.policies.m[name]
	e.Data = bytes.Clone(e.Data)
	return e, ok
}

// Policies returns the live entries sorted by name (tombstones left out).
func (n *Node) Policies() []PolicyEntry {
	n.policies.mu.Lock()
	out := make([]PolicyEntry, 0, len(n.policies.m))
	for _, e := range n.policies.m {
		if !e.Deleted {
			e.Data = bytes.Clone(e.Data)
			out = append(out, e)
		}
	}
	n.policies.mu.Unlock()
	slices.SortFunc(out, func(a, b PolicyEntry) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// handleMsg handles a user message from memberlist. b is only valid for
// the duration of the call; proto.Unmarshal copies what it keeps.
func (n *Node) handleMsg(b []byte) {
	if len(b) == 0 {
		return
	}
	switch b[0] {
	case msgPolicy:
		var pe limiterv1.PolicyEntry
		if err := proto.Unmarshal(b[1:], &pe); err != nil {
			n.log.Warn("cluster: bad policy broadcast", "err", err)
			return
		}
		n.applyPolicy(fromProto(&pe))
	default:
		n.log.Warn("cluster: unknown gossip message", "type", b[0])
	}
}

func fromProto(pe *limiterv1.PolicyEntry) PolicyEntry {
	return PolicyEntry{Name: pe.GetName(), Data: bytes.Clone(pe.GetData()), Version: pe.GetVersion(), Deleted: pe.GetDeleted()}
}

// policyState encodes the whole map, tombstones included, for push/pull.
func (n *Node) policyState() []byte {
	var snap limiterv1.PolicySnapshot
	n.policies.mu.Lock()
	for _, e := range n.policies.m {
		snap.Entries = append(snap.Entries, &limiterv1.PolicyEntry{Name: e.Name, Data: e.Data, Version: e.Version, Deleted: e.Deleted})
	}
	n.policies.mu.Unlock()
	b, err := proto.Marshal(&snap)
	if err != nil {
		n.log.Error("cluster: encode policy state", "err", err)
		return nil
	}
	return append([]byte{stateFormat}, b...)
}

// mergePolicyState merges a peer's map. Entries that win are applied (and
// re-broadcast) one by one.
func (n *Node) mergePolicyState(buf []byte) {
	if len(buf) == 0 {
		return
	}
	if buf[0] != stateFormat {
		n.log.Warn("cluster: unknown push/pull state format", "format", buf[0])
		return
	}
	var snap limiterv1.PolicySnapshot
	if err := proto.Unmarshal(buf[1:], &snap); err != nil {
		n.log.Warn("cluster: bad push/pull state", "err", err)
		return
	}
	for _, pe := range snap.GetEntries() {
		n.applyPolicy(fromProto(pe))
	}
}

// policyBroadcast is a queued policy message; a newer one for the same
// policy replaces it in the queue.
type policyBroadcast struct {
	name string
	msg  []byte
}

var _ memberlist.NamedBroadcast = (*policyBroadcast)(nil)

func (b *policyBroadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *policyBroadcast) Name() string    { return b.name }
func (b *policyBroadcast) Message() []byte { return b.msg }
func (b *policyBroadcast) Finished()       {}
