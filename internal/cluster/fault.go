package cluster

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// errPartitioned is what a dial across a partition returns.
var errPartitioned = errors.New("cluster: fault injection: partitioned")

// Faults injects network partitions between the Nodes that share it, for
// tests that run several Nodes in one process. Set the same *Faults in
// every Node's Config.Faults; production leaves it nil and pays nothing.
//
// While a partition is in force, between nodes on different sides:
//
//   - gossip packets are dropped: on send (WriteTo reports success, as UDP
//     would) and on receipt (packets whose source address is across the
//     cut are discarded);
//   - gossip streams (push/pull, TCP fallback probes) cannot be opened: the
//     dial fails at once, like a refused connection. Incoming streams are
//     not filtered, since their source port says nothing about the sender;
//     the sender's own check stops them, which is why every node must use
//     the same Faults;
//   - peer gRPC calls (Forward, ForwardRelease, Replicate, PushState, Fetch,
//     Key) fail fast with ErrOwnerUnavailable. The check runs on every call
//     in the sender, before the call touches its connection, so connections
//     opened before the partition are cut too. A batch already sent when
//     Partition is called still completes.
//
// A Faults is safe for concurrent use; the zero value has no partition and
// is ready to use.
type Faults struct {
	mu     sync.RWMutex
	names  map[string]string // gossip or gRPC address -> node name
	groups map[string]int    // node name (or unknown address) -> side; nil when healed
	calls  map[string]bool   // node names whose peer calls are cut (CutCalls)
}

// CutCalls makes every peer call (as listed above) to or from the named
// nodes fail, while gossip goes on: the members stay in each other's rings
// but cannot forward, replicate, push or fetch. It replaces any earlier
// CutCalls; HealCalls ends it.
func (f *Faults) CutCalls(names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = make(map[string]bool, len(names))
	for _, n := range names {
		f.calls[f.resolveLocked(n)] = true
	}
}

// HealCalls ends CutCalls.
func (f *Faults) HealCalls() {
	f.mu.Lock()
	f.calls = nil
	f.mu.Unlock()
}

// callCut reports whether a peer call from a to b fails: they are across a
// partition, or either is named in CutCalls.
func (f *Faults) callCut(a, b string) bool {
	if f.Cut(a, b) {
		return true
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.calls[f.resolveLocked(a)] || f.calls[f.resolveLocked(b)]
}

// Partition cuts the cluster into groups: nodes in different groups cannot
// reach each other, nodes in the same group can. Each group lists node
// names or addresses (gossip or gRPC) of Nodes created with this Faults;
// an address of no such Node is matched as given against the addresses the
// transport sees. A node named in no group is not cut off from anyone.
// Partition replaces any earlier partition.
func (f *Faults) Partition(groups ...[]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.groups = make(map[string]int)
	for i, g := range groups {
		for _, id := range g {
			f.groups[f.resolveLocked(id)] = i
		}
	}
}

// Heal ends the partition: every node can reach every other again. It
// does not rejoin the sides: memberlist only goes back to members it has
// declared dead if a gossip message happens to reach them while dead
// messages are still being retransmitted (a second or two after failure
// detection), so after a longer partition call Node.Join.
func (f *Faults) Heal() {
	f.mu.Lock()
	f.groups = nil
	f.mu.Unlock()
}

// Cut reports whether a and b (node names or addresses) are on different
// sides of the current partition.
func (f *Faults) Cut(a, b string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.groups == nil {
		return false
	}
	ga, oka := f.groups[f.resolveLocked(a)]
	gb, okb := f.groups[f.resolveLocked(b)]
	return oka && okb && ga != gb
}

// register records the addresses a node is known by, so that Partition and
// the transport can name it either way.
func (f *Faults) register(name string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.names == nil {
		f.names = make(map[string]string)
	}
	for _, a := range addrs {
		if a != "" {
			f.names[a] = name
		}
	}
}

// resolveLocked maps an address to its node's name; anything else is
// returned unchanged. f.mu must be held.
func (f *Faults) resolveLocked(id string) string {
	if name, ok := f.names[id]; ok {
		return name
	}
	return id
}

// faultTransport wraps memberlist's transport and drops what crosses the
// partition of f. self is this node's name.
type faultTransport struct {
	memberlist.NodeAwareTransport

	f       *Faults
	self    string
	packets chan *memberlist.Packet
	done    chan struct{}
	stop    sync.Once
	wg      sync.WaitGroup
}

// wrapTransport returns t filtered by f for the node named self.
func (f *Faults) wrapTransport(t memberlist.NodeAwareTransport, self string) *faultTransport {
	ft := &faultTransport{
		NodeAwareTransport: t,
		f:                  f,
		self:               self,
		packets:            make(chan *memberlist.Packet),
		done:               make(chan struct{}),
	}
	ft.wg.Add(1)
	go ft.filterPackets()
	return ft
}

var _ memberlist.NodeAwareTransport = (*faultTransport)(nil)

// filterPackets passes on the packets that do not cross the partition.
func (t *faultTransport) filterPackets() {
	defer t.wg.Done()
	in := t.NodeAwareTransport.PacketCh()
	for {
		select {
		case p := <-in:
			if p.From != nil && t.f.Cut(t.self, p.From.String()) {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.done:
				return
			}
		case <-t.done:
			return
		}
	}
}

// PacketCh implements memberlist.Transport.
func (t *faultTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// WriteTo implements memberlist.Transport.
func (t *faultTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.f.Cut(t.self, addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *faultTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.cut(a) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, a)
}

// DialTimeout implements memberlist.Transport.
func (t *faultTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.f.Cut(t.self, addr) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errPartitioned}
	}
	return t.NodeAwareTransport.DialTimeout(addr, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *faultTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.cut(a) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errPartitioned}
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, timeout)
}

// cut checks a memberlist address by node name when it has one, else by
// address.
func (t *faultTransport) cut(a memberlist.Address) bool {
	if a.Name != "" && t.f.Cut(t.self, a.Name) {
		return true
	}
	return t.f.Cut(t.self, a.Addr)
}

// Shutdown implements memberlist.Transport: it stops the wrapped transport,
// then the packet filter.
func (t *faultTransport) Shutdown() error {
	err := t.NodeAwareTransport.Shutdown()
	t.stop.Do(func() { close(t.done) })
	t.wg.Wait()
	return err
}
