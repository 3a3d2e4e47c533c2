package envoy

import (
	"strings"
	"testing"
	"unicode/utf8"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"

	"github.com/limiterd/limiterd/internal/limiter"
)

// FuzzCounterKey maps arbitrary descriptors (as Envoy may send them) to
// limiter keys: every key is one the limiter accepts, and two different
// descriptors never share a key unless it was hashed.
func FuzzCounterKey(f *testing.F) {
	f.Add("edge", "remote_address", "10.0.0.1", "path", "/a:b=c%d")
	f.Add("", "", "", "", "")
	f.Add("d", strings.Repeat("k", 600), "v", "x", "y")
	f.Fuzz(func(t *testing.T, domain, k1, v1, k2, v2 string) {
		for _, s := range []string{domain, k1, v1, k2, v2} {
			if !utf8.ValidString(s) {
				return // protobuf strings from Envoy are valid UTF-8
			}
		}
		one := []*ratelimitv3.RateLimitDescriptor_Entry{{Key: k1, Value: v1}}
		two := []*ratelimitv3.RateLimitDescriptor_Entry{{Key: k1, Value: v1}, {Key: k2, Value: v2}}
		a, b := CounterKey(domain, one), CounterKey(domain, two)
		for _, k := range []string{a, b} {
			if err := limiter.ValidateKey(k); err != nil {
				t.Fatalf("CounterKey() = %q: %v", k, err)
			}
		}
		if a == b && !strings.Contains(a, "#") {
			t.Fatalf("descriptors %v and %v share the key %q", one, two, a)
		}
	})
}
