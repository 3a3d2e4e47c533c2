// Package server is the gRPC edge of limiterd: the limiter.v1 services,
// request validation, the mapping of errors to status codes, interceptors,
// health and reflection. Decisions are made by a decider (the limiter on one
// node, or the cluster router in front of it).
package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/metrics"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// Decider makes decisions; *limiter.Limiter satisfies it, and so does the
// cluster router that forwards to a key's owner.
type Decider interface {
	Allow(ctx context.Context, req limiter.Request) (limiter.Result, error)
	Release(ctx context.Context, leaseID string) (inFlight int64, err error)
}

// Config configures a Service.
type Config struct {
	// Decider makes the decisions. Required.
	Decider Decider
	// Now reports the time for error-body timestamps. Default time.Now.
	Now func() time.Time
	// Logger gets one line per internal error. Default slog.Default().
	Logger *slog.Logger
	// MaxRecvMsgSize bounds a client's request message, bytes. Default 64
	// KiB. Batches between nodes (limiter.v1.Peer) may be up to
	// MaxPeerMsgSize.
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds calls in flight per connection. Default 1024.
	MaxConcurrentStreams uint32
	// ServerOptions are added to the grpc.Server (TLS credentials, ...).
	ServerOptions []grpc.ServerOption
	// UnaryInterceptors run after the built-in recovery, load and metrics
	// interceptors.
	UnaryInterceptors []grpc.UnaryServerInterceptor
	// Metrics records decisions and latency; nil records nothing.
	Metrics *metrics.Metrics
	// MaxInFlight bounds the calls being answered at once; beyond it a call
	// gets UNAVAILABLE at once instead of queueing. Default 8192; negative
	// means no bound.
	MaxInFlight int
}

// MaxPeerMsgSize bounds one message between nodes (a forwarded batch).
const MaxPeerMsgSize = 8 << 20

// DefaultConfig returns a Config with every field but Decider set.
func DefaultConfig() Config {
	return Config{Now: time.Now, Logger: slog.Default(), MaxRecvMsgSize: 64 << 10, MaxConcurrentStreams: 1024, MaxInFlight: 8192}
}

// Service implements limiter.v1.Limiter. It is safe for concurrent use.
type Service struct {
	limiterv1.UnimplementedLimiterServer
	cfg      Config
	health   *health.Server
	draining atomic.Bool
	inFlight atomic.Int64
	cluster  *Cluster // nil on a single node
}

// New returns a Service. Register it on a grpc.Server with Register, or use
// NewGRPCServer.
func New(cfg Config) (*Service, error) {
	if cfg.Decider == nil {
		return nil, fmt.Errorf("server: Decider is nil")
	}
	if cfg.Now == nil || cfg.Logger == nil {
		return nil, fmt.Errorf("server: Now and Logger must be set")
	}
	s := &Service{cfg: cfg, health: health.NewServer()}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(limiterv1.Limiter_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s, nil
}

// KeepaliveTimeout is how long the gRPC server waits for a keepalive
// ping's answer. grpc-go also sets it as TCP_USER_TIMEOUT on the
// connections it sees as *net.TCPConn; a listener that wraps them (package
// rawio) sets it itself.
const KeepaliveTimeout = 10 * time.Second

// streamWorkersPerCore sizes the gRPC server's stream worker pool. Two
// cores with 64 workers against 512, same-time pairs of three-node
// clusters (bench/clustercpu.sh): 4-11% less CPU a call under limiterbench
// and ghz c=50, 0 and +4% at c=200; 16, 32 and 128 did worse than 64 (README,
// Performance).
const streamWorkersPerCore = 32

// NewGRPCServer returns a grpc.Server with the Limiter service, health,
// reflection, keepalive settings for long-lived gateway connections, a
// bounded message size and the recovery interceptor.
func (s *Service) NewGRPCServer() *grpc.Server {
	ics := append([]grpc.UnaryServerInterceptor{s.unary}, s.cfg.UnaryInterceptors...)
	opts := []grpc.ServerOption{
		// The transport takes peer batches up to MaxPeerMsgSize; loadUnary
		// holds client requests to MaxRecvMsgSize.
		grpc.MaxRecvMsgSize(max(s.cfg.MaxRecvMsgSize, MaxPeerMsgSize)),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second, // ping an idle gateway connection
			Timeout: KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second, // gateways may ping this often
			PermitWithoutStream: true,
		}),
		grpc.ChainUnaryInterceptor(ics...),
		// A pool of stream workers keeps goroutines (and their grown stacks)
		// across calls; a new goroutine per call spent ~15% of the CPU
		// growing stacks under load. The pool is no bigger than the calls a
		// core keeps busy (streamWorkersPerCore): its workers take calls in
		// turn, so every one of them regrows the stack that each collection
		// halves, and a pool of 512 on two cores spent 4% of a forwarding
		// node's CPU on that. Calls beyond the pool run on new goroutines.
		grpc.NumStreamWorkers(uint32(streamWorkersPerCore * runtime.GOMAXPROCS(0))),
		// Allow's answers are encoded without protobuf-go's generic map
		// code, an allowed call's straight from its decision (codec.go).
		grpc.ForceServerCodecV2(newCodec()),
	}
	opts = append(opts, s.cfg.ServerOptions...)
	g := grpc.NewServer(opts...)
	s.Register(g)
	healthpb.RegisterHealthServer(g, s.health)
	reflection.Register(g)
	return g
}

// Register adds the Limiter service to g.
func (s *Service) Register(g *grpc.Server) { g.RegisterService(&limiterDesc, s) }

// limiterDesc is limiter.v1.Limiter's generated service description with
// its own Allow handler (allowHandler).
var limiterDesc = func() grpc.ServiceDesc {
	d := limiterv1.Limiter_ServiceDesc
	d.Methods = slices.Clone(d.Methods)
	for i := range d.Methods {
		if d.Methods[i].MethodName == "Allow" {
			d.Methods[i].Handler = allowHandler
		}
	}
	return d
}()

// allowHandler is the generated Allow handler, except that an allowed
// call's answer goes to the codec as the decision (allowReply) rather than
// as an AllowResponse: what the client receives is the same, and a call
// costs neither the response nor its headers map. It goes through the
// interceptors like any call.
func allowHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(limiterv1.AllowRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	s := srv.(*Service)
	if interceptor == nil {
		return s.allowAnswer(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: limiterv1.Limiter_Allow_FullMethodName}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return s.allowAnswer(ctx, req.(*limiterv1.AllowRequest))
	})
}

// allowAnswer is Allow for allowHandler: an *allowReply when allowed, an
// *AllowResponse when denied.
func (s *Service) allowAnswer(ctx context.Context, req *limiterv1.AllowRequest) (any, error) {
	res, err := s.allow(ctx, req)
	if err != nil {
		return nil, err
	}
	if res.Allowed {
		return &allowReply{res: res}, nil
	}
	return s.Response(&res, req.GetPath(), req.GetRequestId()), nil
}

// Drain marks the service NOT_SERVING in health checks and makes new calls
// fail with UNAVAILABLE, so clients move to another node.
func (s *Service) Drain() {
	s.draining.Store(true)
	s.health.Shutdown()
}

// Allow implements limiter.v1.Limiter/Allow. (The gRPC server calls
// allowAnswer, which answers the same.)
func (s *Service) Allow(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.AllowResponse, error) {
	res, err := s.allow(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.Response(&res, req.GetPath(), req.GetRequestId()), nil
}

// allow decides req, locally or through the key's owner; its errors are
// gRPC statuses.
func (s *Service) allow(ctx context.Context, req *limiterv1.AllowRequest) (limiter.Result, error) {
	if s.draining.Load() {
		return limiter.Result{}, toStatus(errDraining)
	}
	if err := ctx.Err(); err != nil {
		return limiter.Result{}, toStatus(err) // the caller gave up: count nothing
	}
	var res limiter.Result
	var err error
	if s.cluster != nil {
		res, err = s.cluster.allow(ctx, req)
	} else {
		res, err = s.decideLocal(ctx, req)
	}
	if err != nil {
		return limiter.Result{}, s.fail("Allow", req.GetRequestId(), err)
	}
	return res, nil
}

// decideLocal decides req on this node and counts the decision.
func (s *Service) decideLocal(ctx context.Context, req *limiterv1.AllowRequest) (limiter.Result, error) {
	res, err := s.cfg.Decider.Allow(ctx, limiter.Request{Policy: req.GetPolicy(), Key: req.GetKey(), Hits: req.GetHits(), DryRun: req.GetDryRun()})
	if err != nil {
		return res, err
	}
	s.cfg.Metrics.Decision(res.Policy.Name, max(res.Code, res.ShadowCode), res.ShadowCode != 0)
	return res, nil
}

// Response renders a Result as an AllowResponse.
func (s *Service) Response(res *limiter.Result, path, requestID string) *limiterv1.AllowResponse {
	// The response and its two durations come in one allocation.
	all := new(struct {
		resp         limiterv1.AllowResponse
		retry, reset durationpb.Duration
	})
	out := &all.resp
	fillResponse(out, &all.retry, &all.reset, res)
	out.Headers = Headers(res)
	if !res.Allowed {
		out.Error = ErrorFor(res, path, requestID, s.cfg.Now())
	}
	return out
}

// fillResponse sets out's fields from res, but its headers and error;
// retry and reset become its durations.
func fillResponse(out *limiterv1.AllowResponse, retry, reset *durationpb.Duration, res *limiter.Result) {
	setDuration(retry, res.RetryAfter)
	setDuration(reset, res.ResetAfter)
	out.Allowed = res.Allowed
	out.Code = res.Code
	out.Policy = res.Policy.Name
	out.Limit = res.Limit
	out.Remaining = res.Remaining
	out.RetryAfter = retry
	out.ResetAfter = reset
	out.LeaseId = res.LeaseID
	out.MaxConcurrent = res.MaxConcurrent
	out.InFlight = res.InFlight
	out.Degraded = res.Degraded
}

// setDuration sets d to dur, as durationpb.New does.
func setDuration(d *durationpb.Duration, dur time.Duration) {
	d.Seconds = int64(dur / time.Second)
	d.Nanos = int32(dur % time.Second)
}

// Release implements limiter.v1.Limiter/Release.
func (s *Service) Release(ctx context.Context, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error) {
	if s.draining.Load() {
		return nil, toStatus(errDraining)
	}
	if req.GetLeaseId() == "" {
		return nil, status.Error(codes.InvalidArgument, "lease_id is empty")
	}
	var n int64
	var err error
	if s.cluster != nil {
		n, err = s.cluster.release(ctx, req)
	} else {
		n, err = s.cfg.Decider.Release(ctx, req.GetLeaseId())
	}
	if err != nil {
		return nil, s.fail("Release", "", err)
	}
	return &limiterv1.ReleaseResponse{InFlight: n}, nil
}

// fail maps err to a status and logs what the caller does not see.
func (s *Service) fail(method, requestID string, err error) error {
	st := toStatus(err)
	if isInternal(err) {
		s.cfg.Logger.Error("call failed", "method", method, "request_id", requestID, "err", err)
	}
	return st
}

// loadUnary bounds the calls in flight and records each call's latency.
// Health and reflection calls are never refused.
func (s *Service) loadUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, "/grpc.") {
		return handler(ctx, req)
	}
	if !strings.HasPrefix(info.FullMethod, "/limiter.v1.Peer/") {
		if m, ok := req.(proto.Message); ok && proto.Size(m) > s.cfg.MaxRecvMsgSize {
			return nil, status.Errorf(codes.ResourceExhausted, "request of %d bytes is larger than %d", proto.Size(m), s.cfg.MaxRecvMsgSize)
		}
	}
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	if s.cfg.MaxInFlight > 0 && n > int64(s.cfg.MaxInFlight) {
		s.cfg.Metrics.Overloaded()
		return nil, status.Errorf(codes.Unavailable, "overloaded: more than %d calls in flight; retry on another node", s.cfg.MaxInFlight)
	}
	if s.cfg.Metrics == nil {
		return handler(ctx, req)
	}
	start := time.Now()
	resp, err := handler(ctx, req)
	s.cfg.Metrics.Latency(info.FullMethod, time.Since(start))
	return resp, err
}

// unary is the service's interceptor: it turns a panic into INTERNAL and
// logs it with its stack (the caller never sees the stack) around
// loadUnary. One interceptor, as gRPC chains two with a closure per call.
func (s *Service) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer s.recovered(req, info, &err)
	return s.loadUnary(ctx, req, info, handler)
}

// recovered, deferred, turns a panic into an INTERNAL *err and logs it.
func (s *Service) recovered(req any, info *grpc.UnaryServerInfo, err *error) {
	if r := recover(); r != nil {
		rid := ""
		if g, ok := req.(interface{ GetRequestId() string }); ok {
			rid = g.GetRequestId()
		}
		s.cfg.Logger.Error("panic in handler", "method", info.FullMethod, "request_id", rid, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// Draining reports whether Drain was called.
func (s *Service) Draining() bool { return s.draining.Load() }

// Decider returns a Decider that routes like the Limiter service: through
// the key's owner when the service runs in a cluster, else to the local
// limiter. Other front doors (the Envoy API) use it so they share routing.
func (s *Service) Decider() Decider { return routed{s} }

type routed struct{ s *Service }

func (r routed) Allow(ctx context.Context, req limiter.Request) (limiter.Result, error) {
	if r.s.cluster == nil {
		return r.s.cfg.Decider.Allow(ctx, req)
	}
	return r.s.cluster.allow(ctx, &limiterv1.AllowRequest{Key: req.Key, Policy: req.Policy, Hits: req.Hits, DryRun: req.DryRun})
}

func (r routed) Release(ctx context.Context, leaseID string) (int64, error) {
	if r.s.cluster == nil {
		return r.s.cfg.Decider.Release(ctx, leaseID)
	}
	return r.s.cluster.release(ctx, &limiterv1.ReleaseRequest{LeaseId: leaseID})
}
