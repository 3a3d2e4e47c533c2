package cluster

import (
	"sync"

	"github.com/hashicorp/memberlist"
)

// delegate is the memberlist.Delegate of a Node: node metadata, policy
// broadcasts and push/pull of the policy map. memberlist calls it from its
// own goroutines, so none of its methods may block.
type delegate Node

var _ memberlist.Delegate = (*delegate)(nil)

// NodeMeta returns the encoded PeerMeta.
func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		d.log.Error("cluster node metadata too large", "bytes", len(d.meta), "limit", limit)
		return nil
	}
	return d.meta
}

// NotifyMsg handles a gossiped user message.
func (d *delegate) NotifyMsg(b []byte) { (*Node)(d).handleMsg(b) }

// GetBroadcasts hands queued policy broadcasts to memberlist.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.bcast.GetBroadcasts(overhead, limit)
}

// LocalState returns the whole policy map for a push/pull exchange.
func (d *delegate) LocalState(join bool) []byte { return (*Node)(d).policyState() }

// MergeRemoteState merges a peer's policy map from a push/pull exchange.
func (d *delegate) MergeRemoteState(buf []byte, join bool) { (*Node)(d).mergePolicyState(buf) }

// eventDelegate is the memberlist.EventDelegate of a Node: it keeps the
// routable member set and the ring up to date. memberlist calls it with its
// node lock held, so it must not call back into memberlist or block.
type eventDelegate Node

var _ memberlist.EventDelegate = (*eventDelegate)(nil)

// NotifyJoin adds a member.
func (e *eventDelegate) NotifyJoin(nd *memberlist.Node) { (*Node)(e).upsert(nd, MemberJoined) }

// NotifyUpdate refreshes a member's metadata.
func (e *eventDelegate) NotifyUpdate(nd *memberlist.Node) { (*Node)(e).upsert(nd, MemberUpdated) }

// NotifyLeave removes a member that left or died.
func (e *eventDelegate) NotifyLeave(nd *memberlist.Node) {
	n := (*Node)(e)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lostLocked(nd)
	m, ok := n.members[nd.Name]
	if !ok {
		return
	}
	n.changeLocked(MemberLeft, m, func() { delete(n.members, nd.Name) })
}

func (n *Node) upsert(nd *memberlist.Node, kind ChangeKind) {
	m := memberOf(nd)
	m.Alive = true // routable until memberlist declares it dead
	addr, wire, err := decodeMeta(nd.Meta)
	n.mu.Lock()
	defer n.mu.Unlock()
	if m.Name == n.cfg.NodeName && n.left {
		return
	}
	old, had := n.members[m.Name]
	if err != nil {
		n.log.Warn("cluster member has no usable metadata; it will own no keys", "member", m.Name, "err", err)
		if had {
			n.changeLocked(MemberLeft, old, func() { delete(n.members, m.Name) })
		}
		return
	}
	m.GRPCAddr, m.WireAddr = addr, wire
	if had && old == m {
		return
	}
	if !had {
		kind = MemberJoined
	}
	n.changeLocked(kind, m, func() { n.members[m.Name] = m })
}

// dispatcher runs queued functions one at a time, in order, on its own
// goroutine, so callbacks never run under memberlist's locks.
type dispatcher struct {
	mu      sync.Mutex
	queue   []func()
	stopped bool
	wake    chan struct{}
	done    chan struct{}
}

func newDispatcher() *dispatcher {
	d := &dispatcher{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go d.run()
	return d
}

// push queues f; after stop it drops f.
func (d *dispatcher) push(f func()) {
	d.mu.Lock()
	if !d.stopped {
		d.queue = append(d.queue, f)
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dispatcher) run() {
	defer close(d.done)
	for range d.wake {
		for {
			d.mu.Lock()
			if len(d.queue) == 0 {
				stopped := d.stopped
				d.mu.Unlock()
				if stopped {
					return
				}
				break
			}
			f := d.queue[0]
			d.queue[0] = nil
			d.queue = d.queue[1:]
			d.mu.Unlock()
			f()
		}
	}
}

// stop drops what is still queued and waits for the running function, if
// any, to return. It must not be called from a queued function.
func (d *dispatcher) stop() {
	d.mu.Lock()
	d.stopped = true
	d.queue = nil
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	<-d.done
}
