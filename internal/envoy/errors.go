package envoy

import "errors"

// Errors returned by this package. Check them with errors.Is.
var (
	// ErrInvalidConfig is wrapped by every error of ParseConfig, Validate and
	// ValidatePolicies; the message names the domain, the descriptor entry
	// and the field.
	ErrInvalidConfig = errors.New("envoy: invalid config")

	// ErrConcurrencyPolicy means a descriptor resolved to a policy with a
	// concurrency cap (max_concurrent > 0). The Envoy API has no release, so
	// a lease taken through it would hold its slot until lease_ttl; such
	// policies are refused (see the package doc).
	ErrConcurrencyPolicy = errors.New("envoy: policy caps concurrency, which the Envoy rate limit API cannot release")

	// errBadRequest marks a malformed ShouldRateLimit request
	// (INVALID_ARGUMENT).
	errBadRequest = errors.New("bad request")
)
