package server

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

var t0 = time.Date(2026, 11, 22, 6, 38, 33, 876_000_000, time.UTC)

type harness struct {
	svc    *Service
	client limiterv1.LimiterClient
	conn   *grpc.ClientConn
}

func startServer(t *testing.T, ps ...policy.Policy) *harness {
	t.Helper()
	now := func() time.Time { return t0 }
	lcfg := limiter.DefaultConfig()
	lcfg.Now = now
	lcfg.Policies = ps
	lim, err := limiter.New(lcfg)
	if err != nil {
		t.Fatalf("limiter.New() error = %v", err)
	}
	cfg := DefaultConfig()
	cfg.Decider = lim
	cfg.Now = now
	svc, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	g := svc.NewGRPCServer()
	ln := bufconn.Listen(1 << 20)
	go g.Serve(ln)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient() error = %v", err)
	}
	t.Cleanup(func() { conn.Close(); g.Stop(); lim.Close() })
	return &harness{svc: svc, client: limiterv1.NewLimiterClient(conn), conn: conn}
}

func TestBadInputStatus(t *testing.T) {
	h := startServer(t, policy.Policy{Name: "uploads", Limit: 100, Window: time.Minute, MaxConcurrent: 5})
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"empty key", func() error { _, err := h.client.Allow(ctx, &limiterv1.AllowRequest{}); return err }, codes.InvalidArgument},
		{"513-byte key", func() error {
			_, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: strings.Repeat("x", 513)})
			return err
		}, codes.InvalidArgument},
		{"invalid utf-8", func() error {
			_, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "a\xffb"})
			return err
		}, codes.InvalidArgument},
		{"negative hits", func() error { _, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "k", Hits: -1}); return err }, codes.InvalidArgument},
		{"unknown policy", func() error {
			_, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "k", Policy: "nope"})
			return err
		}, codes.NotFound},
		{"empty lease id", func() error { _, err := h.client.Release(ctx, &limiterv1.ReleaseRequest{}); return err }, codes.InvalidArgument},
		{"malformed lease id", func() error {
			_, err := h.client.Release(ctx, &limiterv1.ReleaseRequest{LeaseId: "%%%"})
			return err
		}, codes.InvalidArgument},
		{"unknown lease id", func() error {
			id := limiter.LeaseID{Policy: "uploads", Key: "k", Nonce: 9}.String()
			_, err := h.client.Release(ctx, &limiterv1.ReleaseRequest{LeaseId: id})
			return err
		}, codes.NotFound},
		{"oversized message", func() error {
			_, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "k", Path: strings.Repeat("p", 100<<10)})
			return err
		}, codes.ResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if got := status.Code(err); got != tt.want {
				t.Errorf("status = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestAllowThenDenied(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	for i := range 600 {
		res, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "tenant:42"})
		if err != nil || !res.GetAllowed() || res.GetError() != nil {
			t.Fatalf("call %d: Allow() = %v, %v, want allowed", i+1, res, err)
		}
	}
	res, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "tenant:42", Path: "/v1/invoices", RequestId: "de03e86d0a6d44359b249340f967ddc9"})
	if err != nil {
		t.Fatalf("Allow() error = %v", err)
	}
	if res.GetAllowed() || res.GetCode() != 122 || res.GetRemaining() != 0 || res.GetPolicy() != "default" || res.GetLimit() != 600 {
		t.Fatalf("601st Allow() = %v, want denied 122", res)
	}
	if got, want := res.GetRetryAfter().AsDuration(), 5*time.Minute+5*time.Second-876*time.Millisecond-3*time.Second; got != want {
		t.Errorf("RetryAfter = %v, want %v", got, want)
	}
	wantHeaders := map[string]string{
		"RateLimit-Policy":      `"default";q=600;w=300`,
		"RateLimit":             `"default";r=0;t=302`,
		"X-RateLimit-Limit":     "600",
		"X-RateLimit-Remaining": "0",
		"X-RateLimit-Reset":     "302",
		"Retry-After":           "302",
	}
	for k, v := range wantHeaders {
		if got := res.GetHeaders()[k]; got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	e := res.GetError()
	wantBody := `{"code":122,"error":"Request rate limit exceeded","message":"600 requests per 5m0s; retry in 302s","http_status":429,"http_reason":"Too Many Requests","path":"/v1/invoices","timestamp":"2026-11-22T06:38:33.876+0000","request-id":"de03e86d0a6d44359b249340f967ddc9"}`
	if e.GetBody() != wantBody {
		t.Errorf("body =\n%s\nwant\n%s", e.GetBody(), wantBody)
	}
	var parsed map[string]any
	if err := json.Unmarshal([]byte(e.GetBody()), &parsed); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if e.GetCode() != 122 || e.GetHttpStatus() != 429 || e.GetHttpReason() != "Too Many Requests" || e.GetTimestamp() != "2026-11-22T06:38:33.876+0000" {
		t.Errorf("Error = %v", e)
	}
}

func TestConcurrencyAndRelease(t *testing.T) {
	h := startServer(t, policy.Policy{Name: "uploads", Limit: 100, Window: time.Minute, MaxConcurrent: 1, LeaseTTL: 30 * time.Second})
	ctx := context.Background()
	first, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "u", Policy: "uploads"})
	if err != nil || !first.GetAllowed() || first.GetLeaseId() == "" || first.GetInFlight() != 1 || first.GetMaxConcurrent() != 1 {
		t.Fatalf("Allow() = %v, %v, want allowed with a lease", first, err)
	}
	second, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "u", Policy: "uploads", Path: "/upload"})
	if err != nil || second.GetAllowed() || second.GetCode() != 123 || second.GetLeaseId() != "" {
		t.Fatalf("Allow() = %v, %v, want 123", second, err)
	}
	if e := second.GetError(); e.GetError() != "Concurrent requests limit exceeded" || e.GetRequestId() == "" || !strings.Contains(e.GetBody(), `"code":123`) {
		t.Errorf("Error = %v, want the 123 body with a generated request id", e)
	}
	if second.GetRemaining() != 99 {
		t.Errorf("Remaining = %d, want 99 (a 123 counts no hits)", second.GetRemaining())
	}
	rel, err := h.client.Release(ctx, &limiterv1.ReleaseRequest{LeaseId: first.GetLeaseId()})
	if err != nil || rel.GetInFlight() != 0 {
		t.Fatalf("Release() = %v, %v, want 0 in flight", rel, err)
	}
	if _, err := h.client.Release(ctx, &limiterv1.ReleaseRequest{LeaseId: first.GetLeaseId()}); status.Code(err) != codes.NotFound {
		t.Errorf("second Release() error = %v, want NotFound", err)
	}
	if dry, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "u", Policy: "uploads", DryRun: true}); err != nil || !dry.GetAllowed() || dry.GetLeaseId() != "" {
		t.Errorf("dry run Allow() = %v, %v, want allowed with no lease", dry, err)
	}
}

func TestHealthAndDrain(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	hc := healthpb.NewHealthClient(h.conn)
	if res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check() = %v, %v, want SERVING", res, err)
	}
	h.svc.Drain()
	if res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Check() after Drain = %v, %v, want NOT_SERVING", res, err)
	}
	if _, err := h.client.Allow(ctx, &limiterv1.AllowRequest{Key: "k"}); status.Code(err) != codes.Unavailable {
		t.Errorf("Allow() while draining error = %v, want Unavailable", err)
	}
}

func TestPanicIsInternal(t *testing.T) {
	svc, err := New(Config{Decider: panicky{}, Now: time.Now, Logger: DefaultConfig().Logger, MaxRecvMsgSize: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.unary(context.Background(), &limiterv1.AllowRequest{}, &grpc.UnaryServerInfo{FullMethod: "/x"},
		func(ctx context.Context, req any) (any, error) { return svc.Allow(ctx, req.(*limiterv1.AllowRequest)) })
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "goroutine") {
		t.Errorf("error = %v, want a bare INTERNAL", err)
	}
}

type panicky struct{}

func (panicky) Allow(context.Context, limiter.Request) (limiter.Result, error) { panic("boom") }
func (panicky) Release(context.Context, string) (int64, error)                 { panic("boom") }

// blocking holds every Allow until release is closed.
type blocking struct {
	entered chan struct{}
	release chan struct{}
}

func (b blocking) Allow(ctx context.Context, req limiter.Request) (limiter.Result, error) {
	b.entered <- struct{}{}
	<-b.release
	return limiter.Result{Allowed: true, Policy: policy.Default(), Limit: 600, Remaining: 599}, nil
}
func (b blocking) Release(context.Context, string) (int64, error) { return 0, nil }

func TestOverloadIsUnavailable(t *testing.T) {
	b := blocking{entered: make(chan struct{}, 1), release: make(chan struct{})}
	cfg := DefaultConfig()
	cfg.Decider = b
	cfg.MaxInFlight = 1
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	info := &grpc.UnaryServerInfo{FullMethod: "/limiter.v1.Limiter/Allow"}
	call := func() error {
		_, err := svc.loadUnary(context.Background(), &limiterv1.AllowRequest{Key: "k"}, info,
			func(ctx context.Context, req any) (any, error) { return svc.Allow(ctx, req.(*limiterv1.AllowRequest)) })
		return err
	}
	first := make(chan error, 1)
	go func() { first <- call() }()
	<-b.entered
	if err := call(); status.Code(err) != codes.Unavailable {
		t.Errorf("second call error = %v, want Unavailable", err)
	}
	close(b.release)
	if err := <-first; err != nil {
		t.Errorf("first call error = %v", err)
	}
}

func TestExpiredAndCancelledCalls(t *testing.T) {
	h := startServer(t)
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := h.client.Allow(expired, &limiterv1.AllowRequest{Key: "k"}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Allow() with an expired deadline: %v, want DeadlineExceeded", err)
	}
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := h.client.Allow(cancelled, &limiterv1.AllowRequest{Key: "k"}); status.Code(err) != codes.Canceled {
		t.Errorf("Allow() on a cancelled context: %v, want Canceled", err)
	}
	// The same reach the service itself (a deadline that ran out in transit).
	if _, err := h.svc.Allow(expired, &limiterv1.AllowRequest{Key: "k"}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Service.Allow() with an expired deadline: %v, want DeadlineExceeded", err)
	}
	if _, err := h.svc.Allow(cancelled, &limiterv1.AllowRequest{Key: "k"}); status.Code(err) != codes.Canceled {
		t.Errorf("Service.Allow() on a cancelled context: %v, want Canceled", err)
	}
	// None counted a hit.
	res, err := h.client.Allow(context.Background(), &limiterv1.AllowRequest{Key: "k", DryRun: true})
	if err != nil || res.GetRemaining() != 599 {
		t.Errorf("after the failed calls: %v, %v, want 599 remaining for a dry run of 1", res, err)
	}
}
