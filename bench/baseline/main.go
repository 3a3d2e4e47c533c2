// Command baseline is the floor every limiterd figure is compared to: a gRPC
// server for limiter.v1.Limiter whose handlers decide nothing and return a
// fixed answer (allowed, limit 600, remaining 599).
//
//	go run ./bench/baseline --grpc-addr 127.0.0.1:0
//
// It uses the grpc.Server options of limiterd that change the cost of a call
// (message size bound, stream limit, keepalive) but no interceptors, and it
// serves health and reflection like limiterd so ghz and grpcurl work without
// a proto file. With --raw-io its listener does its socket reads and
// writes as limiterd's does (package rawio: raw system calls that do not
// wake the runtime's sysmon thread), so that the load test can show how
// much of limiterd's figures that alone explains. Once listening it logs, on stderr, the JSON line
// {"msg":"limiterd serving","grpc":ADDR} that limiterd logs with
// --log-format json, so one parser finds the address of either. SIGINT or
// SIGTERM stops it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/limiterd/limiterd/internal/rawio"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

func main() {
	addr := flag.String("grpc-addr", "127.0.0.1:0", "gRPC listener `address` (host:port; port 0 picks a free one)")
	raw := flag.Bool("raw-io", false, "read and write sockets as limiterd does (package rawio)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(*addr, *raw, log); err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		os.Exit(1)
	}
}

func run(addr string, raw bool, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if raw {
		ln = rawio.Listener{Listener: ln, TCPUserTimeout: 10 * time.Second}
	}
	g := newServer()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(ln) }()
	log.Info("limiterd serving", "grpc", ln.Addr().String(), "server", "baseline")
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	g.GracefulStop()
	return nil
}

// newServer returns a grpc.Server with the same options as limiterd's
// server.NewGRPCServer, minus the interceptor chain.
func newServer() *grpc.Server {
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(64<<10),
		grpc.MaxConcurrentStreams(1024),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	limiterv1.RegisterLimiterServer(g, fixed{})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(limiterv1.Limiter_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	return g
}

// fixed answers every call the same way without looking at it. It is safe
// for concurrent use.
type fixed struct {
	limiterv1.UnimplementedLimiterServer
}

// Allow returns allowed=true, limit 600, remaining 599: what a fresh key
// gets from the default policy, minus the headers and durations.
func (fixed) Allow(context.Context, *limiterv1.AllowRequest) (*limiterv1.AllowResponse, error) {
	return &limiterv1.AllowResponse{Allowed: true, Policy: "default", Limit: 600, Remaining: 599}, nil
}

// Release returns in_flight 0 for any lease id.
func (fixed) Release(context.Context, *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error) {
	return &limiterv1.ReleaseResponse{}, nil
}
