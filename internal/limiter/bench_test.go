package limiter

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/store"
)

// benchLimiter returns a memory-only limiter whose clock moves 1µs per
// reading, with n keys already present.
func benchLimiter(b *testing.B, n int) (*Limiter, []string) {
	b.Helper()
	var ns atomic.Int64
	base := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	cfg.Now = func() time.Time { return base.Add(time.Duration(ns.Add(1000))) }
	cfg.Policies = []policy.Policy{{Name: "default", Limit: 1 << 31, Window: 5 * time.Minute}}
	l, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "tenant:" + strconv.Itoa(i)
		l.Allow(context.Background(), Request{Key: keys[i]})
	}
	return l, keys
}

// BenchmarkAllow measures Allow on existing keys of the default policy.
func BenchmarkAllow(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1, 10_000, 1_000_000} {
		l, keys := benchLimiter(b, n)
		b.Run(fmt.Sprintf("keys=%d/serial", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := l.Allow(ctx, Request{Key: keys[i%n]}); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("keys=%d/parallel", n), func(b *testing.B) {
			b.ReportAllocs()
			var seq atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(seq.Add(7919))
				for pb.Next() {
					if _, err := l.Allow(ctx, Request{Key: keys[i%n]}); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		})
	}
}

// BenchmarkAllowSyncAlways measures the cost of --sync=always: every call
// waits for its group commit (fsync) in bbolt.
func BenchmarkAllowSyncAlways(b *testing.B) {
	for _, mode := range []string{"batch", "always"} {
		b.Run(mode, func(b *testing.B) {
			cfg := store.DefaultConfig()
			cfg.Path = b.TempDir() + "/bench.db"
			db, err := store.Open(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			lcfg := DefaultConfig()
			lcfg.Logger = slog.New(slog.DiscardHandler)
			lcfg.Store = db
			lcfg.SyncAlways = mode == "always"
			lcfg.Policies = []policy.Policy{{Name: "default", Limit: 1 << 31, Window: 5 * time.Minute}}
			l, err := New(lcfg)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			go l.Run(ctx)
			defer func() { cancel(); l.Close() }()
			b.ReportAllocs()
			b.SetParallelism(32) // many concurrent callers share each commit
			var seq atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					key := "k" + strconv.Itoa(int(seq.Add(1)%10_000))
					if _, err := l.Allow(ctx, Request{Key: key}); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// TestBytesPerKey reports the heap held per active key of the default
// policy, and fails over the 512-byte budget. Skipped with -short.
func TestBytesPerKey(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 200k keys")
	}
	const n = 200_000
	measure := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("tenant:%07d", i) // 14-byte keys
	}
	cfg := DefaultConfig()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := measure()
	for _, k := range keys {
		l.Allow(context.Background(), Request{Key: k})
	}
	after := measure()
	per := float64(after-before) / n
	t.Logf("heap per active key of the default policy: %.0f bytes (%d keys)", per, n)
	if per > 512 {
		t.Errorf("%.0f bytes per key, want <= 512", per)
	}
	runtime.KeepAlive(l)
	runtime.KeepAlive(keys)
}

// BenchmarkBytesPerKey reports the heap held per active key of the default
// policy with 1M keys (b.N is ignored beyond the first run).
func BenchmarkBytesPerKey(b *testing.B) {
	const n = 1_000_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("tenant:%07d", i)
	}
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		l, err := New(DefaultConfig())
		if err != nil {
			b.Fatal(err)
		}
		for _, k := range keys {
			l.Allow(context.Background(), Request{Key: k})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
		runtime.KeepAlive(l)
	}
}

// BenchmarkReplicationRound measures one replication round of a busy
// owner: the decisions of one 10 ms interval at ~3,000 calls a second
// (30, on distinct keys of 10,000), then TakeChanged. Per round, not per
// call: a round runs every interval however few keys changed.
func BenchmarkReplicationRound(b *testing.B) {
	ctx := context.Background()
	var ns atomic.Int64
	base := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	cfg.Replicate = true
	cfg.Now = func() time.Time { return base.Add(time.Duration(ns.Add(1000))) }
	cfg.Policies = []policy.Policy{{Name: "default", Limit: 1 << 31, Window: 5 * time.Minute}}
	l, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	const n, perRound = 10_000, 30
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "tenant:" + strconv.Itoa(i)
		l.Allow(ctx, Request{Key: keys[i]})
	}
	l.TakeChanged(true)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		for range perRound {
			i = (i + 7919) % n
			if _, err := l.Allow(ctx, Request{Key: keys[i]}); err != nil {
				b.Fatal(err)
			}
		}
		if got := l.TakeChanged(true); len(got) != perRound {
			b.Fatalf("TakeChanged returned %d keys, want %d", len(got), perRound)
		}
	}
}
