package client

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// ok is a handler that answers 200 "ok".
var ok = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })

// serve runs one request through h and returns the recorded response.
func serve(h http.Handler, path string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// decodeBody decodes a seed-shaped JSON error body.
func decodeBody(t *testing.T, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q is not JSON: %v", w.Body.String(), err)
	}
	for _, k := range []string{"code", "error", "message", "http_status", "http_reason", "path", "timestamp", "request-id"} {
		if _, ok := body[k]; !ok {
			t.Errorf("body %s has no %q", w.Body.String(), k)
		}
	}
	return body
}

// inFlight reads a key's leases in flight through the Admin API.
func inFlight(t *testing.T, c *Client, policyName, key string) int64 {
	t.Helper()
	res, err := c.Admin().GetKey(testCtx(t), &limiterv1.GetKeyRequest{Policy: policyName, Key: key})
	if err != nil {
		t.Fatalf("GetKey(%s, %s) error = %v", policyName, key, err)
	}
	return res.GetKey().GetInFlight()
}

func TestMiddlewareAllowed(t *testing.T) {
	c := newClient(t, startDaemon(t))
	h := Middleware(c, MiddlewareConfig{})(ok)
	w := serve(h, "/hello", nil)
	if w.Code != http.StatusOK || w.Body.String() != "ok" {
		t.Fatalf("response = %d %q, want 200 ok", w.Code, w.Body)
	}
	want := map[string]string{
		"X-RateLimit-Limit":     "600",
		"X-RateLimit-Remaining": "599",
		"RateLimit-Policy":      `"default";q=600;w=300`,
	}
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"RateLimit", "X-RateLimit-Reset"} {
		if w.Header().Get(k) == "" {
			t.Errorf("header %s missing", k)
		}
	}
	for _, k := range []string{"Retry-After", DegradedHeader} {
		if got := w.Header().Get(k); got != "" {
			t.Errorf("header %s = %q, want none", k, got)
		}
	}
	// The default key is the client IP of httptest requests.
	if res, err := c.Admin().GetKey(testCtx(t), &limiterv1.GetKeyRequest{Key: "192.0.2.1"}); err != nil || res.GetKey().GetUsed() != 1 {
		t.Errorf("GetKey(192.0.2.1) = %v, %v, want used 1", res, err)
	}
}

func TestMiddlewareDenied122(t *testing.T) {
	c := newClient(t, startDaemon(t, tiny))
	called := 0
	h := Middleware(c, MiddlewareConfig{Policy: "tiny"})(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { called++ }))
	for range 2 {
		if w := serve(h, "/v1/invoices", nil); w.Code != http.StatusOK {
			t.Fatalf("response = %d, want 200", w.Code)
		}
	}
	w := serve(h, "/v1/invoices", map[string]string{"X-Request-Id": "req-42"})
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("third response = %d, want 429", w.Code)
	}
	if called != 2 {
		t.Errorf("handler called %d times, want 2", called)
	}
	if ra := w.Header().Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After = %q, want whole seconds > 0", ra)
	}
	if got := w.Header().Get("X-RateLimit-Remaining"); got != "0" {
		t.Errorf("X-RateLimit-Remaining = %q, want 0", got)
	}
	body := decodeBody(t, w)
	want := map[string]any{
		"code": 122.0, "error": "Request rate limit exceeded", "http_status": 429.0,
		"http_reason": "Too Many Requests", "path": "/v1/invoices", "request-id": "req-42",
	}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("body[%q] = %v, want %v", k, body[k], v)
		}
	}
	// The body is limiterd's, byte for byte: field order is the seed's.
	if !strings.HasPrefix(w.Body.String(), `{"code":122,"error":"Request rate limit exceeded","message":`) {
		t.Errorf("body = %s, want the seed's field order", w.Body)
	}
}

func TestMiddlewareConcurrency123(t *testing.T) {
	c := newClient(t, startDaemon(t, uploads))
	entered := make(chan struct{})
	release := make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		_, _ = w.Write([]byte("done"))
	})
	h := Middleware(c, MiddlewareConfig{Policy: "uploads", Key: func(*http.Request) string { return "user-7" }})(slow)

	var wg sync.WaitGroup
	var first *httptest.ResponseRecorder
	wg.Add(1)
	go func() { defer wg.Done(); first = serve(h, "/slow", nil) }()
	<-entered // the slow request holds the only lease

	if n := inFlight(t, c, "uploads", "user-7"); n != 1 {
		t.Errorf("in flight while the handler runs = %d, want 1", n)
	}
	w := serve(h, "/upload", nil)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("second response = %d, want 429", w.Code)
	}
	body := decodeBody(t, w)
	if body["code"] != 123.0 || body["error"] != "Concurrent requests limit exceeded" {
		t.Errorf("body = %s, want code 123", w.Body)
	}
	if w.Header().Get("Retry-After") == "" {
		t.Errorf("Retry-After missing on a 123")
	}

	close(release)
	wg.Wait()
	if first.Code != http.StatusOK {
		t.Errorf("slow response = %d, want 200", first.Code)
	}
	// ServeHTTP returned, so the lease is already released.
	if n := inFlight(t, c, "uploads", "user-7"); n != 0 {
		t.Errorf("in flight after the handler returned = %d, want 0", n)
	}
	if w := serve(h, "/upload", nil); w.Code != http.StatusOK {
		t.Errorf("response after release = %d, want 200", w.Code)
	}
}

func TestMiddlewareReleasesOnPanic(t *testing.T) {
	c := newClient(t, startDaemon(t, uploads))
	boom := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	h := Middleware(c, MiddlewareConfig{Policy: "uploads", Key: func(*http.Request) string { return "p" }})(boom)
	func() {
		defer func() {
			if r := recover(); r != http.ErrAbortHandler {
				t.Errorf("recover() = %v, want the handler's panic", r)
			}
		}()
		serve(h, "/", nil)
	}()
	if n := inFlight(t, c, "uploads", "p"); n != 0 {
		t.Errorf("in flight after a panic = %d, want 0", n)
	}
}

func TestMiddlewareKeyAndPolicyFunc(t *testing.T) {
	c := newClient(t, startDaemon(t, tiny, uploads))
	h := Middleware(c, MiddlewareConfig{
		Policy: "uploads", // PolicyFunc wins
		PolicyFunc: func(r *http.Request) string {
			if strings.HasPrefix(r.URL.Path, "/tiny") {
				return "tiny"
			}
			return ""
		},
		Key: func(r *http.Request) string { return r.Header.Get("X-Api-Key") },
	})(ok)
	serve(h, "/tiny/a", map[string]string{"X-Api-Key": "alice"})
	serve(h, "/other", map[string]string{"X-Api-Key": "alice"})
	serve(h, "/other", map[string]string{"X-Api-Key": "alice"})
	for _, tt := range []struct {
		policy string
		want   int64
	}{{"tiny", 1}, {"default", 2}} {
		res, err := c.Admin().GetKey(testCtx(t), &limiterv1.GetKeyRequest{Policy: tt.policy, Key: "alice"})
		if err != nil || res.GetKey().GetUsed() != tt.want {
			t.Errorf("GetKey(%s, alice) = %v, %v, want used %d", tt.policy, res, err, tt.want)
		}
	}
	if _, err := c.Admin().GetKey(testCtx(t), &limiterv1.GetKeyRequest{Policy: "uploads", Key: "alice"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetKey(uploads, alice) error = %v, want NotFound", err)
	}
}

func TestMiddlewareUnavailable(t *testing.T) {
	c := newClient(t, deadAddr(t))
	tests := []struct {
		name       string
		failOpen   bool
		wantCode   int
		wantCalled bool
	}{
		{"fail closed", false, http.StatusServiceUnavailable, false},
		{"fail open", true, http.StatusOK, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var errs []error
			called := false
			h := Middleware(c, MiddlewareConfig{
				FailOpen: tt.failOpen,
				Timeout:  time.Second, // a refused connection fails long before
				OnError:  func(_ *http.Request, err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
			})(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { called = true }))
			w := serve(h, "/hello", map[string]string{"X-Request-Id": "req-9"})
			if w.Code != tt.wantCode || called != tt.wantCalled {
				t.Fatalf("response = %d (handler called %v), want %d (%v)", w.Code, called, tt.wantCode, tt.wantCalled)
			}
			if len(errs) != 1 || status.Code(errs[0]) == codes.OK {
				t.Errorf("OnError got %v, want one gRPC error", errs)
			}
			if w.Header().Get("X-RateLimit-Limit") != "" {
				t.Errorf("X-RateLimit-Limit = %q, want none without a decision", w.Header().Get("X-RateLimit-Limit"))
			}
			if tt.failOpen {
				if got := w.Header().Get(DegradedHeader); got != "true" {
					t.Errorf("%s = %q, want true", DegradedHeader, got)
				}
				return
			}
			body := decodeBody(t, w)
			want := map[string]any{
				"code": 503.0, "error": "Rate limiter unavailable", "http_status": 503.0,
				"http_reason": "Service Unavailable", "path": "/hello", "request-id": "req-9",
			}
			for k, v := range want {
				if body[k] != v {
					t.Errorf("body[%q] = %v, want %v", k, body[k], v)
				}
			}
		})
	}
}

func TestMiddlewareTimeout(t *testing.T) {
	addr := startFake(t, &fakeLimiter{auth: make(chan string, 1), block: true}, nil)
	c := newClient(t, addr)
	var got error
	h := Middleware(c, MiddlewareConfig{Timeout: 20 * time.Millisecond, OnError: func(_ *http.Request, err error) { got = err }})(ok)
	if w := serve(h, "/", nil); w.Code != http.StatusServiceUnavailable {
		t.Errorf("response = %d, want 503", w.Code)
	}
	if status.Code(got) != codes.DeadlineExceeded {
		t.Errorf("OnError got %v, want DeadlineExceeded", got)
	}
}

func TestClientIP(t *testing.T) {
	tests := []struct{ remote, want string }{
		{"203.0.113.7:5555", "203.0.113.7"},
		{"[2001:db8::1]:443", "2001:db8::1"},
		{"@", "@"}, // unix socket peers have no port
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = tt.remote
		if got := ClientIP(r); got != tt.want {
			t.Errorf("ClientIP(%q) = %q, want %q", tt.remote, got, tt.want)
		}
	}
}
