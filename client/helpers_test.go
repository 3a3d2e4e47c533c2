package client

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/daemon"
	"github.com/limiterd/limiterd/internal/policy"
)

// startDaemon runs a limiterd node on 127.0.0.1:0 with ps (plus "default")
// and returns its gRPC address.
func startDaemon(t *testing.T, ps ...policy.Policy) string {
	t.Helper()
	return startDaemonAt(t, "127.0.0.1:0", ps...)
}

func startDaemonAt(t *testing.T, addr string, ps ...policy.Policy) string {
	t.Helper()
	cfg := daemon.DefaultConfig()
	cfg.GRPCAddr = addr
	cfg.HTTPAddr = ""
	cfg.GossipAddr = "" // a single node, no gossip port
	cfg.DataDir = t.TempDir()
	cfg.Policies = append([]policy.Policy{policy.Default()}, ps...)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.DrainTimeout = 2 * time.Second
	m := daemon.New(cfg)
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("daemon Run() error = %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m.GRPCAddr()
}

// newClient returns a Client for addr, closed at cleanup.
func newClient(t *testing.T, addr string, opts ...Option) *Client {
	t.Helper()
	c, err := New(addr, opts...)
	if err != nil {
		t.Fatalf("New(%q) error = %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// deadAddr returns a loopback address nobody listens on: a closed
// listener's port.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// testCtx is bounded so a broken test fails instead of hanging.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var (
	// uploads caps concurrency at 1.
	uploads = policy.Policy{Name: "uploads", Limit: 100, Window: time.Minute, MaxConcurrent: 1, LeaseTTL: 30 * time.Second}
	// tiny allows 2 hits per minute.
	tiny = policy.Policy{Name: "tiny", Limit: 2, Window: time.Minute}
)
