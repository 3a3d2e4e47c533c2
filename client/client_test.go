package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

func TestAllowAndRelease(t *testing.T) {
	c := newClient(t, startDaemon(t, uploads))
	ctx := testCtx(t)

	d, err := c.Allow(ctx, "user-7", Policy("uploads"))
	if err != nil {
		t.Fatalf("Allow() error = %v", err)
	}
	if !d.Allowed || d.Code != 0 || d.LeaseID == "" || d.InFlight != 1 || d.MaxConcurrent != 1 {
		t.Fatalf("Allow() = %+v, want allowed with a lease, in flight 1 of 1", d)
	}
	if d.Policy != "uploads" || d.Limit != 100 || d.Remaining != 99 || d.ErrorBody != "" {
		t.Errorf("Allow() = %+v, want uploads 99 of 100 and no error body", d)
	}
	if d.Headers["X-RateLimit-Remaining"] != "99" {
		t.Errorf("Headers = %v, want X-RateLimit-Remaining 99", d.Headers)
	}

	d2, err := c.Allow(ctx, "user-7", Policy("uploads"))
	if err != nil {
		t.Fatalf("second Allow() error = %v", err)
	}
	if d2.Allowed || d2.Code != CodeConcurrency || d2.LeaseID != "" {
		t.Fatalf("second Allow() = %+v, want denied 123 without a lease", d2)
	}

	n, err := c.Release(ctx, d.LeaseID)
	if err != nil || n != 0 {
		t.Fatalf("Release() = %d, %v, want 0, nil", n, err)
	}
	if _, err := c.Release(ctx, d.LeaseID); status.Code(err) != codes.NotFound {
		t.Errorf("second Release() error = %v, want NotFound", err)
	}
}

func TestAllowDenied(t *testing.T) {
	c := newClient(t, startDaemon(t, tiny))
	ctx := testCtx(t)
	for i := range 2 {
		if d, err := c.Allow(ctx, "k", Policy("tiny")); err != nil || !d.Allowed {
			t.Fatalf("Allow() #%d = %+v, %v, want allowed", i+1, d, err)
		}
	}
	d, err := c.Allow(ctx, "k", Policy("tiny"), Path("/v1/invoices"), RequestID("req-1"))
	if err != nil {
		t.Fatalf("Allow() error = %v", err)
	}
	if d.Allowed || d.Code != CodeRateLimited || d.RetryAfter <= 0 || d.Remaining != 0 || d.RequestID != "req-1" {
		t.Fatalf("Allow() = %+v, want denied 122 with a retry after", d)
	}
	if d.Headers["Retry-After"] == "" {
		t.Errorf("Headers = %v, want Retry-After", d.Headers)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(d.ErrorBody), &body); err != nil {
		t.Fatalf("ErrorBody %q: %v", d.ErrorBody, err)
	}
	for k, want := range map[string]any{"code": 122.0, "http_status": 429.0, "path": "/v1/invoices", "request-id": "req-1"} {
		if body[k] != want {
			t.Errorf("ErrorBody[%q] = %v, want %v", k, body[k], want)
		}
	}
}

func TestAllowOptions(t *testing.T) {
	c := newClient(t, startDaemon(t))
	ctx := testCtx(t)
	tests := []struct {
		name          string
		opts          []AllowOption
		wantRemaining int64
	}{
		{"dry run counts nothing", []AllowOption{DryRun()}, 599},
		{"one hit", nil, 599},
		{"three hits", []AllowOption{Hits(3)}, 596},
		{"dry run after", []AllowOption{DryRun(), Hits(6)}, 590},
		{"dry runs changed nothing", []AllowOption{DryRun()}, 595},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := c.Allow(ctx, "opts", tt.opts...)
			if err != nil || !d.Allowed || d.Remaining != tt.wantRemaining {
				t.Errorf("Allow() = %+v, %v, want remaining %d", d, err, tt.wantRemaining)
			}
		})
	}
}

func TestAllowErrors(t *testing.T) {
	c := newClient(t, startDaemon(t))
	ctx := testCtx(t)
	tests := []struct {
		name string
		key  string
		opts []AllowOption
		want codes.Code
	}{
		{"empty key", "", nil, codes.InvalidArgument},
		{"negative hits", "k", []AllowOption{Hits(-1)}, codes.InvalidArgument},
		{"unknown policy", "k", []AllowOption{Policy("nope")}, codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := c.Allow(ctx, tt.key, tt.opts...)
			if status.Code(err) != tt.want || d != nil {
				t.Errorf("Allow() = %v, %v, want nil, %v", d, err, tt.want)
			}
		})
	}
	if _, err := c.Release(ctx, ""); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Release(\"\") error = %v, want InvalidArgument", err)
	}
}

func TestUnixSocket(t *testing.T) {
	addr := startDaemonAt(t, "unix://"+filepath.Join(shortTempDir(t), "l.sock"))
	c := newClient(t, addr, WithToken("t")) // a token is fine over a unix socket
	d, err := c.Allow(testCtx(t), "k")
	if err != nil || !d.Allowed {
		t.Fatalf("Allow() over %s = %+v, %v, want allowed", addr, d, err)
	}
}

// shortTempDir returns a short temporary directory: unix socket paths are
// limited to about 100 bytes, which t.TempDir can exceed.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestAdmin(t *testing.T) {
	c := newClient(t, startDaemon(t, uploads))
	ctx := testCtx(t)
	res, err := c.Admin().ListPolicies(ctx, &limiterv1.ListPoliciesRequest{})
	if err != nil {
		t.Fatalf("ListPolicies() error = %v", err)
	}
	var names []string
	for _, p := range res.GetPolicies() {
		names = append(names, p.GetName())
	}
	if len(names) != 2 || names[0] != "default" || names[1] != "uploads" {
		t.Errorf("ListPolicies() names = %v, want [default uploads]", names)
	}
}

func TestIsLocal(t *testing.T) {
	tests := []struct {
		target string
		want   bool
	}{
		{"127.0.0.1:8081", true},
		{"127.3.4.5:1", true},
		{"[::1]:8081", true},
		{"localhost:8081", true},
		{"dns:///localhost:8081", true},
		{"unix:///run/limiterd.sock", true},
		{"unix:relative.sock", true},
		{"10.0.0.1:8081", false},
		{"limiterd.svc:8081", false},
		{"dns:///limiterd:8081", false},
		{"0.0.0.0:8081", false},
	}
	for _, tt := range tests {
		if got := IsLocal(tt.target); got != tt.want {
			t.Errorf("IsLocal(%q) = %v, want %v", tt.target, got, tt.want)
		}
	}
}

// fakeLimiter records the authorization metadata of each Allow and, when
// block is set, waits for the call's context to end.
type fakeLimiter struct {
	limiterv1.UnimplementedLimiterServer
	auth  chan string
	block bool
}

func (f *fakeLimiter) Allow(ctx context.Context, _ *limiterv1.AllowRequest) (*limiterv1.AllowResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	select {
	case f.auth <- firstOf(md.Get("authorization")):
	default:
	}
	if f.block {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &limiterv1.AllowResponse{Allowed: true}, nil
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// startFake serves f on 127.0.0.1:0, with TLS when cert is non-nil.
func startFake(t *testing.T, f *fakeLimiter, cert *tls.Certificate) string {
	t.Helper()
	var opts []grpc.ServerOption
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12})))
	}
	g := grpc.NewServer(opts...)
	limiterv1.RegisterLimiterServer(g, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "limiterd test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestTokenAndTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	tlsFake := &fakeLimiter{auth: make(chan string, 1)}
	tlsAddr := startFake(t, tlsFake, &cert)
	plainFake := &fakeLimiter{auth: make(chan string, 1)}
	plainAddr := startFake(t, plainFake, nil)

	tests := []struct {
		name     string
		addr     string
		fake     *fakeLimiter
		opts     []Option
		wantAuth string
	}{
		{"token over TLS", tlsAddr, tlsFake, []Option{WithToken("s3cret"), WithTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})}, "Bearer s3cret"},
		{"token over loopback plaintext", plainAddr, plainFake, []Option{WithToken("s3cret")}, "Bearer s3cret"},
		{"no token", plainAddr, plainFake, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, tt.addr, tt.opts...)
			if _, err := c.Allow(testCtx(t), "k"); err != nil {
				t.Fatalf("Allow() error = %v", err)
			}
			if got := <-tt.fake.auth; got != tt.wantAuth {
				t.Errorf("authorization = %q, want %q", got, tt.wantAuth)
			}
		})
	}

	t.Run("TLS with an untrusted certificate fails", func(t *testing.T) {
		c := newClient(t, tlsAddr, WithTLS(nil))
		if _, err := c.Allow(testCtx(t), "k"); status.Code(err) != codes.Unavailable {
			t.Errorf("Allow() error = %v, want Unavailable", err)
		}
	})
	t.Run("token over plaintext to a remote address is refused", func(t *testing.T) {
		if _, err := New("10.0.0.1:8081", WithToken("s3cret")); !errors.Is(err, ErrTokenNeedsTLS) {
			t.Errorf("New() error = %v, want ErrTokenNeedsTLS", err)
		}
		c, err := New("10.0.0.1:8081", WithToken("s3cret"), WithInsecure())
		if err != nil {
			t.Fatalf("New(WithInsecure) error = %v", err)
		}
		c.Close()
	})
	t.Run("empty target", func(t *testing.T) {
		if _, err := New(""); !errors.Is(err, ErrBadTarget) {
			t.Errorf("New(\"\") error = %v, want ErrBadTarget", err)
		}
	})
}

func TestWithTimeout(t *testing.T) {
	addr := startFake(t, &fakeLimiter{auth: make(chan string, 1), block: true}, nil)
	c := newClient(t, addr, WithTimeout(20*time.Millisecond))
	if _, err := c.Allow(testCtx(t), "k"); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Allow() error = %v, want DeadlineExceeded", err)
	}
}
