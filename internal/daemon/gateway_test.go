package daemon

import (
	"context"
	"fmt"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/internal/auth"
	"github.com/limiterd/limiterd/internal/envoy"
	"github.com/limiterd/limiterd/internal/limiter"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

const (
	clientToken = "client-token-0123456789"
	adminToken  = "admin-token-0123456789"
	peerSecret  = "peer-secret-0123456789"
)

func authFile(t *testing.T) *auth.Authenticator {
	t.Helper()
	yaml := fmt.Sprintf(`tokens:
  - name: gw
    sha256: %s
    role: client
    key_prefixes: ["tenant:", "envoy:edge:"]
  - name: ops
    sha256: %s
    role: admin
peer_secret_sha256: %s
`, auth.HashToken(clientToken), auth.HashToken(adminToken), auth.HashToken(peerSecret))
	a, err := auth.Parse([]byte(yaml), auth.Config{LeaseKey: func(id string) (string, error) {
		l, err := limiter.DecodeLeaseID(id)
		return l.Key, err
	}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func dialToken(t *testing.T, addr, token string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.TokenCredentials(token)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestAuthInCluster runs 3 nodes with auth on: clients need tokens, the
// nodes reach each other's Peer service with the cluster secret, and a
// client token cannot call Peer or Admin.
func TestAuthInCluster(t *testing.T) {
	a := authFile(t)
	nodes := startCluster(t, 3, func(c *Config) { c.Auth = a; c.PeerSecret = peerSecret })
	ctx := context.Background()
	tests := []struct {
		name  string
		token string
		call  func(conn *grpc.ClientConn) error
		want  codes.Code
	}{
		{"no token", "", func(c *grpc.ClientConn) error {
			_, err := limiterv1.NewLimiterClient(c).Allow(ctx, &limiterv1.AllowRequest{Key: "tenant:1"})
			return err
		}, codes.Unauthenticated},
		{"wrong token", "nope", func(c *grpc.ClientConn) error {
			_, err := limiterv1.NewLimiterClient(c).Allow(ctx, &limiterv1.AllowRequest{Key: "tenant:1"})
			return err
		}, codes.Unauthenticated},
		{"client on its prefix", clientToken, func(c *grpc.ClientConn) error {
			// Keys of every owner: forwarding between nodes carries the peer secret.
			for i := range 20 {
				if _, err := limiterv1.NewLimiterClient(c).Allow(ctx, &limiterv1.AllowRequest{Key: fmt.Sprintf("tenant:%d", i)}); err != nil {
					return err
				}
			}
			return nil
		}, codes.OK},
		{"client outside its prefix", clientToken, func(c *grpc.ClientConn) error {
			_, err := limiterv1.NewLimiterClient(c).Allow(ctx, &limiterv1.AllowRequest{Key: "other:1"})
			return err
		}, codes.PermissionDenied},
		{"client on admin", clientToken, func(c *grpc.ClientConn) error {
			_, err := limiterv1.NewAdminClient(c).ListPolicies(ctx, &limiterv1.ListPoliciesRequest{})
			return err
		}, codes.PermissionDenied},
		{"admin on admin", adminToken, func(c *grpc.ClientConn) error {
			_, err := limiterv1.NewAdminClient(c).ListMembers(ctx, &limiterv1.ListMembersRequest{})
			return err
		}, codes.OK},
		{"client on peer", clientToken, func(c *grpc.ClientConn) error {
			_, err := limiterv1.NewPeerClient(c).FetchState(ctx, &limiterv1.FetchStateRequest{})
			return err
		}, codes.PermissionDenied},
		{"envoy with client token", clientToken, func(c *grpc.ClientConn) error {
			_, err := rlsv3.NewRateLimitServiceClient(c).ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "edge",
				Descriptors: []*ratelimitv3.RateLimitDescriptor{{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "ip", Value: "1.2.3.4"}}}}})
			return err
		}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(dialToken(t, nodes[1].GRPCAddr(), tt.token))
			if status.Code(err) != tt.want {
				t.Errorf("error = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestEnvoyThroughCluster sends Envoy requests to every node: one
// descriptor value's counter is exact cluster-wide.
func TestEnvoyThroughCluster(t *testing.T) {
	ec, err := envoy.ParseConfig([]byte("envoy:\n  domains:\n    - domain: edge\n      descriptors:\n        - key: ip\n          policy: hundred\n"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := startCluster(t, 3, func(c *Config) { c.Envoy = ec })
	ok, over := 0, 0
	for i := range 150 {
		c := rlsv3.NewRateLimitServiceClient(dial(t, nodes[i%3].GRPCAddr()))
		res, err := c.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "edge",
			Descriptors: []*ratelimitv3.RateLimitDescriptor{{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "ip", Value: "10.0.0.1"}}}}})
		if err != nil {
			t.Fatal(err)
		}
		if res.GetOverallCode() == rlsv3.RateLimitResponse_OK {
			ok++
		} else {
			over++
		}
	}
	if ok != 100 || over != 50 {
		t.Errorf("OK %d, OVER_LIMIT %d; want 100 and 50", ok, over)
	}
}
