package envoy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/server"
)

// t0 is just before a 5-minute boundary (06:40:00), so a fixed window
// would reset 87s later.
var t0 = time.Date(2026, 11, 22, 6, 38, 33, 876_000_000, time.UTC)

const testYAML = `
policies:
  - name: ip
    limit: 5
    window: 1m
  - name: uploads
    limit: 2
    window: 1m
  - name: api
    limit: 3
    window: 1h
  - name: free-tier
    limit: 2
    window: 24h
  - name: fivemin
    limit: 10
    window: 5m
  - name: capped
    limit: 10
    window: 1m
    max_concurrent: 1
envoy:
  domains:
    - domain: edge
      descriptors:
        - key: remote_address
          policy: ip
        - key: path
          value: /upload
          policy: uploads
        - key: path
          value: /api/*
          policy: api
        - key: path
          value: /api/public/*
          unlimited: true
        - key: tenant
          descriptors:
            - key: plan
              value: free
              policy: free-tier
        - key: user
          policy: fivemin
`

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type harness struct {
	client rlsv3.RateLimitServiceClient
	clock  *fakeClock
	lim    *limiter.Limiter
}

// startService serves the envoy section of yamlCfg (or cfg when not nil)
// over bufconn with a real limiter holding the file's policies.
func startService(t *testing.T, yamlCfg string, cfg *Config) *harness {
	t.Helper()
	ps, err := policy.Parse([]byte(yamlCfg))
	if err != nil {
		t.Fatalf("policy.Parse() error = %v", err)
	}
	if cfg == nil {
		c, err := ParseConfig([]byte(yamlCfg))
		if err != nil {
			t.Fatalf("ParseConfig() error = %v", err)
		}
		cfg = &c
	}
	clock := &fakeClock{now: t0}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	lcfg := limiter.DefaultConfig()
	lcfg.Now = clock.Now
	lcfg.Policies = ps
	lcfg.Logger = logger
	lim, err := limiter.New(lcfg)
	if err != nil {
		t.Fatalf("limiter.New() error = %v", err)
	}
	g := grpc.NewServer()
	New(*cfg, lim, clock.Now, logger).Register(g)
	ln := bufconn.Listen(1 << 20)
	go g.Serve(ln)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient() error = %v", err)
	}
	t.Cleanup(func() { conn.Close(); g.Stop(); lim.Close() })
	return &harness{client: rlsv3.NewRateLimitServiceClient(conn), clock: clock, lim: lim}
}

// desc builds a descriptor from key, value pairs.
func desc(kv ...string) *ratelimitv3.RateLimitDescriptor {
	return &ratelimitv3.RateLimitDescriptor{Entries: entries(kv...)}
}

const (
	ok   = rlsv3.RateLimitResponse_OK
	over = rlsv3.RateLimitResponse_OVER_LIMIT
)

// call is one ShouldRateLimit call of a scenario and what it must answer.
type call struct {
	advance   time.Duration // clock moves before the call
	hits      uint32
	descs     []*ratelimitv3.RateLimitDescriptor
	want      rlsv3.RateLimitResponse_Code
	codes     []rlsv3.RateLimitResponse_Code // per descriptor; nil: all want
	remaining []int                          // per descriptor; -1 or nil: not checked
}

func TestShouldRateLimit(t *testing.T) {
	upload := desc("path", "/upload")
	ip := desc("remote_address", "10.0.0.1")
	tests := []struct {
		name  string
		calls []call
	}{
		{"every value is its own counter", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, hits: 5, want: ok, remaining: []int{0}},
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, want: over, remaining: []int{0}},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("remote_address", "10.0.0.2")}, want: ok, remaining: []int{4}},
		}},
		{"exact value", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{upload}, want: ok, remaining: []int{1}},
			{descs: []*ratelimitv3.RateLimitDescriptor{upload}, want: ok, remaining: []int{0}},
			{descs: []*ratelimitv3.RateLimitDescriptor{upload}, want: over},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("path", "/upload/x")}, want: ok},
		}},
		{"wildcard", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("path", "/api/a")}, hits: 3, want: ok, remaining: []int{0}},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("path", "/api/a")}, want: over},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("path", "/api/b")}, want: ok, remaining: []int{2}},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("path", "/api/public/x")}, hits: 100, want: ok},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("path", "/apix")}, hits: 100, want: ok},
		}},
		{"nested", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("tenant", "acme", "plan", "free")}, want: ok, remaining: []int{1}},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("tenant", "acme", "plan", "free")}, want: ok, remaining: []int{0}},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("tenant", "acme", "plan", "free")}, want: over},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("tenant", "other", "plan", "free")}, want: ok, remaining: []int{1}},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("tenant", "acme", "plan", "paid")}, hits: 10, want: ok},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("tenant", "acme")}, hits: 10, want: ok},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("plan", "free")}, hits: 10, want: ok},
		}},
		{"several descriptors: a denied call counts nothing", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{upload, ip}, want: ok, remaining: []int{1, 4}},
			{descs: []*ratelimitv3.RateLimitDescriptor{upload, ip}, want: ok, remaining: []int{0, 3}},
			{descs: []*ratelimitv3.RateLimitDescriptor{upload, ip, desc("unmatched", "x")}, want: over, codes: []rlsv3.RateLimitResponse_Code{over, ok, ok}, remaining: []int{0, 3, -1}},
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, want: ok, remaining: []int{2}},
		}},
		{"hits_addend", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, hits: 4, want: ok, remaining: []int{1}},
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, hits: 2, want: over, remaining: []int{1}},
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, hits: 0, want: ok, remaining: []int{0}},
		}},
		{"descriptor hits_addend overrides the request's", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{
				{Entries: entries("remote_address", "10.0.0.1"), HitsAddend: wrapperspb.UInt64(3)},
				{Entries: entries("remote_address", "10.0.0.2")},
			}, hits: 2, want: ok, remaining: []int{2, 3}},
			{descs: []*ratelimitv3.RateLimitDescriptor{
				{Entries: entries("remote_address", "10.0.0.1"), HitsAddend: wrapperspb.UInt64(1 << 40)},
			}, want: over, remaining: []int{2}},
		}},
		{"negative hits are ignored", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, hits: 5, want: ok, remaining: []int{0}},
			{descs: []*ratelimitv3.RateLimitDescriptor{{Entries: entries("remote_address", "10.0.0.1"), IsNegativeHits: true, HitsAddend: wrapperspb.UInt64(5)}}, want: ok, remaining: []int{0}},
			{descs: []*ratelimitv3.RateLimitDescriptor{ip}, want: over},
		}},
		{"sliding 5-minute window does not reset at a boundary", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u1")}, hits: 10, want: ok, remaining: []int{0}},
			{advance: 2 * time.Minute, descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u1")}, want: over},
			{advance: 2*time.Minute + 59*time.Second, descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u1")}, want: over},
			{advance: 11 * time.Second, descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u1")}, want: ok, remaining: []int{9}},
		}},
		{"a window slides out in steps", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u2")}, hits: 5, want: ok, remaining: []int{5}},
			{advance: 150 * time.Second, descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u2")}, hits: 5, want: ok, remaining: []int{0}},
			{advance: 160 * time.Second, descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u2")}, hits: 5, want: ok, remaining: []int{0}},
			{advance: 10 * time.Second, descs: []*ratelimitv3.RateLimitDescriptor{desc("user", "u2")}, want: over},
		}},
		{"unmatched descriptor", []call{
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("nothing", "here")}, hits: 1000, want: ok},
			{descs: []*ratelimitv3.RateLimitDescriptor{desc("remote_address", "10.0.0.1", "extra", "x")}, hits: 1000, want: ok},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startService(t, testYAML, nil)
			for i, c := range tt.calls {
				h.clock.Advance(c.advance)
				resp, err := h.client.ShouldRateLimit(t.Context(), &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: c.descs, HitsAddend: c.hits})
				if err != nil {
					t.Fatalf("call %d: ShouldRateLimit() error = %v", i, err)
				}
				if resp.GetOverallCode() != c.want {
					t.Fatalf("call %d: overall_code = %v, want %v (%v)", i, resp.GetOverallCode(), c.want, resp)
				}
				if len(resp.GetStatuses()) != len(c.descs) {
					t.Fatalf("call %d: %d statuses, want %d", i, len(resp.GetStatuses()), len(c.descs))
				}
				for j, st := range resp.GetStatuses() {
					want := c.want
					if c.codes != nil {
						want = c.codes[j]
					}
					if st.GetCode() != want {
						t.Errorf("call %d: statuses[%d].code = %v, want %v", i, j, st.GetCode(), want)
					}
					if c.remaining != nil && c.remaining[j] >= 0 && st.GetLimitRemaining() != uint32(c.remaining[j]) {
						t.Errorf("call %d: statuses[%d].limit_remaining = %d, want %d", i, j, st.GetLimitRemaining(), c.remaining[j])
					}
				}
				if (c.want == over) != (len(resp.GetRawBody()) > 0) {
					t.Errorf("call %d: raw_body = %q with overall_code %v", i, resp.GetRawBody(), c.want)
				}
			}
		})
	}
}

func headers(resp *rlsv3.RateLimitResponse) map[string]string {
	m := map[string]string{}
	for _, h := range resp.GetResponseHeadersToAdd() {
		m[h.GetKey()] = h.GetValue()
	}
	return m
}

func TestShouldRateLimitOverLimit(t *testing.T) {
	h := startService(t, testYAML, nil)
	req := &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: []*ratelimitv3.RateLimitDescriptor{
		desc("remote_address", "10.0.0.1"),
		desc("path", "/upload"),
		desc("user", "u1"),
	}}
	for i := range 2 {
		resp, err := h.client.ShouldRateLimit(t.Context(), req)
		if err != nil || resp.GetOverallCode() != ok {
			t.Fatalf("call %d: ShouldRateLimit() = %v, %v, want OK", i, resp, err)
		}
		hd := headers(resp)
		if _, has := hd["Retry-After"]; has {
			t.Errorf("call %d: Retry-After = %q on an allowed call", i, hd["Retry-After"])
		}
		// The upload policy (2 per minute) is the most restrictive.
		if want := `"uploads";q=2;w=60`; hd["RateLimit-Policy"] != want {
			t.Errorf("call %d: RateLimit-Policy = %q, want %q", i, hd["RateLimit-Policy"], want)
		}
	}
	h.clock.Advance(20 * time.Second)
	resp, err := h.client.ShouldRateLimit(t.Context(), req)
	if err != nil {
		t.Fatalf("ShouldRateLimit() error = %v", err)
	}
	if resp.GetOverallCode() != over {
		t.Fatalf("overall_code = %v, want OVER_LIMIT", resp.GetOverallCode())
	}

	st := resp.GetStatuses()
	wantLimits := []struct {
		name string
		rpu  uint32
		unit rlsv3.RateLimitResponse_RateLimit_Unit
	}{
		{"ip: 5 per 1m0s", 5, rlsv3.RateLimitResponse_RateLimit_MINUTE},
		{"uploads: 2 per 1m0s", 2, rlsv3.RateLimitResponse_RateLimit_MINUTE},
		{"fivemin: 10 per 5m0s", 10, rlsv3.RateLimitResponse_RateLimit_UNKNOWN},
	}
	for i, w := range wantLimits {
		cl := st[i].GetCurrentLimit()
		if cl.GetName() != w.name || cl.GetRequestsPerUnit() != w.rpu || cl.GetUnit() != w.unit {
			t.Errorf("statuses[%d].current_limit = %v, want %s, %d, %v", i, cl, w.name, w.rpu, w.unit)
		}
	}
	if st[1].GetCode() != over || st[1].GetDurationUntilReset().AsDuration() <= 0 {
		t.Errorf("statuses[1] = %v, want OVER_LIMIT with a duration_until_reset", st[1])
	}

	hd := headers(resp)
	retry, err := strconv.Atoi(hd["Retry-After"])
	if err != nil || retry < 40 || retry > 42 {
		t.Errorf("Retry-After = %q, want about 40s", hd["Retry-After"])
	}
	for k, want := range map[string]string{
		"RateLimit-Policy":      `"uploads";q=2;w=60`,
		"RateLimit":             `"uploads";r=0;t=` + hd["Retry-After"],
		"X-RateLimit-Limit":     "2",
		"X-RateLimit-Remaining": "0",
		"Content-Type":          "application/json",
	} {
		if hd[k] != want {
			t.Errorf("header %s = %q, want %q", k, hd[k], want)
		}
	}
	if _, has := hd["X-RateLimit-Reset"]; !has {
		t.Error("header X-RateLimit-Reset missing")
	}

	var body map[string]any
	if err := json.Unmarshal(resp.GetRawBody(), &body); err != nil {
		t.Fatalf("raw_body %q: %v", resp.GetRawBody(), err)
	}
	if !strings.Contains(string(resp.GetRawBody()), `"code":122`) {
		t.Errorf("raw_body = %s, want \"code\":122", resp.GetRawBody())
	}
	for k, want := range map[string]any{
		"error":       "Request rate limit exceeded",
		"http_status": float64(429),
		"http_reason": "Too Many Requests",
		"path":        "/upload",
		"timestamp":   t0.Add(20 * time.Second).Format(server.TimestampLayout),
	} {
		if body[k] != want {
			t.Errorf("raw_body %s = %v, want %v", k, body[k], want)
		}
	}
	if id, _ := body["request-id"].(string); len(id) != 32 {
		t.Errorf("raw_body request-id = %q, want 32 hex digits", id)
	}
	if msg, _ := body["message"].(string); !strings.Contains(msg, "2 requests per 1m0s") {
		t.Errorf("raw_body message = %q, want the limit", msg)
	}
}

func TestShouldRateLimitUnknownDomain(t *testing.T) {
	h := startService(t, testYAML, nil)
	resp, err := h.client.ShouldRateLimit(t.Context(), &rlsv3.RateLimitRequest{Domain: "other", Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("remote_address", "1")}, HitsAddend: 100})
	if err != nil || resp.GetOverallCode() != ok || len(resp.GetResponseHeadersToAdd()) != 0 {
		t.Fatalf("ShouldRateLimit(unknown domain) = %v, %v, want OK without headers", resp, err)
	}
}

func TestShouldRateLimitErrors(t *testing.T) {
	drifted := Config{Domains: []Domain{{Name: "edge", Descriptors: []Descriptor{
		{Key: "k", Value: "capped", Policy: "capped"},
		{Key: "k", Value: "gone", Policy: "gone"},
	}}}}
	tests := []struct {
		name string
		req  *rlsv3.RateLimitRequest
		want codes.Code
	}{
		{"empty domain", &rlsv3.RateLimitRequest{Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("k", "v")}}, codes.InvalidArgument},
		{"no descriptors", &rlsv3.RateLimitRequest{Domain: "edge"}, codes.InvalidArgument},
		{"descriptor without entries", &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: []*ratelimitv3.RateLimitDescriptor{{}}}, codes.InvalidArgument},
		{"entry without key", &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("", "v")}}, codes.InvalidArgument},
		{"concurrency policy", &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("k", "capped")}}, codes.FailedPrecondition},
		{"concurrency policy among several", &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("k", "x"), desc("k", "capped"), desc("k", "capped")}}, codes.FailedPrecondition},
		{"policy deleted at run time", &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("k", "gone")}}, codes.NotFound},
	}
	h := startService(t, testYAML, &drifted)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.client.ShouldRateLimit(t.Context(), tt.req)
			if status.Code(err) != tt.want {
				t.Fatalf("ShouldRateLimit() = %v, %v, want %v", resp, err, tt.want)
			}
		})
	}
	// The refused concurrency policy holds no lease.
	res, err := h.lim.Allow(t.Context(), limiter.Request{Policy: "capped", Key: CounterKey("edge", entries("k", "capped")), DryRun: true})
	if err != nil || !res.Allowed || res.InFlight != 0 {
		t.Errorf("Allow(capped) = %+v, %v, want allowed with nothing in flight", res, err)
	}
}

func TestShouldRateLimitLongKey(t *testing.T) {
	h := startService(t, testYAML, nil)
	long := "/api/" + strings.Repeat("x", 2000)
	for i, want := range []rlsv3.RateLimitResponse_Code{ok, ok, ok, over} {
		resp, err := h.client.ShouldRateLimit(t.Context(), &rlsv3.RateLimitRequest{Domain: "edge", Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("path", long)}})
		if err != nil || resp.GetOverallCode() != want {
			t.Fatalf("call %d: ShouldRateLimit(long key) = %v, %v, want %v", i, resp.GetOverallCode(), err, want)
		}
	}
}
