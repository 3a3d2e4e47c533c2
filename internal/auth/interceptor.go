package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Metadata keys the interceptors read. gRPC metadata keys are lower case.
const (
	// AuthorizationKey carries "Bearer <token>".
	AuthorizationKey = "authorization"
	// PeerSecretKey carries the cluster's peer secret in clear; see
	// PeerCredentials.
	PeerSecretKey = "x-limiterd-peer"
)

// rule is what a method asks of its caller.
type rule int

const (
	ruleDeny  rule = iota // no rule for the method: fail closed
	ruleOpen              // no credentials needed
	ruleKey               // any token whose prefixes cover the request's key
	ruleEnvoy             // any token whose prefixes cover "envoy:<domain>:"
	ruleAdmin             // an admin token
	ruleToken             // any client or admin token
	rulePeer              // the peer secret
)

// Full method names and prefixes the rules match.
const (
	limiterPrefix    = "/limiter.v1.Limiter/"
	adminPrefix      = "/limiter.v1.Admin/"
	peerPrefix       = "/limiter.v1.Peer/"
	envoyMethod      = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
	membersMethod    = "/limiter.v1.Admin/ListMembers"
	healthPrefix     = "/grpc.health.v1.Health/"
	reflectionPrefix = "/grpc.reflection."
)

// EnvoyKeyPrefix is put before an Envoy rate limit domain to check it against
// a token's key prefixes: a ShouldRateLimit call for domain D is allowed when
// one of the token's prefixes is a prefix of "envoy:D:". So "envoy:" allows
// every domain and "envoy:edge:" exactly the domain "edge".
const EnvoyKeyPrefix = "envoy:"

func ruleFor(method string) rule {
	switch {
	case strings.HasPrefix(method, limiterPrefix):
		return ruleKey
	case method == envoyMethod:
		return ruleEnvoy
	case method == membersMethod:
		return ruleToken
	case strings.HasPrefix(method, adminPrefix):
		return ruleAdmin
	case strings.HasPrefix(method, peerPrefix):
		return rulePeer
	case strings.HasPrefix(method, healthPrefix), strings.HasPrefix(method, reflectionPrefix):
		return ruleOpen
	}
	return ruleDeny
}

// UnaryInterceptor returns an interceptor that authenticates and authorizes
// every unary call by its full method name:
//
//   - /limiter.v1.Limiter/*: a client or admin token whose key prefixes
//     cover the request's key (AllowRequest.key; for Release, the key the
//     lease id was issued for, via Config.LeaseKey).
//   - /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit: a client
//     or admin token whose key prefixes cover "envoy:<domain>:".
//   - /limiter.v1.Admin/ListMembers: any client or admin token, so that a
//     client can route keys to their owners (client.WithRouting); it tells
//     node names and addresses, nothing about keys.
//   - /limiter.v1.Admin/* otherwise: an admin token.
//   - /limiter.v1.Peer/*: the peer secret in x-limiterd-peer; client and admin
//     tokens are refused.
//   - /grpc.health.v1.Health/* and /grpc.reflection.*: open, nothing checked.
//   - anything else: refused (PERMISSION_DENIED), so a new service must be
//     given a rule here before it can be called.
//
// A missing, malformed or unknown token or peer secret is UNAUTHENTICATED; a
// known one that may not make the call is PERMISSION_DENIED; a request whose
// key cannot be checked because it is empty (or its lease id malformed) is
// INVALID_ARGUMENT. On success the handler's context carries the caller's
// Identity (see FromContext). The interceptor does not block.
func (a *Authenticator) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		r := ruleFor(info.FullMethod)
		if r == ruleOpen {
			return handler(ctx, req)
		}
		t, err := a.check(ctx, r, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if err := a.checkRequest(r, t, req); err != nil {
			return nil, err
		}
		return handler(NewContext(ctx, t.id), req)
	}
}

// StreamInterceptor returns the streaming counterpart of UnaryInterceptor,
// with the same rules. Credentials are checked when the stream opens; for
// methods with a key rule, every message received is checked too, and a
// message the token may not use fails RecvMsg with PERMISSION_DENIED.
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		r := ruleFor(info.FullMethod)
		if r == ruleOpen {
			return handler(srv, ss)
		}
		t, err := a.check(ss.Context(), r, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &stream{ServerStream: ss, ctx: NewContext(ss.Context(), t.id), a: a, r: r, t: t})
	}
}

// stream checks each received message and carries the Identity.
type stream struct {
	grpc.ServerStream
	ctx context.Context
	a   *Authenticator
	r   rule
	t   *token
}

func (s *stream) Context() context.Context { return s.ctx }

func (s *stream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.a.checkRequest(s.r, s.t, m)
}

// peerToken is the token a peer secret stands for.
var peerToken = &token{id: Identity{Name: PeerName, Role: RolePeer}}

// check authenticates the caller in ctx and checks r's role requirement. It
// returns the caller's token.
func (a *Authenticator) check(ctx context.Context, r rule, method string) (*token, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if r == rulePeer {
		return a.checkPeer(md)
	}
	t, err := a.bearer(md)
	if err != nil {
		return nil, err
	}
	switch r {
	case ruleKey, ruleEnvoy, ruleToken:
		return t, nil
	case ruleAdmin:
		if t.id.Role == RoleAdmin {
			return t, nil
		}
		return nil, status.Errorf(codes.PermissionDenied, "auth: token %q is not an admin token", t.id.Name)
	}
	return nil, status.Errorf(codes.PermissionDenied, "auth: no access rule for %s", method)
}

// bearer finds the token of the authorization metadata.
func (a *Authenticator) bearer(md metadata.MD) (*token, error) {
	vals := md.Get(AuthorizationKey)
	switch len(vals) {
	case 0:
		return nil, status.Error(codes.Unauthenticated, "auth: missing bearer token in authorization metadata")
	case 1:
	default:
		return nil, status.Error(codes.Unauthenticated, "auth: more than one authorization value")
	}
	scheme, secret, ok := strings.Cut(vals[0], " ")
	secret = strings.TrimLeft(secret, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || secret == "" {
		return nil, status.Error(codes.Unauthenticated, `auth: malformed authorization metadata, want "Bearer <token>"`)
	}
	// A map lookup is not constant-time, but it is keyed by the sha256 of
	// what the caller sent: timing can at most reveal how much of that hash
	// matches a stored one, and finding a token for a given hash prefix is
	// a preimage search on sha256. See the package doc.
	t, ok := a.tokens[sha256.Sum256([]byte(secret))]
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "auth: unknown token")
	}
	return t, nil
}

// CheckPeerSecret reports whether secret is the cluster's peer secret, for
// peer connections that are not gRPC calls (the peer wire): nil when it
// is, an UNAUTHENTICATED or PERMISSION_DENIED status error when not.
func (a *Authenticator) CheckPeerSecret(secret string) error {
	_, err := a.checkPeer(metadata.Pairs(PeerSecretKey, secret))
	return err
}

// checkPeer checks the peer secret; client and admin tokens are refused.
func (a *Authenticator) checkPeer(md metadata.MD) (*token, error) {
	vals := md.Get(PeerSecretKey)
	if len(vals) == 0 {
		if t, err := a.bearer(md); err == nil {
			return nil, status.Errorf(codes.PermissionDenied, "auth: token %q may not call the peer service", t.id.Name)
		}
		return nil, status.Errorf(codes.Unauthenticated, "auth: missing peer secret in %s metadata", PeerSecretKey)
	}
	if len(vals) > 1 {
		return nil, status.Errorf(codes.Unauthenticated, "auth: more than one %s value", PeerSecretKey)
	}
	if !a.hasPeer {
		return nil, status.Error(codes.PermissionDenied, "auth: peer service disabled: the auth file has no peer_secret_sha256")
	}
	h := sha256.Sum256([]byte(vals[0]))
	if subtle.ConstantTimeCompare(h[:], a.peer[:]) != 1 {
		return nil, status.Error(codes.Unauthenticated, "auth: wrong peer secret")
	}
	return peerToken, nil
}

// checkRequest checks the key a request names against t's prefixes.
func (a *Authenticator) checkRequest(r rule, t *token, req any) error {
	if t.allKeys || (r != ruleKey && r != ruleEnvoy) {
		return nil
	}
	var key string
	switch m := req.(type) {
	case interface{ GetKey() string }:
		key = m.GetKey()
		if key == "" {
			return status.Error(codes.InvalidArgument, "key is empty")
		}
	case interface{ GetLeaseId() string }:
		id := m.GetLeaseId()
		if id == "" {
			return status.Error(codes.InvalidArgument, "lease_id is empty")
		}
		if a.cfg.LeaseKey == nil {
			return status.Errorf(codes.PermissionDenied, "auth: token %q may not release leases: its prefixes cannot be checked", t.id.Name)
		}
		k, err := a.cfg.LeaseKey(id)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "lease_id: %v", err)
		}
		key = k
	case interface{ GetDomain() string }:
		if r != ruleEnvoy {
			break
		}
		d := m.GetDomain()
		if d == "" {
			return status.Error(codes.InvalidArgument, "domain is empty")
		}
		if !t.mayUse(EnvoyKeyPrefix + d + ":") {
			return status.Errorf(codes.PermissionDenied, "auth: token %q may not use domain %q", t.id.Name, d)
		}
		return nil
	}
	if key == "" {
		return status.Errorf(codes.PermissionDenied, "auth: token %q may use only some keys, and this request's key cannot be checked", t.id.Name)
	}
	if !t.mayUse(key) {
		return status.Errorf(codes.PermissionDenied, "auth: token %q may not use key %q", t.id.Name, key)
	}
	return nil
}
