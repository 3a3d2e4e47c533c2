package envoy

import (
	"strings"
	"testing"
	"unicode/utf8"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"

	"github.com/limiterd/limiterd/internal/limiter"
)

// entries builds descriptor entries from key, value pairs.
func entries(kv ...string) []*ratelimitv3.RateLimitDescriptor_Entry {
	var out []*ratelimitv3.RateLimitDescriptor_Entry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &ratelimitv3.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return out
}

func TestCounterKey(t *testing.T) {
	tests := []struct {
		name   string
		domain string
		kv     []string
		want   string
	}{
		{"one entry", "edge", []string{"remote_address", "10.0.0.1"}, "envoy:edge:remote_address=10.0.0.1"},
		{"chain in order", "edge", []string{"tenant", "acme", "plan", "free"}, "envoy:edge:tenant=acme:plan=free"},
		{"separators escaped", "a:b", []string{"k=", "x:plan=free#%"}, "envoy:a%3Ab:k%3D=x%3Aplan%3Dfree%23%25"},
		{"empty value", "edge", []string{"k", ""}, "envoy:edge:k="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CounterKey(tt.domain, entries(tt.kv...)); got != tt.want {
				t.Errorf("CounterKey() = %q, want %q", got, tt.want)
			}
		})
	}

	// A value with separators must not collide with a longer chain.
	a := CounterKey("edge", entries("tenant", "x:plan=free"))
	b := CounterKey("edge", entries("tenant", "x", "plan", "free"))
	if a == b {
		t.Errorf("CounterKey() = %q for both a one-entry and a two-entry descriptor", a)
	}
}

func TestCounterKeyLong(t *testing.T) {
	long := strings.Repeat("é", 400) // 800 bytes, two per rune
	k1 := CounterKey("edge", entries("path", long+"a"))
	k2 := CounterKey("edge", entries("path", long+"b"))
	for _, k := range []string{k1, k2} {
		if err := limiter.ValidateKey(k); err != nil {
			t.Fatalf("ValidateKey(CounterKey(long)) = %v", err)
		}
		if !utf8.ValidString(k) || strings.Count(k, "#") != 1 {
			t.Errorf("CounterKey(long) = %q, want valid UTF-8 with one '#'", k)
		}
	}
	if k1 == k2 {
		t.Errorf("CounterKey() = %q for two long values differing in the tail", k1)
	}
	short := CounterKey("edge", entries("path", strings.Repeat("a", 400)))
	if strings.Contains(short, "#") {
		t.Errorf("CounterKey(short) = %q, want no hash", short)
	}
}

func TestResolve(t *testing.T) {
	root := compileList([]Descriptor{
		{Key: "path", Policy: "any"},
		{Key: "path", Value: "/api/*", Policy: "api"},
		{Key: "path", Value: "/api/v2/*", Policy: "v2"},
		{Key: "path", Value: "/api/v2/login", Policy: "login"},
		{Key: "path", Value: "/healthz", Unlimited: true},
		{Key: "tenant", Descriptors: []Descriptor{
			{Key: "plan", Value: "free", Policy: "free"},
			{Key: "plan", Policy: "paid"},
		}},
	})
	tests := []struct {
		kv   []string
		want string
	}{
		{[]string{"path", "/other"}, "any"},
		{[]string{"path", "/api/x"}, "api"},
		{[]string{"path", "/api/v2/x"}, "v2"},
		{[]string{"path", "/api/v2/login"}, "login"},
		{[]string{"path", "/healthz"}, ""},
		{[]string{"path", "/api/x", "extra", "1"}, ""},
		{[]string{"tenant", "acme"}, ""},
		{[]string{"tenant", "acme", "plan", "free"}, "free"},
		{[]string{"tenant", "acme", "plan", "gold"}, "paid"},
		{[]string{"plan", "free"}, ""},
		{[]string{"nothing", "here"}, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.kv, ","), func(t *testing.T) {
			if got := root.resolve(entries(tt.kv...)); got != tt.want {
				t.Errorf("resolve() = %q, want %q", got, tt.want)
			}
		})
	}
}
