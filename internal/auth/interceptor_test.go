package auth

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// Full method names used in the tests.
const (
	allowMethod   = "/limiter.v1.Limiter/Allow"
	releaseMethod = "/limiter.v1.Limiter/Release"
	adminMethod   = "/limiter.v1.Admin/ListPolicies"
	peerMethod    = "/limiter.v1.Peer/AllowBatch"
	healthMethod  = "/grpc.health.v1.Health/Check"
	reflectMethod = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
)

// fakeLeaseKey decodes the fake lease ids "lease:<key>".
func fakeLeaseKey(id string) (string, error) {
	key, ok := strings.CutPrefix(id, "lease:")
	if !ok {
		return "", errors.New("malformed lease id")
	}
	return key, nil
}

// envoyRequest stands in for envoy's RateLimitRequest: the interceptor reads
// only GetDomain.
type envoyRequest struct{ domain string }

func (r *envoyRequest) GetDomain() string { return r.domain }

// md returns an incoming context with the given metadata pairs.
func md(kv ...string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
}

func bearer(token string) []string { return []string{AuthorizationKey, "Bearer " + token} }

func TestUnaryInterceptor(t *testing.T) {
	a := mustParse(t, testFile(), Config{LeaseKey: fakeLeaseKey})
	noLeaseKey := mustParse(t, testFile(), DefaultConfig())
	noPeer := mustParse(t, "tokens:\n  - {name: ops, sha256: "+HashToken(adminToken)+", role: admin}\n", DefaultConfig())
	allow := func(key string) any { return &limiterv1.AllowRequest{Key: key} }
	release := func(id string) any { return &limiterv1.ReleaseRequest{LeaseId: id} }

	tests := []struct {
		name     string
		a        *Authenticator // default a
		ctx      context.Context
		method   string
		req      any
		want     codes.Code
		wantName string // Identity.Name the handler sees; "" for none
	}{
		// Authentication.
		{name: "no metadata", ctx: context.Background(), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "no authorization", ctx: md("x-other", "1"), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "malformed: no scheme", ctx: md(AuthorizationKey, clientToken), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "malformed: basic scheme", ctx: md(AuthorizationKey, "Basic "+clientToken), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "malformed: empty token", ctx: md(AuthorizationKey, "Bearer "), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "two authorization values", ctx: md(append(bearer(clientToken), bearer(adminToken)...)...), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "wrong token", ctx: md(bearer("not-a-token")...), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "hash instead of token", ctx: md(bearer(HashToken(clientToken))...), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "peer secret as token", ctx: md(bearer(peerSecret)...), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "peer secret without token", ctx: md(PeerSecretKey, peerSecret), method: allowMethod, req: allow("tenant:1"), want: codes.Unauthenticated},
		{name: "lower-case scheme", ctx: md(AuthorizationKey, "bearer "+clientToken), method: allowMethod, req: allow("tenant:1"), want: codes.OK, wantName: "edge-gateway"},

		// Limiter: key prefixes.
		{name: "client on allowed prefix", ctx: md(bearer(clientToken)...), method: allowMethod, req: allow("tenant:42:/invoices"), want: codes.OK, wantName: "edge-gateway"},
		{name: "client on second prefix", ctx: md(bearer(clientToken)...), method: allowMethod, req: allow("edge:1"), want: codes.OK, wantName: "edge-gateway"},
		{name: "client on other prefix", ctx: md(bearer(clientToken)...), method: allowMethod, req: allow("other:1"), want: codes.PermissionDenied},
		{name: "client on prefix without separator", ctx: md(bearer(clientToken)...), method: allowMethod, req: allow("tenant"), want: codes.PermissionDenied},
		{name: "client with empty key", ctx: md(bearer(clientToken)...), method: allowMethod, req: allow(""), want: codes.InvalidArgument},
		{name: "all-keys client on any key", ctx: md(bearer(allKeysToken)...), method: allowMethod, req: allow("other:1"), want: codes.OK, wantName: "everything"},
		{name: "admin on any key", ctx: md(bearer(adminToken)...), method: allowMethod, req: allow("other:1"), want: codes.OK, wantName: "ops"},
		{name: "admin with prefixes on other prefix", ctx: md(bearer(narrowAdmToken)...), method: allowMethod, req: allow("edge:1"), want: codes.PermissionDenied},
		{name: "client on unknown request type", ctx: md(bearer(clientToken)...), method: "/limiter.v1.Limiter/Future", req: struct{}{}, want: codes.PermissionDenied},

		// Limiter: Release through the lease's key.
		{name: "release on allowed prefix", ctx: md(bearer(clientToken)...), method: releaseMethod, req: release("lease:tenant:1"), want: codes.OK, wantName: "edge-gateway"},
		{name: "release on other prefix", ctx: md(bearer(clientToken)...), method: releaseMethod, req: release("lease:other:1"), want: codes.PermissionDenied},
		{name: "release malformed lease", ctx: md(bearer(clientToken)...), method: releaseMethod, req: release("garbage"), want: codes.InvalidArgument},
		{name: "release empty lease", ctx: md(bearer(clientToken)...), method: releaseMethod, req: release(""), want: codes.InvalidArgument},
		{name: "release, no LeaseKey, client", a: noLeaseKey, ctx: md(bearer(clientToken)...), method: releaseMethod, req: release("lease:tenant:1"), want: codes.PermissionDenied},
		{name: "release, no LeaseKey, all keys", a: noLeaseKey, ctx: md(bearer(allKeysToken)...), method: releaseMethod, req: release("lease:tenant:1"), want: codes.OK, wantName: "everything"},

		// Envoy: domain against "envoy:<domain>:".
		{name: "envoy allowed domain", ctx: md(bearer(clientToken)...), method: envoyMethod, req: &envoyRequest{"edge"}, want: codes.OK, wantName: "edge-gateway"},
		{name: "envoy other domain", ctx: md(bearer(clientToken)...), method: envoyMethod, req: &envoyRequest{"edge2"}, want: codes.PermissionDenied},
		{name: "envoy empty domain", ctx: md(bearer(clientToken)...), method: envoyMethod, req: &envoyRequest{""}, want: codes.InvalidArgument},
		{name: "envoy no token", ctx: context.Background(), method: envoyMethod, req: &envoyRequest{"edge"}, want: codes.Unauthenticated},
		{name: "envoy admin", ctx: md(bearer(adminToken)...), method: envoyMethod, req: &envoyRequest{"any"}, want: codes.OK, wantName: "ops"},

		// Admin.
		{name: "admin on Admin", ctx: md(bearer(adminToken)...), method: adminMethod, req: &limiterv1.ListPoliciesRequest{}, want: codes.OK, wantName: "ops"},
		{name: "admin with prefixes on Admin", ctx: md(bearer(narrowAdmToken)...), method: adminMethod, req: &limiterv1.ListPoliciesRequest{}, want: codes.OK, wantName: "tenant-admin"},
		{name: "client on Admin", ctx: md(bearer(clientToken)...), method: adminMethod, req: &limiterv1.ListPoliciesRequest{}, want: codes.PermissionDenied},
		{name: "all-keys client on Admin", ctx: md(bearer(allKeysToken)...), method: "/limiter.v1.Admin/ResetKey", req: &limiterv1.ResetKeyRequest{Key: "x"}, want: codes.PermissionDenied},
		{name: "client on ListMembers", ctx: md(bearer(clientToken)...), method: "/limiter.v1.Admin/ListMembers", req: &limiterv1.ListMembersRequest{}, want: codes.OK, wantName: "edge-gateway"},
		{name: "no token on ListMembers", ctx: context.Background(), method: "/limiter.v1.Admin/ListMembers", req: &limiterv1.ListMembersRequest{}, want: codes.Unauthenticated},
		{name: "peer secret on ListMembers", ctx: md(PeerSecretKey, peerSecret), method: "/limiter.v1.Admin/ListMembers", req: &limiterv1.ListMembersRequest{}, want: codes.Unauthenticated},
		{name: "no token on Admin", ctx: context.Background(), method: adminMethod, req: &limiterv1.ListPoliciesRequest{}, want: codes.Unauthenticated},
		{name: "peer secret on Admin", ctx: md(PeerSecretKey, peerSecret), method: adminMethod, req: &limiterv1.ListPoliciesRequest{}, want: codes.Unauthenticated},

		// Peer.
		{name: "peer secret on Peer", ctx: md(PeerSecretKey, peerSecret), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.OK, wantName: PeerName},
		{name: "wrong peer secret", ctx: md(PeerSecretKey, "guess"), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.Unauthenticated},
		{name: "two peer secrets", ctx: md(PeerSecretKey, peerSecret, PeerSecretKey, peerSecret), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.Unauthenticated},
		{name: "client on Peer", ctx: md(bearer(clientToken)...), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.PermissionDenied},
		{name: "admin on Peer", ctx: md(bearer(adminToken)...), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.PermissionDenied},
		{name: "wrong token on Peer", ctx: md(bearer("nope")...), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.Unauthenticated},
		{name: "nothing on Peer", ctx: context.Background(), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.Unauthenticated},
		{name: "peer secret, no peer secret configured", a: noPeer, ctx: md(PeerSecretKey, peerSecret), method: peerMethod, req: &limiterv1.PeerAllowBatchRequest{}, want: codes.PermissionDenied},

		// Open and unknown methods.
		{name: "health open", ctx: context.Background(), method: healthMethod, req: &healthpb.HealthCheckRequest{}, want: codes.OK},
		{name: "health open with wrong token", ctx: md(bearer("nope")...), method: "/grpc.health.v1.Health/Watch", req: &healthpb.HealthCheckRequest{}, want: codes.OK},
		{name: "reflection open", ctx: context.Background(), method: reflectMethod, req: struct{}{}, want: codes.OK},
		{name: "unknown service, admin", ctx: md(bearer(adminToken)...), method: "/other.v1.Thing/Do", req: struct{}{}, want: codes.PermissionDenied},
		{name: "unknown service, no token", ctx: context.Background(), method: "/other.v1.Thing/Do", req: struct{}{}, want: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := a
			if tt.a != nil {
				a = tt.a
			}
			called := false
			var gotID Identity
			var gotOK bool
			handler := func(ctx context.Context, req any) (any, error) {
				called = true
				gotID, gotOK = FromContext(ctx)
				return "ok", nil
			}
			resp, err := a.UnaryInterceptor()(tt.ctx, tt.req, &grpc.UnaryServerInfo{FullMethod: tt.method}, handler)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.want)
			}
			if tt.want != codes.OK {
				if called {
					t.Errorf("handler called, want not called")
				}
				if resp != nil {
					t.Errorf("resp = %v, want nil", resp)
				}
				for _, secret := range []string{clientToken, adminToken, peerSecret} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q reveals a secret", err)
					}
				}
				return
			}
			if !called {
				t.Fatalf("handler not called")
			}
			if gotOK != (tt.wantName != "") || gotID.Name != tt.wantName {
				t.Errorf("FromContext() = %+v, %v, want name %q", gotID, gotOK, tt.wantName)
			}
		})
	}
}

// fakeStream is a grpc.ServerStream that receives reqs in order.
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	reqs []string
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func (s *fakeStream) RecvMsg(m any) error {
	if len(s.reqs) == 0 {
		return io.EOF
	}
	m.(*limiterv1.AllowRequest).Key, s.reqs = s.reqs[0], s.reqs[1:]
	return nil
}

func TestStreamInterceptor(t *testing.T) {
	a := mustParse(t, testFile(), Config{LeaseKey: fakeLeaseKey})
	tests := []struct {
		name    string
		ctx     context.Context
		method  string
		keys    []string
		want    codes.Code // of the interceptor
		wantErr []codes.Code
	}{
		{name: "no token", ctx: context.Background(), method: allowMethod, want: codes.Unauthenticated},
		{name: "client on Admin", ctx: md(bearer(clientToken)...), method: adminMethod, want: codes.PermissionDenied},
		{name: "client on Peer", ctx: md(bearer(clientToken)...), method: peerMethod, want: codes.PermissionDenied},
		{name: "health open", ctx: context.Background(), method: "/grpc.health.v1.Health/Watch", want: codes.OK},
		{name: "keys checked per message", ctx: md(bearer(clientToken)...), method: allowMethod,
			keys: []string{"tenant:1", "other:1", "edge:1"}, want: codes.OK,
			wantErr: []codes.Code{codes.OK, codes.PermissionDenied, codes.OK, codes.Unknown /* io.EOF */}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []codes.Code
			handler := func(srv any, ss grpc.ServerStream) error {
				if tt.want == codes.OK && tt.method == allowMethod {
					if id, ok := FromContext(ss.Context()); !ok || id.Name != "edge-gateway" {
						t.Errorf("FromContext() = %+v, %v, want edge-gateway", id, ok)
					}
				}
				for range tt.wantErr {
					got = append(got, status.Code(ss.RecvMsg(&limiterv1.AllowRequest{})))
				}
				return nil
			}
			ss := &fakeStream{ctx: tt.ctx, reqs: tt.keys}
			err := a.StreamInterceptor()(nil, ss, &grpc.StreamServerInfo{FullMethod: tt.method}, handler)
			if c := status.Code(err); c != tt.want {
				t.Fatalf("code = %v (%v), want %v", c, err, tt.want)
			}
			for i := range tt.wantErr {
				if got[i] != tt.wantErr[i] {
					t.Errorf("RecvMsg #%d code = %v, want %v", i, got[i], tt.wantErr[i])
				}
			}
		})
	}
}

// fakeLimiter, fakeAdmin and fakePeer answer every call they implement.
type fakeLimiter struct {
	limiterv1.UnimplementedLimiterServer
}

func (fakeLimiter) Allow(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.AllowResponse, error) {
	id, _ := FromContext(ctx)
	return &limiterv1.AllowResponse{Allowed: true, Policy: id.Name}, nil
}

type fakeAdmin struct {
	limiterv1.UnimplementedAdminServer
}

func (fakeAdmin) ListPolicies(context.Context, *limiterv1.ListPoliciesRequest) (*limiterv1.ListPoliciesResponse, error) {
	return &limiterv1.ListPoliciesResponse{}, nil
}

type fakePeer struct {
	limiterv1.UnimplementedPeerServer
}

func (fakePeer) AllowBatch(context.Context, *limiterv1.PeerAllowBatchRequest) (*limiterv1.PeerAllowBatchResponse, error) {
	return &limiterv1.PeerAllowBatchResponse{}, nil
}

// startBufconn serves the fakes and health behind a's interceptor over
// bufconn and returns a dialer for clients with the given options.
func startBufconn(t *testing.T, a *Authenticator) func(opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(a.UnaryInterceptor()), grpc.ChainStreamInterceptor(a.StreamInterceptor()))
	limiterv1.RegisterLimiterServer(g, fakeLimiter{})
	limiterv1.RegisterAdminServer(g, fakeAdmin{})
	limiterv1.RegisterPeerServer(g, fakePeer{})
	healthpb.RegisterHealthServer(g, health.NewServer())
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return func(opts ...grpc.DialOption) *grpc.ClientConn {
		t.Helper()
		opts = append(opts,
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		cc, err := grpc.NewClient("passthrough:///bufnet", opts...)
		if err != nil {
			t.Fatalf("grpc.NewClient() error = %v", err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
}

// TestOverBufconn runs the rules end to end with TokenCredentials and
// PeerCredentials on the client side.
func TestOverBufconn(t *testing.T) {
	dial := startBufconn(t, mustParse(t, testFile(), Config{LeaseKey: fakeLeaseKey}))
	allow := func(cc *grpc.ClientConn, key string) error {
		resp, err := limiterv1.NewLimiterClient(cc).Allow(context.Background(), &limiterv1.AllowRequest{Key: key})
		if err == nil && resp.GetPolicy() != "edge-gateway" && resp.GetPolicy() != "ops" {
			t.Errorf("handler saw identity %q, want a token name", resp.GetPolicy())
		}
		return err
	}
	admin := func(cc *grpc.ClientConn) error {
		_, err := limiterv1.NewAdminClient(cc).ListPolicies(context.Background(), &limiterv1.ListPoliciesRequest{})
		return err
	}
	peer := func(cc *grpc.ClientConn) error {
		_, err := limiterv1.NewPeerClient(cc).AllowBatch(context.Background(), &limiterv1.PeerAllowBatchRequest{})
		return err
	}
	healthCheck := func(cc *grpc.ClientConn) error {
		_, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err
	}
	none := dial()
	client := dial(grpc.WithPerRPCCredentials(TokenCredentials(clientToken)))
	wrong := dial(grpc.WithPerRPCCredentials(TokenCredentials("wrong")))
	adm := dial(grpc.WithPerRPCCredentials(TokenCredentials(adminToken)))
	node := dial(grpc.WithPerRPCCredentials(PeerCredentials(peerSecret)))

	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"no metadata", func() error { return allow(none, "tenant:1") }, codes.Unauthenticated},
		{"wrong token", func() error { return allow(wrong, "tenant:1") }, codes.Unauthenticated},
		{"client on allowed prefix", func() error { return allow(client, "tenant:1") }, codes.OK},
		{"client on other prefix", func() error { return allow(client, "other:1") }, codes.PermissionDenied},
		{"admin on Admin", func() error { return admin(adm) }, codes.OK},
		{"client on Admin", func() error { return admin(client) }, codes.PermissionDenied},
		{"client on Peer", func() error { return peer(client) }, codes.PermissionDenied},
		{"admin on Peer", func() error { return peer(adm) }, codes.PermissionDenied},
		{"peer secret on Peer", func() error { return peer(node) }, codes.OK},
		{"peer secret on Limiter", func() error { return allow(node, "tenant:1") }, codes.Unauthenticated},
		{"health open", func() error { return healthCheck(none) }, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(tt.call()); got != tt.want {
				t.Errorf("code = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCredentialsMetadata(t *testing.T) {
	tests := []struct {
		name     string
		got      map[string]string
		wantKey  string
		wantVal  string
		security bool
	}{
		{"token", mustMetadata(t, TokenCredentials("abc").GetRequestMetadata), AuthorizationKey, "Bearer abc", TokenCredentials("abc").RequireTransportSecurity()},
		{"peer", mustMetadata(t, PeerCredentials("s3").GetRequestMetadata), PeerSecretKey, "s3", PeerCredentials("s3").RequireTransportSecurity()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.got) != 1 || tt.got[tt.wantKey] != tt.wantVal {
				t.Errorf("GetRequestMetadata() = %v, want map[%s:%s]", tt.got, tt.wantKey, tt.wantVal)
			}
			if tt.security {
				t.Errorf("RequireTransportSecurity() = true, want false")
			}
		})
	}
}

func mustMetadata(t *testing.T, f func(context.Context, ...string) (map[string]string, error)) map[string]string {
	t.Helper()
	m, err := f(context.Background())
	if err != nil {
		t.Fatalf("GetRequestMetadata() error = %v", err)
	}
	return m
}
