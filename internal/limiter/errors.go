package limiter

import "errors"

// Errors returned by the limiter. Going over a limit is not an error: it is
// a Result with Allowed false.
var (
	// ErrUnknownPolicy: the request names a policy that does not exist.
	ErrUnknownPolicy = errors.New("limiter: unknown policy")
	// ErrBadKey: an empty key, one over MaxKeyLen bytes, or not valid UTF-8.
	ErrBadKey = errors.New("limiter: invalid key")
	// ErrBadHits: a negative number of hits.
	ErrBadHits = errors.New("limiter: negative hits")
	// ErrBadLeaseID: a lease id that this service did not make.
	ErrBadLeaseID = errors.New("limiter: malformed lease id")
	// ErrLeaseNotFound: the lease is unknown, expired or already released.
	ErrLeaseNotFound = errors.New("limiter: lease not found")
	// ErrPolicyExists: creating a policy whose name exists.
	ErrPolicyExists = errors.New("limiter: policy exists")
	// ErrKeyNotFound: the key holds no state under the policy.
	ErrKeyNotFound = errors.New("limiter: key not found")
	// ErrClosed: the limiter was closed.
	ErrClosed = errors.New("limiter: closed")
)
