package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// Errors returned by New.
var (
	// ErrTokenNeedsTLS: a token was given for a plaintext connection to an
	// address that is neither loopback nor a unix socket. Use WithTLS, or
	// WithInsecure to send it in cleartext anyway.
	ErrTokenNeedsTLS = errors.New("client: a token over plaintext is only sent to loopback or unix targets")
	// ErrBadTarget: the target is empty.
	ErrBadTarget = errors.New("client: empty target")
)

// Client talks to one limiterd address (a node, a load balancer or a unix
// socket). It is safe for concurrent use; make one per process and share it.
type Client struct {
	conn    *grpc.ClientConn
	limiter limiterv1.LimiterClient
	admin   limiterv1.AdminClient
	router  *router // nil without WithRouting
}

// Option configures New.
type Option func(*options)

type options struct {
	token    string
	tls      *tls.Config
	insecure bool
	timeout  time.Duration
	dial     []grpc.DialOption
	routing  time.Duration // refresh interval; zero: no routing
}

// WithToken sends token as "authorization: Bearer <token>" on every call.
// An empty token sends nothing.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTLS dials with TLS using cfg (a nil cfg means the system roots). For
// mTLS put the client certificate in cfg.Certificates. Default plaintext.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.tls = cfg
	}
}

// WithInsecure allows WithToken over plaintext to a non-loopback target,
// where the token travels in cleartext. Only for trusted networks.
func WithInsecure() Option { return func(o *options) { o.insecure = true } }

// WithTimeout bounds every call (Allow, Release and Admin calls) by d unless
// the call's context has an earlier deadline. Zero (the default) means the
// context alone decides.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithDialOptions appends gRPC dial options, after the ones New sets, so
// they win where they conflict.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// New returns a Client for target: "host:port", "unix:///path/to.sock", or
// any gRPC target ("dns:///limiterd:8081"). It does not connect: the first
// call does, and reconnects are automatic.
func New(target string, opts ...Option) (*Client, error) {
	if target == "" {
		return nil, ErrBadTarget
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var dial []grpc.DialOption
	if o.tls != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(o.tls)))
	} else {
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if o.token != "" {
		if o.tls == nil && !o.insecure && !IsLocal(target) {
			return nil, fmt.Errorf("%w: %s", ErrTokenNeedsTLS, target)
		}
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: o.token, secure: o.tls != nil}))
	}
	if o.timeout > 0 {
		dial = append(dial, grpc.WithChainUnaryInterceptor(timeoutInterceptor(o.timeout)))
	}
	dial = append(dial, grpc.WithUserAgent("limiterd-client"))
	dial = append(dial, o.dial...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", target, err)
	}
	c := &Client{conn: conn, limiter: limiterv1.NewLimiterClient(conn), admin: limiterv1.NewAdminClient(conn)}
	if o.routing > 0 {
		c.router = newRouter(c.admin, dial, o.routing)
	}
	return c, nil
}

// Close closes the connection (and, with WithRouting, those to the
// members). Calls in progress fail; calls after Close fail with
// codes.Canceled.
func (c *Client) Close() error {
	if c.router != nil {
		c.router.close()
	}
	return c.conn.Close()
}

// Admin returns the raw limiter.v1.Admin client over the same connection,
// with the same token and timeout.
func (c *Client) Admin() limiterv1.AdminClient { return c.admin }

// Limiter returns the raw limiter.v1.Limiter client over the same
// connection.
func (c *Client) Limiter() limiterv1.LimiterClient { return c.limiter }

// Conn returns the underlying gRPC connection, for other services on the
// same port (health, the Envoy rate limit service).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// IsLocal reports whether target is a unix socket or a loopback address
// (127.0.0.0/8, ::1, localhost), where plaintext is the default.
func IsLocal(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	for _, scheme := range []string{"dns:///", "passthrough:///", "ipv4:", "ipv6:"} {
		target = strings.TrimPrefix(target, scheme)
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// bearer is a credentials.PerRPCCredentials sending a bearer token.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false for plaintext connections New allowed
// (loopback, unix, or WithInsecure).
func (b bearer) RequireTransportSecurity() bool { return b.secure }

func timeoutInterceptor(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
