// Package client is the Go client of limiterd: a typed wrapper around the
// limiter.v1 gRPC services and a net/http middleware that asks limiterd once
// per request.
//
//	c, err := client.New("127.0.0.1:8081", client.WithToken(os.Getenv("LIMITERD_TOKEN")))
//	if err != nil { ... }
//	defer c.Close()
//	d, err := c.Allow(ctx, "tenant:42", client.Policy("uploads"), client.Path("/v1/invoices"))
//	if err != nil { ... }        // limiterd unreachable, bad key, unknown policy, ...
//	if !d.Allowed { ... }        // 429 with d.ErrorBody and d.Headers
//	if d.LeaseID != "" { defer c.Release(context.WithoutCancel(ctx), d.LeaseID) }
//
// With WithRouting, Allow goes straight to the key's owner in a cluster
// instead of through the target, which would forward it.
//
// Going over a limit is a Decision with Allowed false, not an error. Errors
// are gRPC status errors (wrapped; use status.Code or errors.As to read
// them).
//
// # Caveats
//
// Without WithTLS the connection is plaintext. A token is then only sent to
// a loopback address or a unix socket; New refuses other targets unless
// WithInsecure is given. The Middleware trusts RemoteAddr, not
// X-Forwarded-For: behind a proxy, give it a Key function.
package client
