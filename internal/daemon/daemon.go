// Package daemon assembles a limiterd node from a Config: the store, the
// limiter, the gRPC and HTTP listeners. cmd/limiterd only turns flags into a
// Config; tests start several daemons in one process.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/limiterd/limiterd/internal/auth"
	"github.com/limiterd/limiterd/internal/cluster"
	"github.com/limiterd/limiterd/internal/envoy"
	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/metrics"
	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/rawio"
	"github.com/limiterd/limiterd/internal/server"
	"github.com/limiterd/limiterd/internal/store"
)

// DBFile is the name of the bbolt file inside the data directory.
const DBFile = "limiterd.db"

// Config is everything a node needs. Zero fields take DefaultConfig's values
// only where DefaultConfig says so.
type Config struct {
	// GRPCAddr is the gRPC listener: host:port, or unix:///path/to.sock.
	// Default 127.0.0.1:8081; port 0 picks a free port.
	GRPCAddr string
	// HTTPAddr serves /metrics, /healthz and /readyz. Default 127.0.0.1:8080;
	// empty disables it.
	HTTPAddr string
	// DataDir holds the bbolt file. Default ./data.
	DataDir string
	// Policies are the policies at start; "default" is added when missing.
	Policies []policy.Policy
	// SyncAlways answers a call only after its hits are durable.
	SyncAlways bool
	// FlushInterval is the write-behind interval. Default 100ms.
	FlushInterval time.Duration
	// DrainTimeout bounds the wait for in-flight calls at Close. Default 10s.
	DrainTimeout time.Duration
	// MaxKeys is the in-memory budget in keys; beyond it, keys are paged
	// out to bbolt and read back when used. 0 means no budget.
	MaxKeys int
	// MaxInFlight bounds the calls answered at once (UNAVAILABLE beyond).
	// 0 means the server's default (8192).
	MaxInFlight int
	// GCPercent and MemoryLimitMB tune the Go collector. The daemon does
	// not apply them (they are process-wide); cmd/limiterd does.
	GCPercent     int
	MemoryLimitMB int64
	// Pprof serves /debug/pprof/ on the HTTP listener.
	Pprof bool
	// NodeName names this member of the cluster; unique. Default the host
	// name.
	NodeName string
	// GossipAddr is memberlist's bind address; empty runs a single node
	// with no gossip. Default 127.0.0.1:7946; port 0 picks a free port.
	GossipAddr string
	// AdvertiseAddr is the gossip address peers use, when it differs.
	AdvertiseAddr string
	// Join lists gossip addresses of existing members.
	Join []string
	// GossipKey encrypts gossip (16, 24 or 32 bytes); nil sends it in clear.
	GossipKey []byte
	// Replicas is how many nodes hold each key (owner included). Default 2.
	Replicas int
	// ReplicationInterval is how often owners send changed keys to their
	// replicas. Default 10ms.
	ReplicationInterval time.Duration
	// Envoy maps Envoy rate limit descriptors to policies (the envoy:
	// section of the config file). Zero serves the Envoy API with no domain.
	Envoy envoy.Config
	// Auth checks bearer tokens on every call; nil turns auth off.
	Auth *auth.Authenticator
	// TLS secures the gRPC port (with ClientCAs set: mutual TLS); nil serves
	// plain text.
	TLS *tls.Config
	// PeerTLS is used to dial other nodes; nil dials in plain text.
	PeerTLS *tls.Config
	// PeerSecret is presented to other nodes' Peer service when auth is on.
	PeerSecret string
	// PeerAddr is the host:port of the peer wire listener, which carries
	// forwarded Allow batches and replica updates between nodes (see
	// internal/cluster's WireAddr). Empty listens on the gRPC listener's
	// host at a port the OS picks; "off" sends them over gRPC. Default
	// empty.
	PeerAddr string
	// Cluster tunes memberlist and forwarding; nil takes cluster's defaults.
	// Tests shorten its timings.
	Cluster func(*cluster.Config)
	// Now reports the time. Default time.Now.
	Now func() time.Time
	// Logger is the structured log. Default slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the embedded defaults of `go run ./cmd/limiterd`.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:            "127.0.0.1:8081",
		HTTPAddr:            "127.0.0.1:8080",
		DataDir:             "./data",
		Policies:            []policy.Policy{policy.Default()},
		FlushInterval:       100 * time.Millisecond,
		DrainTimeout:        10 * time.Second,
		NodeName:            hostname(),
		GossipAddr:          "127.0.0.1:7946",
		Replicas:            2,
		ReplicationInterval: 10 * time.Millisecond,
		Now:                 time.Now,
		Logger:              slog.Default(),
	}
}

// Main is one running node. Run starts it, Close stops it gracefully.
type Main struct {
	cfg Config

	db      *store.DB
	lim     *limiter.Limiter
	svc     *server.Service
	admin   *server.Admin
	metrics *metrics.Metrics
	node    *cluster.Node
	glue    *server.Cluster
	grpc    *grpc.Server
	grpcLn  net.Listener
	httpLn  net.Listener
	http    *http.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closeMu sync.Mutex
	closed  bool
}

// New returns a Main for cfg; nothing is opened until Run.
func New(cfg Config) *Main { return &Main{cfg: cfg} }

// Run opens the store, loads state, binds the listeners and starts serving
// in the background. It returns once the node answers calls, or with the
// first error (a corrupt store file, a port in use, ...), having released
// whatever it had opened.
func (m *Main) Run(ctx context.Context) (err error) {
	cfg := m.cfg
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	scfg := store.DefaultConfig()
	scfg.Path = filepath.Join(cfg.DataDir, DBFile)
	if m.db, err = store.Open(scfg); err != nil {
		return err
	}
	lcfg := limiter.DefaultConfig()
	lcfg.Policies = cfg.Policies
	lcfg.Store = m.db
	lcfg.SyncAlways = cfg.SyncAlways
	lcfg.FlushInterval = cfg.FlushInterval
	lcfg.Now = cfg.Now
	lcfg.Logger = cfg.Logger
	m.metrics = metrics.New(func() float64 { return float64(m.lim.Keys()) })
	lcfg.OnFlush = m.metrics.Flush
	m.metrics.Journal(m.db.JournalStats)
	lcfg.Replicate = cfg.GossipAddr != ""
	lcfg.MaxKeys = cfg.MaxKeys
	if m.lim, err = limiter.New(lcfg); err != nil {
		return err
	}
	scv := server.DefaultConfig()
	scv.Decider = m.lim
	scv.Now = cfg.Now
	scv.Logger = cfg.Logger
	scv.Metrics = m.metrics
	if cfg.Auth != nil {
		scv.UnaryInterceptors = append(scv.UnaryInterceptors, cfg.Auth.UnaryInterceptor())
		scv.ServerOptions = append(scv.ServerOptions, grpc.ChainStreamInterceptor(cfg.Auth.StreamInterceptor()))
	}
	if cfg.TLS != nil {
		scv.ServerOptions = append(scv.ServerOptions, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	if cfg.MaxInFlight != 0 {
		scv.MaxInFlight = cfg.MaxInFlight
	}
	if m.svc, err = server.New(scv); err != nil {
		return err
	}
	m.grpc = m.svc.NewGRPCServer()
	if m.admin, err = server.NewAdmin(server.AdminConfig{Backend: m.lim}); err != nil {
		return err
	}
	m.admin.Register(m.grpc)
	if err := cfg.Envoy.ValidatePolicies(m.lim.Policy); err != nil {
		return err
	}
	envoy.New(cfg.Envoy, m.svc.Decider(), cfg.Now, cfg.Logger).Register(m.grpc)
	if m.grpcLn, err = listenRaw(cfg.GRPCAddr); err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	if cfg.GossipAddr != "" {
		if err := m.startCluster(); err != nil {
			return err
		}
	}
	if cfg.HTTPAddr != "" {
		if m.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return fmt.Errorf("http listener: %w", err)
		}
		m.http = &http.Server{Handler: m.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.lim.Run(runCtx) }()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := m.grpc.Serve(m.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			cfg.Logger.Error("grpc serve", "err", err)
		}
	}()
	if m.http != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := m.http.Serve(m.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cfg.Logger.Error("http serve", "err", err)
			}
		}()
	}
	if m.node != nil {
		if len(cfg.Join) == 0 {
			m.glue.Alone()
		} else {
			if _, err := m.node.Join(ctx); err == nil {
				m.glue.Joined(ctx)
			} else {
				m.glue.Alone()
				// Serve alone meanwhile: in a StatefulSet the other members
				// may not be up yet. The node's reconnect loop keeps trying.
				cfg.Logger.Warn("join failed; serving alone and retrying", "join", cfg.Join, "err", err)
			}
		}
		m.glue.PublishPolicies()
	}
	cfg.Logger.Info("limiterd serving", "grpc", m.GRPCAddr(), "http", m.HTTPAddr(), "gossip", m.GossipAddr(), "node", cfg.NodeName, "data", scfg.Path,
		"policies", len(m.lim.Policies()), "sync_always", cfg.SyncAlways)
	return nil
}

// GRPCAddr returns the bound gRPC address ("unix:///path" for a socket).
func (m *Main) GRPCAddr() string {
	if m.grpcLn == nil {
		return ""
	}
	if m.grpcLn.Addr().Network() == "unix" {
		return "unix://" + m.grpcLn.Addr().String()
	}
	return m.grpcLn.Addr().String()
}

// HTTPAddr returns the bound HTTP address, or "" when disabled.
func (m *Main) HTTPAddr() string {
	if m.httpLn == nil {
		return ""
	}
	return m.httpLn.Addr().String()
}

// GossipAddr returns the bound gossip address, or "" on a single node.
func (m *Main) GossipAddr() string {
	if m.node == nil {
		return ""
	}
	return m.node.GossipAddr()
}

// Node returns the cluster node, or nil on a single node.
func (m *Main) Node() *cluster.Node { return m.node }

// startCluster creates the gossip node, routes calls through it and
// registers the Peer service. The node joins once the gRPC server serves.
func (m *Main) startCluster() error {
	cfg := m.cfg
	gcfg := server.DefaultClusterConfig()
	gcfg.ReplicationInterval = cfg.ReplicationInterval
	gcfg.HandoffTimeout = cfg.DrainTimeout
	gcfg.Metrics = m.metrics
	gcfg.Logger = cfg.Logger
	m.glue = server.NewCluster(m.svc, m.lim, m.admin, gcfg)
	ccfg := cluster.DefaultConfig()
	ccfg.NodeName = cfg.NodeName
	ccfg.GossipAddr = cfg.GossipAddr
	ccfg.AdvertiseAddr = cfg.AdvertiseAddr
	ccfg.GRPCAddr = m.GRPCAddr()
	ccfg.Join = cfg.Join
	ccfg.GossipKey = cfg.GossipKey
	ccfg.Replicas = cfg.Replicas
	ccfg.OnChange = m.glue.OnChange
	ccfg.OnPolicy = m.glue.OnPolicy
	ccfg.OnBatch = m.metrics.BatchSize
	ccfg.OnWire = func(e cluster.WireEvent) { m.metrics.WireEvent(string(e)) }
	ccfg.Logger = cfg.Logger
	ccfg.DialOptions = m.peerDialOptions()
	ccfg.WireAddr = m.wireAddr()
	ccfg.WireTLS = cfg.TLS
	ccfg.WireDialTLS = cfg.PeerTLS
	ccfg.WireSecret = cfg.PeerSecret
	if cfg.Auth != nil {
		ccfg.WireAuth = cfg.Auth.CheckPeerSecret
	}
	if cfg.Cluster != nil {
		cfg.Cluster(&ccfg)
	}
	node, err := cluster.New(ccfg)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	m.node = node
	m.glue.Start(node, m.grpc)
	return nil
}

// wireAddr is the peer wire listen address for Config.PeerAddr: by
// default the gRPC listener's host and any port; none for "off" or a gRPC
// listener on a unix socket.
func (m *Main) wireAddr() string {
	switch {
	case m.cfg.PeerAddr == "off":
		return ""
	case m.cfg.PeerAddr != "":
		return m.cfg.PeerAddr
	case m.grpcLn.Addr().Network() != "tcp":
		return ""
	}
	host, _, err := net.SplitHostPort(m.grpcLn.Addr().String())
	if err != nil {
		return ""
	}
	return net.JoinHostPort(host, "0")
}

// WireAddr returns the bound peer wire address, or "" without one.
func (m *Main) WireAddr() string {
	if m.node == nil {
		return ""
	}
	return m.node.Self().WireAddr
}

// peerDialOptions returns what this node adds to the cluster's dial
// options for its peers: TLS when PeerTLS is set, the peer secret when set.
func (m *Main) peerDialOptions() []grpc.DialOption {
	var opts []grpc.DialOption
	if m.cfg.PeerTLS != nil {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(m.cfg.PeerTLS)))
	}
	if m.cfg.PeerSecret != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.PeerCredentials(m.cfg.PeerSecret)))
	}
	return opts
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "limiterd"
	}
	return h
}

// Limiter returns the node's limiter (for tests and embedding).
func (m *Main) Limiter() *limiter.Limiter { return m.lim }

// Close stops the node gracefully: health goes NOT_SERVING, new calls are
// refused, in-flight calls finish (up to DrainTimeout), state is flushed and
// the store closed. Safe to call more than once.
func (m *Main) Close() error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if m.svc != nil {
		m.svc.Drain()
	}
	if m.node != nil {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.DrainTimeout)
		if err := m.glue.Leave(ctx); err != nil { // hands keys over while Peer still answers
			m.cfg.Logger.Warn("leave cluster", "err", err)
		}
		cancel()
		m.glue.Stop()
	}
	if m.grpc != nil {
		stopped := make(chan struct{})
		go func() { m.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(m.cfg.DrainTimeout):
			m.grpc.Stop()
			<-stopped
		}
	} else if m.grpcLn != nil {
		m.grpcLn.Close()
	}
	if m.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = m.http.Shutdown(ctx)
		cancel()
	} else if m.httpLn != nil {
		m.httpLn.Close()
	}
	if m.cancel != nil {
		m.cancel()
	}
	var errs []error
	if m.lim != nil {
		errs = append(errs, m.lim.Close())
	}
	if m.node != nil {
		errs = append(errs, m.node.Shutdown())
	}
	m.wg.Wait()
	if m.db != nil {
		errs = append(errs, m.db.Close())
	}
	if strings.HasPrefix(m.cfg.GRPCAddr, "unix://") {
		_ = os.Remove(strings.TrimPrefix(m.cfg.GRPCAddr, "unix://"))
	}
	return errors.Join(errs...)
}

func (m *Main) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.metrics.Registry, promhttp.HandlerOpts{}))
	if m.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if m.svc.Draining() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// listenRaw is listen with raw socket I/O on every accepted connection
// (see package rawio). The user timeout is what grpc-go's server sets on
// the TCP connections it is given unwrapped: its keepalive timeout.
func listenRaw(addr string) (net.Listener, error) {
	ln, err := listen(addr)
	if err != nil {
		return nil, err
	}
	return rawio.Listener{Listener: ln, TCPUserTimeout: server.KeepaliveTimeout}, nil
}

// listen binds addr: host:port over TCP, or unix:///path for a socket
// (a stale socket file is removed first, the new one gets mode 0660).
func listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, fmt.Errorf("unix socket address %q has no path", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process is listening", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
