package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testConfig is DefaultConfig with fast gossip on loopback.
func testConfig(name string) Config {
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.GossipInterval = 20 * time.Millisecond
	cfg.ProbeInterval = 200 * time.Millisecond
	cfg.ProbeTimeout = 100 * time.Millisecond
	cfg.PushPullInterval = 500 * time.Millisecond
	cfg.ReconnectInterval = 100 * time.Millisecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

// fakeHandler is a Handler that answers from memory and counts calls.
type fakeHandler struct {
	name string

	// allow, when set, replaces the default AllowLocal answer.
	allow   func(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error)
	release func(ctx context.Context, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error)

	allows atomic.Int64
	// immediate, when set, is what Immediate reports.
	immediate func(req *limiterv1.AllowRequest) bool

	mu     sync.Mutex
	states map[string]*limiterv1.KeyState
}

func (h *fakeHandler) AllowLocal(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
	h.allows.Add(1)
	if h.allow != nil {
		return h.allow(ctx, req)
	}
	// Policy carries the answering node's name so tests can see who decided.
	return &limiterv1.PeerDecision{Allowed: true, Policy: h.name, Remaining: int64(len(req.GetKey()))}, nil
}

// Immediate is false unless immediate says otherwise, so the tests' slow
// answers get goroutines of their own.
func (h *fakeHandler) Immediate(req *limiterv1.AllowRequest) bool {
	return h.immediate != nil && h.immediate(req)
}

func (h *fakeHandler) ReleaseLocal(ctx context.Context, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error) {
	if h.release != nil {
		return h.release(ctx, req)
	}
	return &limiterv1.ReleaseResponse{InFlight: 7}, nil
}

func (h *fakeHandler) ApplyReplica(ctx context.Context, states []*limiterv1.KeyState) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.states == nil {
		h.states = make(map[string]*limiterv1.KeyState)
	}
	for _, s := range states {
		if s.GetKey() == "" {
			return status.Error(codes.InvalidArgument, "empty key")
		}
		id := s.GetPolicy() + "/" + s.GetKey()
		if cur, ok := h.states[id]; !ok || s.GetVersion() > cur.GetVersion() {
			h.states[id] = s
		}
	}
	return nil
}

func (h *fakeHandler) ExportState(ctx context.Context, refs []*limiterv1.KeyRef) ([]*limiterv1.KeyState, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*limiterv1.KeyState
	for _, r := range refs {
		if s, ok := h.states[r.GetPolicy()+"/"+r.GetKey()]; ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// KeyLocal reports whether the fake holds state for the key.
func (h *fakeHandler) KeyLocal(ctx context.Context, req *limiterv1.PeerKeyRequest) (*limiterv1.KeyInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.states[req.GetPolicy()+"/"+req.GetKey()]; !ok {
		return nil, status.Error(codes.NotFound, "no such key")
	}
	if req.GetForget() {
		delete(h.states, req.GetPolicy()+"/"+req.GetKey())
	}
	return &limiterv1.KeyInfo{Policy: req.GetPolicy(), Key: req.GetKey()}, nil
}

// testNode is a Node with its own gRPC server serving Peer.
type testNode struct {
	*Node
	h     *fakeHandler
	calls sync.Map // full method name -> *atomic.Int64
}

func (tn *testNode) rpcs(method string) int64 {
	v, ok := tn.calls.Load("/limiter.v1.Peer/" + method)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// startNode starts a node named name with a gRPC server on 127.0.0.1:0.
// tune, if not nil, edits the Config first.
func startNode(t testing.TB, name string, tune func(*Config)) *testNode {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(name)
	cfg.GRPCAddr = lis.Addr().String()
	if tune != nil {
		tune(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		lis.Close()
		t.Fatalf("New(%s): %v", name, err)
	}
	tn := &testNode{Node: n, h: &fakeHandler{name: name}}
	count := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		v, _ := tn.calls.LoadOrStore(info.FullMethod, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		return next(ctx, req)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(count))
	n.RegisterPeerService(srv, tn.h)
	go srv.Serve(lis)
	t.Cleanup(func() {
		if err := n.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s): %v", name, err)
		}
		srv.Stop()
	})
	return tn
}

// startCluster starts n nodes named node-1..node-n and joins them.
func startCluster(t testing.TB, n int, tune func(*Config)) []*testNode {
	t.Helper()
	nodes := make([]*testNode, n)
	for i := range nodes {
		nodes[i] = startNode(t, fmt.Sprintf("node-%d", i+1), tune)
	}
	for _, tn := range nodes[1:] {
		joinTo(t, tn, nodes[0])
	}
	waitConverged(t, nodes...)
	return nodes
}

func joinTo(t testing.TB, tn, to *testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tn.Join(ctx, to.GossipAddr()); err != nil {
		t.Fatalf("%s Join(%s): %v", tn.Name(), to.GossipAddr(), err)
	}
}

// waitConverged waits until every node's ring holds exactly nodes.
func waitConverged(t testing.TB, nodes ...*testNode) {
	t.Helper()
	want := make(map[string]bool)
	for _, n := range nodes {
		want[n.Name()] = true
	}
	waitFor(t, 5*time.Second, fmt.Sprintf("%d nodes to converge", len(nodes)), func() bool {
		for _, n := range nodes {
			r := n.Ring()
			if r.Len() != len(want) {
				return false
			}
			for _, m := range r.Members() {
				if !want[m.Name] {
					return false
				}
			}
		}
		return true
	})
}

// errorsIs is errors.Is for table tests.
func errorsIs(err error, targets ...error) bool {
	for _, tg := range targets {
		if !errors.Is(err, tg) {
			return false
		}
	}
	return true
}
