package server

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/metrics"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// BenchmarkServiceAllow measures the service's own work per Allow, without
// gRPC's transport: limiter decision, metrics and the response.
func BenchmarkServiceAllow(b *testing.B) {
	lcfg := limiter.DefaultConfig()
	lcfg.Policies = []policy.Policy{{Name: "default", Limit: 1 << 31, Window: 5 * time.Minute}}
	lim, err := limiter.New(lcfg)
	if err != nil {
		b.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Decider = lim
	cfg.Metrics = metrics.New(nil)
	svc, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]*limiterv1.AllowRequest, 10_000)
	for i := range reqs {
		reqs[i] = &limiterv1.AllowRequest{Key: "key-" + strconv.Itoa(i)}
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := svc.Allow(ctx, reqs[i%len(reqs)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
