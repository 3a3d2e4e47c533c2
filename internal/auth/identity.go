package auth

import "context"

// Role is what a token may do. See UnaryInterceptor for the rules.
type Role string

// Roles. RoleClient and RoleAdmin are written in the auth file; RolePeer is
// the identity of a node that presented the cluster's peer secret.
const (
	// RoleClient may call the Limiter and Envoy rate limit services for keys
	// under its prefixes.
	RoleClient Role = "client"
	// RoleAdmin may call everything a client may (for its prefixes, or every
	// key when it has none) and the Admin service.
	RoleAdmin Role = "admin"
	// RolePeer may call only the internal Peer service.
	RolePeer Role = "peer"
)

// PeerName is the Identity.Name of a caller that presented the peer secret.
const PeerName = "peer"

// Identity is who made a call, as the interceptors found out.
type Identity struct {
	// Name is the token's name from the auth file, or PeerName.
	Name string
	// Role is the token's role, or RolePeer.
	Role Role
}

type identityKey struct{}

// NewContext returns a copy of ctx that carries id. The interceptors call it;
// tests of other packages may too.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// FromContext returns the Identity the interceptors put in ctx. ok is false
// when there is none: auth is off, or the method is open (health,
// reflection) and needs no token.
func FromContext(ctx context.Context) (id Identity, ok bool) {
	id, ok = ctx.Value(identityKey{}).(Identity)
	return id, ok
}
