// Package auth is bearer-token authentication and authorization for
// limiterd's gRPC port, the peer secret nodes present to each other, and TLS
// configuration for both ends.
//
// # Auth file
//
// Auth is off unless the daemon is given an auth file (--auth-file). Load or
// Parse reads it:
//
//	tokens:
//	  - name: edge-gateway          # shown in errors and FromContext; unique
//	    sha256: 9f86d081...0a08     # hex sha256 of the token, never the token
//	    role: client                # client or admin
//	    key_prefixes: ["tenant:", "edge:"]
//	  - name: ops
//	    sha256: 60303ae2...cb01
//	    role: admin                 # no key_prefixes: every key
//	peer_secret_sha256: 5994471a...6b5  # optional; hash of the cluster secret
//
// A client token must list key_prefixes; ["*"] means every key. An admin
// token without key_prefixes may use every key; with them, its Limiter and
// Envoy calls are limited to those prefixes like a client's (its Admin calls
// are not). Prefixes are plain string prefixes: end them with a separator
// ("tenant:") so "tenant" does not also allow "tenants-archive". Unknown
// fields, duplicate names or hashes, and the hash of the empty string are
// errors that name the field.
//
// An operator makes a token and its hash with
//
//	TOKEN=$(openssl rand -hex 32)
//	printf %s "$TOKEN" | sha256sum
//
// or HashToken in Go.
//
// # Rules
//
// UnaryInterceptor and StreamInterceptor apply one rule per service:
// Limiter needs a token whose prefixes cover the key; Envoy's
// ShouldRateLimit for domain D needs a token whose prefixes cover
// "envoy:D:" (so "envoy:" allows every domain); Admin needs an admin token;
// Peer needs the peer secret and refuses every token; health and reflection
// are open. Missing or wrong credentials are UNAUTHENTICATED, valid ones
// that may not make the call PERMISSION_DENIED.
//
// # Caveats
//
//   - Tokens are looked up in a map keyed by the sha256 of what the caller
//     sent, which is not a constant-time comparison. What timing could reveal
//     is how much of sha256(guess) matches a stored hash; turning that into a
//     token is a preimage search on sha256, so it leaks nothing useful as
//     long as tokens are long random strings (32 random bytes). Hashes are
//     unsalted and fast for the same reason: they protect high-entropy
//     tokens, not passwords. The peer secret is compared in constant time.
//   - Tokens and the peer secret cross the network as they are: without TLS
//     anyone on the path can read and replay them. PeerCredentials and
//     TokenCredentials do not insist on TLS so that loopback clusters and
//     tests work; production should run ServerTLS on the gRPC port.
//   - The auth file and TLS files are read once; changing them takes a
//     restart. Revoke a token by deleting its entry and restarting every
//     node.
//   - Open methods: health (so load balancers and Kubernetes probes work)
//     and reflection (which reveals the API's schema, not data).
//   - A method with no rule is refused, so a new service must be added to
//     the rules before it can be called with auth on.
//   - With a nil Config.LeaseKey, Release works only for tokens that may use
//     every key.
//   - Mutual TLS proves a client holds a certificate from the client CA; it
//     does not replace the peer secret, since clients and nodes may hold
//     certificates from the same CA.
package auth
