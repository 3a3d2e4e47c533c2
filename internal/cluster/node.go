package cluster

import (
	"context"
	"errors"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// Member is one node of the cluster as this node sees it.
type Member struct {
	// Name is the member's unique node name.
	Name string
	// GossipAddr is the host:port the member gossips on.
	GossipAddr string
	// GRPCAddr is where the member serves Limiter and Peer; empty when its
	// metadata could not be read, and such members own no keys.
	GRPCAddr string
	// WireAddr is where the member serves the peer wire; empty when it
	// takes peer calls over gRPC only.
	WireAddr string
	// Alive is false while memberlist suspects the member has failed. Rings
	// only hold members that are alive or suspected.
	Alive bool
}

// ChangeKind says what happened to a member.
type ChangeKind int

// Kinds of membership change.
const (
	// MemberJoined: a member joined (or this node started).
	MemberJoined ChangeKind = iota + 1
	// MemberLeft: a member left gracefully or was declared dead, or this
	// node called Leave.
	MemberLeft
	// MemberUpdated: a member's metadata, such as its gRPC address, changed.
	MemberUpdated
)

// String returns "joined", "left" or "updated".
func (k ChangeKind) String() string {
	switch k {
	case MemberJoined:
		return "joined"
	case MemberLeft:
		return "left"
	case MemberUpdated:
		return "updated"
	}
	return "ChangeKind(" + strconv.Itoa(int(k)) + ")"
}

// Change describes one membership change, for Config.OnChange. Before and
// After are the rings just before and after it: a key k moved when
// Before.Owner(k) and After.Owner(k) differ, which is what hand-off needs.
type Change struct {
	// Kind says what happened.
	Kind ChangeKind
	// Member is the member it happened to (possibly this node).
	Member Member
	// Before is the ring before the change; never nil.
	Before *Ring
	// After is the ring after the change, the one Owner now uses; never nil.
	After *Ring
}

// metaVersion is the PeerMeta format this code writes.
const metaVersion = 1

// Node is this process's membership in the cluster: it gossips with the
// other members, knows which member owns each key, forwards calls to
// owners and spreads the policy map.
//
// A Node is safe for concurrent use. Create one with New; stop it with
// Leave (optional, graceful) and then Shutdown.
type Node struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	meta []byte

	mu      sync.Mutex
	members map[string]Member // routable members (alive or suspect, with meta)
	left    bool
	ring    atomic.Pointer[Ring]
	nodes   atomic.Int32 // len(members), for the broadcast queue

	policies policyMap
	bcast    *memberlist.TransmitLimitedQueue

	fw     *forwarder
	wire   *wireServer // nil without Config.WireAddr
	events *dispatcher

	life   sync.Mutex // serialises Leave and Shutdown; memberlist panics on Leave after Shutdown
	closed atomic.Bool

	lost          map[string]lostMember // members that died, to rejoin (reconnect.go); under mu
	reconnectStop chan struct{}
	reconnectDone chan struct{}
}

// New validates cfg, binds the gossip listener and starts memberlist. The
// node is alone until Join is called: start serving gRPC (with
// RegisterPeerService) first, so that members that learn about this node
// can reach it at once.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Join = slices.Clone(cfg.Join)
	cfg.GossipKey = slices.Clone(cfg.GossipKey)
	cfg.DialOptions = slices.Clone(cfg.DialOptions)

	log := cfg.Logger.With("node", cfg.NodeName)
	var wire *wireServer
	if cfg.WireAddr != "" {
		var err error
		if wire, err = listenWire(cfg.WireAddr, cfg, log.With("component", "wire")); err != nil {
			return nil, err
		}
		cfg.WireAddr = wire.Addr()
	}
	meta, err := proto.Marshal(&limiterv1.PeerMeta{Version: metaVersion, GrpcAddr: cfg.GRPCAddr, WireAddr: cfg.WireAddr})
	if err != nil {
		wire.close()
		return nil, fmt.Errorf("cluster: encode node metadata: %w", err)
	}
	n := &Node{
		wire:          wire,
		cfg:           cfg,
		log:           log,
		meta:          meta,
		members:       make(map[string]Member),
		lost:          make(map[string]lostMember),
		reconnectStop: make(chan struct{}),
		reconnectDone: make(chan struct{}),
		events:        newDispatcher(),
	}
	n.ring.Store(NewRing(cfg.NodeName, nil, cfg.Hash))
	n.policies.m = make(map[string]PolicyEntry)
	n.bcast = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(n.nodes.Load()) },
		RetransmitMult: 4,
	}
	n.fw = newForwarder(cfg, log)

	mlLog := slog.NewLogLogger(log.With("component", "memberlist").Handler(), slog.LevelDebug)
	host, port, _ := splitHostPort(cfg.GossipAddr) // checked by Validate
	nt, err := newTransport(host, port, mlLog)
	if err != nil {
		n.events.stop()
		wire.close()
		return nil, fmt.Errorf("cluster: bind gossip %s: %w", cfg.GossipAddr, err)
	}
	bound := nt.GetAutoBindPort()
	var tr memberlist.NodeAwareTransport = nt
	if cfg.Faults != nil { // test-only fault injection (fault.go); nil in production
		cfg.Faults.register(cfg.NodeName, net.JoinHostPort(host, strconv.Itoa(bound)), cfg.GRPCAddr)
		tr = cfg.Faults.wrapTransport(nt, cfg.NodeName)
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.Transport = tr
	mc.BindAddr = host
	mc.BindPort = bound // also the default port for Join addresses without one
	mc.AdvertisePort = bound
	if cfg.AdvertiseAddr != "" {
		ahost, aport, _ := splitHostPort(cfg.AdvertiseAddr)
		mc.AdvertiseAddr = ahost
		if aport != 0 {
			mc.AdvertisePort = aport
		}
	}
	mc.SecretKey = cfg.GossipKey
	mc.GossipInterval = cfg.GossipInterval
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.PushPullInterval = cfg.PushPullInterval
	mc.Logger = mlLog
	// Let a crashed node come back under its name at a new address (port 0
	// restarts) without waiting for the others to forget it.
	mc.DeadNodeReclaimTime = 5 * time.Second
	mc.Delegate = (*delegate)(n)
	mc.Events = (*eventDelegate)(n)

	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = tr.Shutdown()
		n.events.stop()
		wire.close()
		return nil, fmt.Errorf("cluster: start memberlist: %w", err)
	}
	n.ml = ml
	go n.reconnectLoop()
	if cfg.Faults != nil { // test-only: the advertised address too, when it differs
		cfg.Faults.register(cfg.NodeName, n.GossipAddr())
	}
	log.Debug("cluster node started", "gossip", n.GossipAddr(), "grpc", cfg.GRPCAddr)
	return n, nil
}

// newTransport binds memberlist's TCP and UDP listeners. With port 0 the
// kernel picks the TCP port and the UDP bind on the same number can lose a
// race, so it retries like memberlist does.
func newTransport(host string, port int, log *stdlog.Logger) (*memberlist.NetTransport, error) {
	tries := 1
	if port == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{host},
			BindPort:  port,
			Logger:    log,
		})
		if err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// GossipAddr returns the host:port other members reach this node's gossip
// listener at, with the real port when Config.GossipAddr had port 0. Give
// it to other nodes' Join.
func (n *Node) GossipAddr() string {
	ln := n.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}

// Name returns this node's name.
func (n *Node) Name() string { return n.cfg.NodeName }

// Self returns this node as a Member.
func (n *Node) Self() Member {
	return Member{Name: n.cfg.NodeName, GossipAddr: n.GossipAddr(), GRPCAddr: n.cfg.GRPCAddr, WireAddr: n.cfg.WireAddr, Alive: true}
}

// Join contacts the given gossip addresses (Config.Join when none are
// given) and merges their view of the cluster into this node's. It returns
// how many it reached; an error only when it reached none. Join blocks
// until memberlist is done or ctx ends; in the latter case memberlist
// finishes in the background.
func (n *Node) Join(ctx context.Context, addrs ...string) (int, error) {
	if n.closed.Load() {
		return 0, ErrClosed
	}
	if len(addrs) == 0 {
		addrs = n.cfg.Join
	}
	if len(addrs) == 0 {
		return 0, nil
	}
	type joined struct {
		n   int
		err error
	}
	done := make(chan joined, 1)
	go func() {
		k, err := n.ml.Join(addrs)
		done <- joined{k, err}
	}()
	select {
	case j := <-done:
		if j.err != nil && j.n == 0 {
			return 0, fmt.Errorf("cluster: join %s: %w", strings.Join(addrs, ","), j.err)
		}
		return j.n, nil
	case <-ctx.Done():
		return 0, ctxError("cluster: join", ctx.Err())
	}
}

// Leave tells the cluster that this node is going away and waits (until
// ctx ends, at most 5s without a deadline) for the message to go out. After
// Leave this node owns no keys: Owner and Replicas answer as the remaining
// members will, which is what the server needs to hand its keys over
// (OnChange fires with Kind MemberLeft for this node). The node keeps
// gossiping and serving until Shutdown. Calling Leave twice is harmless.
func (n *Node) Leave(ctx context.Context) error {
	n.life.Lock()
	defer n.life.Unlock()
	if n.closed.Load() {
		return ErrClosed
	}
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	err := n.ml.Leave(timeout)
	n.removeSelf()
	n.stopReconnect()
	if err != nil {
		return fmt.Errorf("cluster: leave: %w", err)
	}
	return nil
}

// stopReconnect ends the reconnect loop and waits for it; safe to call
// twice.
func (n *Node) stopReconnect() {
	select {
	case <-n.reconnectStop:
	default:
		close(n.reconnectStop)
	}
	<-n.reconnectDone
}

// removeSelf takes this node out of its own ring after Leave, in case
// memberlist did not report it.
func (n *Node) removeSelf() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.left = true
	if m, ok := n.members[n.cfg.NodeName]; ok {
		n.changeLocked(MemberLeft, m, func() { delete(n.members, m.Name) })
	}
}

// Shutdown stops gossip without saying goodbye (others will notice the
// node failed; call Leave first for a graceful exit), closes the peer
// connections and stops the callbacks. Forwards in flight fail with
// ErrOwnerUnavailable, later calls with ErrClosed. It is safe to call more
// than once, but not from an OnChange or OnPolicy callback.
func (n *Node) Shutdown() error {
	n.life.Lock()
	defer n.life.Unlock()
	if n.closed.Swap(true) {
		return nil
	}
	n.stopReconnect()
	err := n.ml.Shutdown()
	n.fw.close()
	n.wire.close()
	n.events.stop()
	if err != nil {
		return fmt.Errorf("cluster: shutdown: %w", err)
	}
	return nil
}

// Members returns every member memberlist knows that has not left or died,
// this node included, with Alive false for suspected ones.
func (n *Node) Members() []Member {
	nodes := n.ml.Members()
	out := make([]Member, 0, len(nodes))
	for _, nd := range nodes {
		m := memberOf(nd)
		m.GRPCAddr, m.WireAddr, _ = decodeMeta(nd.Meta)
		out = append(out, m)
	}
	return out
}

// Ring returns the current ring: the routable members, this node included
// unless it has left. The ring is an immutable snapshot.
func (n *Node) Ring() *Ring { return n.ring.Load() }

// Owner returns the member that owns key and whether it is this node. With
// no routable members (only after Leave) it returns the zero Member, for
// which Forward returns ErrNoMembers.
func (n *Node) Owner(key string) (m Member, self bool) { return n.ring.Load().Owner(key) }

// Replicas returns up to r members for key in hash order, owner first;
// see Ring.Replicas. Config.Replicas is the usual r.
func (n *Node) Replicas(key string, r int) []Member { return n.ring.Load().Replicas(key, r) }

// ReplicaCount returns Config.Replicas.
func (n *Node) ReplicaCount() int { return n.cfg.Replicas }

// memberOf converts a memberlist node, without its metadata.
func memberOf(nd *memberlist.Node) Member {
	return Member{
		Name:       nd.Name,
		GossipAddr: net.JoinHostPort(nd.Addr.String(), strconv.Itoa(int(nd.Port))),
		Alive:      nd.State == memberlist.StateAlive,
	}
}

// decodeMeta returns the gRPC and peer wire addresses in a node's
// metadata; the wire address may be empty.
func decodeMeta(b []byte) (grpcAddr, wireAddr string, err error) {
	var pm limiterv1.PeerMeta
	if err := proto.Unmarshal(b, &pm); err != nil {
		return "", "", fmt.Errorf("decode node metadata: %w", err)
	}
	if pm.GetVersion() < 1 || pm.GetGrpcAddr() == "" {
		return "", "", errors.New("node metadata has no gRPC address")
	}
	return pm.GetGrpcAddr(), pm.GetWireAddr(), nil
}

// changeLocked applies a membership change with n.mu held: apply edits
// n.members, then the ring is rebuilt and OnChange queued.
func (n *Node) changeLocked(kind ChangeKind, m Member, apply func()) {
	before := n.ring.Load()
	apply()
	ms := make([]Member, 0, len(n.members))
	for _, x := range n.members {
		ms = append(ms, x)
	}
	after := NewRing(n.cfg.NodeName, ms, n.cfg.Hash)
	n.ring.Store(after)
	n.nodes.Store(int32(len(n.members)))
	n.log.Debug("cluster membership changed", "change", kind.String(), "member", m.Name, "members", after.Len())
	if kind == MemberLeft {
		name := m.Name
		n.events.push(func() { n.fw.closePeer(name) })
	}
	if cb := n.cfg.OnChange; cb != nil {
		c := Change{Kind: kind, Member: m, Before: before, After: after}
		n.events.push(func() { cb(c) })
	}
}
