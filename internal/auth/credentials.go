package auth

import (
	"context"

	"google.golang.org/grpc/credentials"
)

// PeerCredentials returns per-call credentials that send secret in the
// x-limiterd-peer metadata, for a node's outgoing calls to other nodes' Peer
// service: grpc.WithPerRPCCredentials(auth.PeerCredentials(secret)).
//
// They do not require transport security, so loopback clusters and tests
// work without TLS; the secret then crosses the network in clear. In
// production, run the gRPC port with TLS (ServerTLS, ClientTLS). It is safe
// for concurrent use.
func PeerCredentials(secret string) credentials.PerRPCCredentials {
	return staticCredentials{key: PeerSecretKey, value: secret}
}

// TokenCredentials returns per-call credentials that send "Bearer <token>"
// in the authorization metadata, for limiterctl, the Go client and tests.
// Like PeerCredentials, they do not require transport security: use TLS
// anywhere but loopback. It is safe for concurrent use.
func TokenCredentials(token string) credentials.PerRPCCredentials {
	return staticCredentials{key: AuthorizationKey, value: "Bearer " + token}
}

// staticCredentials sends one fixed metadata pair with every call.
type staticCredentials struct{ key, value string }

func (c staticCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{c.key: c.value}, nil
}

func (c staticCredentials) RequireTransportSecurity() bool { return false }
