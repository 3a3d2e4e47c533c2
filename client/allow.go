package client

import (
	"context"
	"fmt"
	"time"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// Decision codes, from the seed's 429 error body.
const (
	// CodeRateLimited: request rate limit exceeded (the window is full).
	CodeRateLimited = 122
	// CodeConcurrency: concurrent requests limit exceeded (every lease taken).
	CodeConcurrency = 123
	// CodeUnavailable is the code of the 503 body Middleware writes when
	// limiterd cannot be asked and FailOpen is false. It is not a limiterd
	// code: the seeds have none for this, so it repeats the HTTP status.
	CodeUnavailable = 503
)

// Decision is limiterd's answer to Allow. Denied is a normal Decision, not
// an error.
type Decision struct {
	// Allowed is the decision.
	Allowed bool
	// Code is 0 when allowed, CodeRateLimited (122) or CodeConcurrency (123)
	// when denied.
	Code int32
	// Policy is the policy that decided.
	Policy string
	// Limit is the window's limit; Remaining is what is left of it after
	// this call.
	Limit, Remaining int64
	// RetryAfter is zero when allowed; when denied, the earliest wait after
	// which the same call can be allowed if nothing else happens.
	RetryAfter time.Duration
	// ResetAfter is the wait until the window has no counted hits left.
	ResetAfter time.Duration
	// LeaseID is non-empty when the policy caps concurrency and the call was
	// allowed (not a dry run): Release it when the request ends.
	LeaseID string
	// InFlight is the leases held for the key now; MaxConcurrent the cap
	// (0 = none).
	InFlight, MaxConcurrent int64
	// Headers are the HTTP headers to add to the response: RateLimit,
	// RateLimit-Policy, X-RateLimit-Limit|Remaining|Reset, and Retry-After
	// when denied. Never nil.
	Headers map[string]string
	// ErrorBody is the exact JSON body to return with the 429 (the seed's
	// shape); empty when allowed.
	ErrorBody string
	// RequestID is the id in the error body (the one given, or one limiterd
	// made); empty when allowed.
	RequestID string
	// Degraded is true when a cluster decided without the key's owner.
	Degraded bool
	// Response is the raw gRPC answer, for fields this struct leaves out.
	Response *limiterv1.AllowResponse
}

// AllowOption sets a field of the AllowRequest.
type AllowOption func(*limiterv1.AllowRequest)

// Policy names the policy; empty (the default) means "default".
func Policy(name string) AllowOption { return func(r *limiterv1.AllowRequest) { r.Policy = name } }

// Hits counts n requests at once; 0 (the default) means 1.
func Hits(n int64) AllowOption { return func(r *limiterv1.AllowRequest) { r.Hits = n } }

// DryRun answers as if counted but changes nothing and takes no lease.
func DryRun() AllowOption { return func(r *limiterv1.AllowRequest) { r.DryRun = true } }

// Path is the gateway's request path, echoed in the error body.
func Path(p string) AllowOption { return func(r *limiterv1.AllowRequest) { r.Path = p } }

// RequestID is echoed in the error body; limiterd makes one when empty.
func RequestID(id string) AllowOption { return func(r *limiterv1.AllowRequest) { r.RequestId = id } }

// Allow asks whether key may go on. It blocks for one RPC. The error is a
// wrapped gRPC status: INVALID_ARGUMENT (bad key or hits), NOT_FOUND
// (unknown policy), UNAVAILABLE (unreachable or draining), ...
func (c *Client) Allow(ctx context.Context, key string, opts ...AllowOption) (*Decision, error) {
	req := &limiterv1.AllowRequest{Key: key}
	for _, o := range opts {
		o(req)
	}
	res, err := c.allow(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("limiterd allow %q: %w", key, err)
	}
	return decisionOf(res), nil
}

// Release ends a lease from Decision.LeaseID and returns the leases still
// held for its key. NOT_FOUND when the lease is unknown, expired or already
// released. Call it with a context that outlives the request's (e.g.
// context.WithoutCancel) so a client hanging up does not leak the lease
// until its TTL.
func (c *Client) Release(ctx context.Context, leaseID string) (inFlight int64, err error) {
	res, err := c.limiter.Release(ctx, &limiterv1.ReleaseRequest{LeaseId: leaseID})
	if err != nil {
		return 0, fmt.Errorf("limiterd release: %w", err)
	}
	return res.GetInFlight(), nil
}

func decisionOf(res *limiterv1.AllowResponse) *Decision {
	d := &Decision{
		Allowed:       res.GetAllowed(),
		Code:          res.GetCode(),
		Policy:        res.GetPolicy(),
		Limit:         res.GetLimit(),
		Remaining:     res.GetRemaining(),
		RetryAfter:    res.GetRetryAfter().AsDuration(),
		ResetAfter:    res.GetResetAfter().AsDuration(),
		LeaseID:       res.GetLeaseId(),
		InFlight:      res.GetInFlight(),
		MaxConcurrent: res.GetMaxConcurrent(),
		Headers:       res.GetHeaders(),
		ErrorBody:     res.GetError().GetBody(),
		RequestID:     res.GetError().GetRequestId(),
		Degraded:      res.GetDegraded(),
		Response:      res,
	}
	if d.Headers == nil {
		d.Headers = map[string]string{}
	}
	return d
}
