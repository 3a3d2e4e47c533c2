package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
)

// Config configures a Node. Build one with DefaultConfig and change the
// fields you need; New takes it by value and never writes to it.
type Config struct {
	// NodeName is this member's name; it must be unique in the cluster.
	// Required.
	NodeName string

	// GossipAddr is the host:port memberlist binds (TCP and UDP). Port 0
	// picks a free port; Node.GossipAddr reports the one chosen. Default
	// "127.0.0.1:7946".
	GossipAddr string

	// AdvertiseAddr is the host:port other members use to reach this node's
	// gossip listener, when it differs from GossipAddr (NAT, containers).
	// A port of 0 or no port means "the bound gossip port". Empty means the
	// bound address. Default empty.
	AdvertiseAddr string

	// GRPCAddr is the address of this node's gRPC server (Limiter and Peer),
	// gossiped in the node metadata. Anything grpc.NewClient accepts, such
	// as "127.0.0.1:8081" or "unix:///run/limiterd.sock". Required.
	GRPCAddr string

	// Join lists gossip addresses (host:port) of existing members that
	// Node.Join contacts when called without arguments. Default empty.
	Join []string

	// GossipKey, when set, encrypts gossip with AES; it must be 16, 24 or
	// 32 bytes. Every member needs the same key. Default nil (plain text).
	GossipKey []byte

	// Replicas is how many members hold each key: the owner plus
	// Replicas-1 replicas. Default 2; must be at least 1.
	Replicas int

	// BatchSize is the most forwarded calls sent to one peer in one RPC.
	// Default 64; must be at least 1 (1 turns batching off).
	BatchSize int

	// BatchWait bounds how long a forwarded call waits to share an RPC. A
	// call to a peer with no batch in flight goes at once; otherwise calls
	// gather until BatchSize of them are waiting, the batch in flight
	// returns, or BatchWait has passed since the first of them. Zero sends
	// every call at once. Default 500µs: the batch in flight mostly
	// returns sooner (the wait is then what it was); at 25k forwarded
	// calls a second 200µs cut ~1 batch in 5 short and cost ~4% more CPU
	// across the cluster (a timer goroutine and a smaller batch each).
	BatchWait time.Duration

	// ForwardTimeout bounds a forwarded call whose context has no deadline.
	// Default 2s; must be positive.
	ForwardTimeout time.Duration

	// DialOptions are added to every peer connection's defaults (plain-text
	// transport credentials and a reconnect backoff capped at 250ms, so a
	// restarted peer is found again quickly); set it to add TLS credentials
	// (they replace the plain-text ones) or per-RPC credentials. Default nil.
	DialOptions []grpc.DialOption

	// WireAddr is the host:port of this node's peer wire listener (see
	// wire.go): forwarded Allow batches and replica updates travel over it,
	// one TCP connection per pair of nodes, for a fraction of what a gRPC
	// call costs. Port 0 picks a free port; the bound address is gossiped.
	// Empty serves them over gRPC only. Peers that gossip no wire address
	// are reached over gRPC. Default empty.
	WireAddr string
	// WireTLS, when set, secures the wire listener (use the gRPC port's
	// TLS config: its certificate, and client CAs for mutual TLS). Default
	// nil: plain text.
	WireTLS *tls.Config
	// WireDialTLS, when set, is used to dial peers' wire listeners (the
	// CA that signed them, and a client certificate for mutual TLS).
	// Default nil: plain text.
	WireDialTLS *tls.Config
	// WireSecret is presented to peers' wire listeners. Default empty.
	WireSecret string
	// WireAuth, when set, checks the secret a dialing peer presents; an
	// error refuses the connection. Default nil: every peer is accepted.
	WireAuth func(secret string) error

	// GossipInterval, ProbeInterval, ProbeTimeout and PushPullInterval tune
	// memberlist (see memberlist.Config). Defaults are memberlist's LAN
	// profile: 200ms, 1s, 500ms and 30s. Tests shorten them.
	GossipInterval   time.Duration
	ProbeInterval    time.Duration
	ProbeTimeout     time.Duration
	PushPullInterval time.Duration

	// ReconnectInterval is how often a node tries to join members that
	// died (and its Join addresses while it is alone), so the cluster heals
	// after a partition. Default 5s; must be positive.
	ReconnectInterval time.Duration
	// ReconnectTimeout is how long a dead member is tried. Default 24h.
	ReconnectTimeout time.Duration

	// Hash scores a member for a key in rendezvous hashing. Default nil
	// uses a fast 64-bit hash; tests pass a trivial one.
	Hash HashFunc

	// OnChange, when set, is called after every membership change with the
	// rings before and after it. Calls come one at a time, in order, from a
	// goroutine of the Node; a slow callback delays later ones but never
	// blocks gossip. Default nil.
	OnChange func(Change)

	// OnPolicy, when set, is called whenever the cluster-wide policy map
	// changes on this node, whether by SetPolicy/DeletePolicy or by
	// gossip; same goroutine and ordering as OnChange. Default nil.
	OnPolicy func(PolicyEntry)

	// OnBatch, when set, is told the size of every batch of forwarded
	// Allow calls sent (for metrics). It must not block. Default nil.
	OnBatch func(n int)

	// OnWire, when set, is told of every peer wire connection made, dial
	// that failed and connection that broke (for metrics). It must not
	// block. Default nil.
	OnWire func(WireEvent)

	// Logger receives the node's logs, memberlist's included (at debug
	// level, with memberlist's own "[WARN]" style prefixes). Default
	// slog.Default().
	Logger *slog.Logger

	// Faults, for tests only, injects network partitions (see Faults):
	// share one *Faults among the Nodes of a test. New registers this
	// node's addresses with it and does not copy it. Default nil: no fault
	// injection and no cost.
	Faults *Faults
}

// DefaultConfig returns a Config with every optional field set to its
// default. NodeName and GRPCAddr are left empty.
func DefaultConfig() Config {
	return Config{
		GossipAddr:        "127.0.0.1:7946",
		Replicas:          2,
		BatchSize:         64,
		BatchWait:         500 * time.Microsecond,
		ForwardTimeout:    2 * time.Second,
		GossipInterval:    200 * time.Millisecond,
		ProbeInterval:     time.Second,
		ProbeTimeout:      500 * time.Millisecond,
		PushPullInterval:  30 * time.Second,
		ReconnectInterval: 5 * time.Second,
		ReconnectTimeout:  24 * time.Hour,
		Logger:            slog.Default(),
	}
}

// Validate reports the first problem with c, or nil.
func (c Config) Validate() error {
	switch {
	case c.NodeName == "":
		return errors.New("cluster: NodeName is required")
	case c.GRPCAddr == "":
		return errors.New("cluster: GRPCAddr is required")
	case len(c.GRPCAddr) > 400:
		return errors.New("cluster: GRPCAddr is longer than 400 bytes")
	case c.Replicas < 1:
		return fmt.Errorf("cluster: Replicas is %d, want at least 1", c.Replicas)
	case c.BatchSize < 1:
		return fmt.Errorf("cluster: BatchSize is %d, want at least 1", c.BatchSize)
	case c.BatchWait < 0:
		return fmt.Errorf("cluster: BatchWait is %v, want zero or more", c.BatchWait)
	case c.ForwardTimeout <= 0:
		return fmt.Errorf("cluster: ForwardTimeout is %v, want more than zero", c.ForwardTimeout)
	case c.GossipInterval <= 0, c.ProbeInterval <= 0, c.ProbeTimeout <= 0, c.PushPullInterval <= 0:
		return errors.New("cluster: GossipInterval, ProbeInterval, ProbeTimeout and PushPullInterval must be positive")
	case c.ReconnectInterval <= 0 || c.ReconnectTimeout <= 0:
		return errors.New("cluster: ReconnectInterval and ReconnectTimeout must be positive")
	case c.Logger == nil:
		return errors.New("cluster: Logger is nil")
	}
	switch len(c.GossipKey) {
	case 0, 16, 24, 32:
	default:
		return fmt.Errorf("cluster: GossipKey is %d bytes, want 16, 24 or 32", len(c.GossipKey))
	}
	if _, _, err := splitHostPort(c.GossipAddr); err != nil {
		return fmt.Errorf("cluster: GossipAddr: %w", err)
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := splitHostPort(c.AdvertiseAddr); err != nil {
			return fmt.Errorf("cluster: AdvertiseAddr: %w", err)
		}
	}
	if c.WireAddr != "" {
		if _, _, err := net.SplitHostPort(c.WireAddr); err != nil {
			return fmt.Errorf("cluster: WireAddr %q: %w", c.WireAddr, err)
		}
	}
	return nil
}

// splitHostPort splits "host:port" or a bare "host" (port 0) and checks that
// host is an IP address, which memberlist needs for binding and advertising.
func splitHostPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		host, portStr = addr, "0"
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q: host must be an IP address", addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: bad port", addr)
	}
	return host, port, nil
}
