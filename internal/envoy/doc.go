// Package envoy implements Envoy's Rate Limit Service API,
// envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, so that
// Envoy, Istio, Envoy Gateway, Contour and Gloo can use limiterd in place of
// envoyproxy/ratelimit. It is another front door beside package server and
// decides with the same core (a Decider: the limiter, or the cluster router).
//
// A Config, read from the "envoy:" section of the limiterd YAML file by
// ParseConfig, maps a domain and a chain of descriptor entries (key,
// optional exact or "prefix*" value, nested entries) to a limiterd policy,
// much like envoyproxy/ratelimit's config but naming policies instead of
// inline limits. Each request descriptor is walked down its domain's tree
// entry by entry; the policy of the node its last entry reaches limits it,
// under the limiter key CounterKey builds from the domain and every entry's
// key and value, so every distinct descriptor value is its own counter
// (e.g. "envoy:edge:tenant=acme:plan=free"). A descriptor that matches no
// entry, or ends on an entry without a policy, is not limited (OK), as in
// envoyproxy/ratelimit.
//
// Unlike envoyproxy/ratelimit, windows slide and may have any length from
// 1s to 24h, hits_addend is honoured (per request and per descriptor; 0
// means 1), and a denied response carries Retry-After, the RateLimit
// headers and the 429 JSON error body (code 122) in raw_body.
//
// # Response
//
// overall_code is OVER_LIMIT when any descriptor is over its limit. Every
// descriptor gets a status: unmatched ones just OK; matched ones their code,
// current_limit (requests_per_unit = the policy's limit; unit SECOND,
// MINUTE, HOUR or DAY when the window is exactly one of those, else
// UNKNOWN; name "policy: limit per window", e.g. "default: 600 per 5m0s"),
// limit_remaining and duration_until_reset (the wait until the sliding
// window holds no counted hit). response_headers_to_add carries
// server.Headers of the most restrictive descriptor (a denied one with the
// longest Retry-After, else the one with the fewest remaining hits):
// RateLimit, RateLimit-Policy, X-RateLimit-Limit, X-RateLimit-Remaining,
// X-RateLimit-Reset, and Retry-After when denied. When denied, raw_body is
// the seed's JSON error body from server.ErrorFor, with Content-Type
// application/json, a request-id made for the call, and the path taken from
// the first descriptor entry keyed "path" or ":path".
//
// # Errors
//
// An empty domain, no descriptors, a descriptor without entries or an
// entry without a key is INVALID_ARGUMENT. An unknown domain is not an
// error: every descriptor is OK. Policies named by the Config are checked
// at start (Config.ValidatePolicies); one deleted while running answers
// NOT_FOUND. Envoy treats every error alike, per its failure_mode_deny.
//
// # Caveats
//
//   - Concurrency caps: the Envoy API has no release call, so a lease taken
//     through it would hold its slot until lease_ttl. Policies with
//     max_concurrent > 0 are therefore refused: ValidatePolicies rejects
//     them at start, and a policy given a cap while running (Admin API)
//     makes calls that reach it fail with FAILED_PRECONDITION; a lease such
//     a call took is released at once when the Decider can Release, else it
//     expires after lease_ttl. Use the limiter.v1 API (Allow, then Release)
//     for concurrency limits.
//   - All or nothing, almost: when several descriptors of a call match a
//     policy, they are first checked without counting (dry run), and their
//     hits are counted only when all of them are allowed, so a denied call
//     counts nothing (envoyproxy/ratelimit counts every descriptor even when
//     one is over). A call with one matching descriptor needs only the
//     counting pass, since a denial counts nothing. Between the two passes
//     a concurrent call may take the last room of a descriptor; then the
//     call ends OVER_LIMIT although the descriptors counted before that one
//     keep their hits. This over-counts by at most one call's hits, and only
//     when keys are right at their limit. An error in the counting pass
//     leaves the same partial count.
//   - When a call is denied, the allowed descriptors of it report
//     limit_remaining as it was before the call (nothing was counted).
//   - The descriptor-level limit override (RateLimitDescriptor.limit) is
//     ignored: limits come from limiterd policies only. Descriptors with
//     is_negative_hits (refunds) are ignored and answered OK; the sliding
//     window cannot un-count hits.
//   - hits_addend of 0 counts 1 hit, like limiter.v1; a hits_addend above
//     a policy's limit is denied (122), never partly counted.
//   - A limiter key longer than 512 bytes (limiter.MaxKeyLen) keeps its
//     first 447 bytes and ends in "#" and the SHA-256 of the whole key, so
//     long values (paths, JWT claims) still get a counter of their own.
//   - Envoy's own enable_x_ratelimit_headers derives a window from
//     current_limit.unit, which is UNKNOWN for windows such as 5m; leave it
//     off and rely on the headers this service adds.
//   - Shadow policies always answer OK, as in limiter.v1.
//   - RLS requests carry no request id, so the id in raw_body is made per
//     call and is not Envoy's x-request-id.
//   - The Config is fixed when the Service is made; changing the envoy
//     section needs a restart (policies themselves may change at run time).
package envoy
