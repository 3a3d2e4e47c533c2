package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"time"
)

// DefaultMiddlewareTimeout bounds the Allow call of Middleware when
// MiddlewareConfig.Timeout is zero.
const DefaultMiddlewareTimeout = 100 * time.Millisecond

// DegradedHeader is set to "true" on responses that went through without a
// real decision: limiterd could not be asked and FailOpen let the request
// in, or a cluster decided without the key's owner (Decision.Degraded).
const DegradedHeader = "X-RateLimit-Degraded"

// MiddlewareConfig configures Middleware. The zero value limits by client
// IP under the "default" policy and fails closed.
type MiddlewareConfig struct {
	// Key returns what to limit for a request: an API key, a tenant, ...
	// Default: the client IP from r.RemoteAddr (not X-Forwarded-For, which
	// a client can forge; behind a trusted proxy, parse it here). An empty
	// key is rejected by limiterd (INVALID_ARGUMENT) and then handled like
	// any other error, by FailOpen.
	Key func(r *http.Request) string
	// Policy names the policy for every request; empty means "default".
	Policy string
	// PolicyFunc, when set, picks the policy per request and wins over
	// Policy.
	PolicyFunc func(r *http.Request) string
	// Timeout bounds each Allow and Release call. Default
	// DefaultMiddlewareTimeout (100ms).
	Timeout time.Duration
	// FailOpen lets requests through (with DegradedHeader: true) when
	// limiterd errors or does not answer within Timeout. False (the
	// default) answers 503 with a JSON body in the seed's shape (code 503,
	// "Rate limiter unavailable").
	FailOpen bool
	// OnError, when set, is told of every failed Allow or Release call (for
	// logging or metrics). It must be safe for concurrent use.
	OnError func(r *http.Request, err error)
}

// Middleware returns net/http middleware that asks limiterd once per
// request, under cfg (see MiddlewareConfig):
//
//   - The key is cfg.Key(r); the call carries path r.URL.Path and request id
//     from the X-Request-Id header when present.
//   - Decision.Headers are added to every decided response.
//   - Denied: 429 with Decision.ErrorBody (the seed's JSON, code 122 or 123)
//     and Content-Type application/json; the handler is not called.
//   - Allowed with a lease: the lease is released when the handler returns,
//     also when it panics, with a context that survives the client hanging
//     up. A failed release is reported to OnError; the lease then frees its
//     slot after the policy's lease_ttl.
//   - limiterd unreachable or erroring: see MiddlewareConfig.FailOpen.
//
// The returned handler is safe for concurrent use.
func Middleware(c *Client, cfg MiddlewareConfig) func(http.Handler) http.Handler {
	if cfg.Key == nil {
		cfg.Key = ClientIP
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultMiddlewareTimeout
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := cfg.Policy
			if cfg.PolicyFunc != nil {
				name = cfg.PolicyFunc(r)
			}
			reqID := r.Header.Get("X-Request-Id")
			ctx, cancel := context.WithTimeout(r.Context(), cfg.Timeout)
			d, err := c.Allow(ctx, cfg.Key(r), Policy(name), Path(r.URL.Path), RequestID(reqID))
			cancel()
			if err != nil {
				if cfg.OnError != nil {
					cfg.OnError(r, err)
				}
				if cfg.FailOpen {
					w.Header().Set(DegradedHeader, "true")
					next.ServeHTTP(w, r)
					return
				}
				writeUnavailable(w, r, reqID)
				return
			}
			h := w.Header()
			for k, v := range d.Headers {
				h.Set(k, v)
			}
			if d.Degraded {
				h.Set(DegradedHeader, "true")
			}
			if !d.Allowed {
				h.Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusTooManyRequests)
				_, _ = w.Write([]byte(d.ErrorBody))
				return
			}
			if d.LeaseID != "" {
				defer func() {
					ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), cfg.Timeout)
					defer cancel()
					if _, err := c.Release(ctx, d.LeaseID); err != nil && cfg.OnError != nil {
						cfg.OnError(r, err)
					}
				}()
			}
			next.ServeHTTP(w, r)
		})
	}
}

// ClientIP returns the host part of r.RemoteAddr ("203.0.113.7", "::1"), or
// RemoteAddr itself when it has no port. It is Middleware's default key.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// unavailableBody is the seed's error body for the fail-closed 503.
type unavailableBody struct {
	Code       int    `json:"code"`
	Error      string `json:"error"`
	Message    string `json:"message"`
	HTTPStatus int    `json:"http_status"`
	HTTPReason string `json:"http_reason"`
	Path       string `json:"path"`
	Timestamp  string `json:"timestamp"`
	RequestID  string `json:"request-id"`
}

// timestampLayout is the seed's ISO-8601 extended offset date-time.
const timestampLayout = "2006-01-02T15:04:05.000-0700"

// writeUnavailable answers 503 in the seed's shape. The body says nothing
// about why limiterd failed; OnError gets the error.
func writeUnavailable(w http.ResponseWriter, r *http.Request, reqID string) {
	if reqID == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		reqID = hex.EncodeToString(b[:])
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(unavailableBody{
		Code:       CodeUnavailable,
		Error:      "Rate limiter unavailable",
		Message:    "the rate limiter could not be reached; try again later",
		HTTPStatus: http.StatusServiceUnavailable,
		HTTPReason: http.StatusText(http.StatusServiceUnavailable),
		Path:       r.URL.Path,
		Timestamp:  time.Now().UTC().Format(timestampLayout),
		RequestID:  reqID,
	})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write(bytes.TrimRight(buf.Bytes(), "\n"))
}
