package limiter

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/store"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 11, 22, 6, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var uploads = policy.Policy{Name: "uploads", Limit: 100, Window: time.Minute, MaxConcurrent: 5, LeaseTTL: 30 * time.Second}

func mustOpenStore(t testing.TB, dir string) *store.DB {
	t.Helper()
	cfg := store.DefaultConfig()
	cfg.Path = filepath.Join(dir, "state.db")
	db, err := store.Open(cfg)
	if err != nil {
		t.Fatalf("store.Open() error = %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustNew(t testing.TB, clk *fakeClock, db *store.DB, ps ...policy.Policy) *Limiter {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Now = clk.Now
	cfg.Store = db
	cfg.Policies = append(cfg.Policies, ps...)
	l, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func allow(t testing.TB, l *Limiter, req Request) Result {
	t.Helper()
	res, err := l.Allow(context.Background(), req)
	if err != nil {
		t.Fatalf("Allow(%+v) error = %v", req, err)
	}
	return res
}

func TestDefaultPolicy601stDenied(t *testing.T) {
	clk := newClock()
	l := mustNew(t, clk, nil)
	for i := range 600 {
		res := allow(t, l, Request{Key: "k"})
		if !res.Allowed || res.Remaining != int64(599-i) {
			t.Fatalf("call %d: Allow() = %+v, want allowed with remaining %d", i+1, res, 599-i)
		}
	}
	res := allow(t, l, Request{Key: "k"})
	if res.Allowed || res.Code != CodeRateLimited || res.Remaining != 0 {
		t.Fatalf("601st Allow() = %+v, want denied 122", res)
	}
	if want := 5*time.Minute + 5*time.Second; res.RetryAfter != want {
		t.Errorf("RetryAfter = %v, want %v", res.RetryAfter, want)
	}
	if other := allow(t, l, Request{Key: "other"}); !other.Allowed {
		t.Errorf("another key: Allow() = %+v, want allowed", other)
	}
}

func TestBadInput(t *testing.T) {
	l := mustNew(t, newClock(), nil)
	tests := []struct {
		name string
		req  Request
		want error
	}{
		{"empty key", Request{Key: ""}, ErrBadKey},
		{"long key", Request{Key: strings.Repeat("k", 513)}, ErrBadKey},
		{"invalid utf8", Request{Key: "\xff"}, ErrBadKey},
		{"negative hits", Request{Key: "k", Hits: -1}, ErrBadHits},
		{"unknown policy", Request{Key: "k", Policy: "nope"}, ErrUnknownPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := l.Allow(context.Background(), tt.req); !errors.Is(err, tt.want) {
				t.Errorf("Allow() error = %v, want %v", err, tt.want)
			}
		})
	}
	if res := allow(t, l, Request{Key: strings.Repeat("k", 512)}); !res.Allowed {
		t.Errorf("512-byte key: Allow() = %+v, want allowed", res)
	}
}

func TestHitsAndDryRun(t *testing.T) {
	l := mustNew(t, newClock(), nil, policy.Policy{Name: "p", Limit: 10, Window: time.Minute})
	if res := allow(t, l, Request{Policy: "p", Key: "k", Hits: 11}); res.Allowed || res.Code != CodeRateLimited || res.Remaining != 10 {
		t.Fatalf("hits over limit: Allow() = %+v, want denied with 10 remaining", res)
	}
	if res := allow(t, l, Request{Policy: "p", Key: "k", Hits: 4, DryRun: true}); !res.Allowed || res.Remaining != 6 {
		t.Fatalf("dry run: Allow() = %+v, want allowed, remaining 6", res)
	}
	if res := allow(t, l, Request{Policy: "p", Key: "k", Hits: 10}); !res.Allowed || res.Remaining != 0 {
		t.Fatalf("after dry run: Allow() = %+v, want allowed, remaining 0 (dry run counted nothing)", res)
	}
	if l.Keys() != 1 {
		t.Errorf("Keys() = %d, want 1 (a dry run on a new key stores nothing)", l.Keys())
	}
}

func TestLeases(t *testing.T) {
	clk := newClock()
	l := mustNew(t, clk, nil, uploads)
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		res := allow(t, l, Request{Policy: "uploads", Key: "u"})
		if !res.Allowed || res.LeaseID == "" || res.InFlight != int64(i+1) {
			t.Fatalf("call %d: Allow() = %+v, want allowed with a lease", i, res)
		}
		ids = append(ids, res.LeaseID)
	}
	res := allow(t, l, Request{Policy: "uploads", Key: "u"})
	if res.Allowed || res.Code != CodeConcurrency || res.LeaseID != "" || res.InFlight != 5 {
		t.Fatalf("6th: Allow() = %+v, want 123 with no lease", res)
	}
	if res.Remaining != 95 {
		t.Errorf("123 counted hits: Remaining = %d, want 95", res.Remaining)
	}
	if res.RetryAfter != 30*time.Second {
		t.Errorf("123 RetryAfter = %v, want 30s (the oldest lease's expiry)", res.RetryAfter)
	}
	if n, err := l.Release(ctx, ids[0]); err != nil || n != 4 {
		t.Fatalf("Release() = %d, %v, want 4, nil", n, err)
	}
	if _, err := l.Release(ctx, ids[0]); !errors.Is(err, ErrLeaseNotFound) {
		t.Errorf("second Release() error = %v, want ErrLeaseNotFound", err)
	}
	unknown := LeaseID{Policy: "uploads", Key: "u", Nonce: 42}.String()
	if _, err := l.Release(ctx, unknown); !errors.Is(err, ErrLeaseNotFound) {
		t.Errorf("unknown Release() error = %v, want ErrLeaseNotFound", err)
	}
	if _, err := l.Release(ctx, "not-a-lease"); !errors.Is(err, ErrBadLeaseID) {
		t.Errorf("bad id Release() error = %v, want ErrBadLeaseID", err)
	}
	clk.Advance(30 * time.Second)
	if _, err := l.Release(ctx, ids[1]); !errors.Is(err, ErrLeaseNotFound) {
		t.Errorf("expired Release() error = %v, want ErrLeaseNotFound", err)
	}
	if res := allow(t, l, Request{Policy: "uploads", Key: "u"}); !res.Allowed || res.InFlight != 1 {
		t.Errorf("after expiry: Allow() = %+v, want allowed with 1 in flight", res)
	}
}

func TestRateDenialTakesNoLease(t *testing.T) {
	p := policy.Policy{Name: "tight", Limit: 2, Window: time.Minute, MaxConcurrent: 10}
	l := mustNew(t, newClock(), nil, p)
	allow(t, l, Request{Policy: "tight", Key: "k"})
	allow(t, l, Request{Policy: "tight", Key: "k"})
	res := allow(t, l, Request{Policy: "tight", Key: "k"})
	if res.Allowed || res.Code != CodeRateLimited || res.LeaseID != "" || res.InFlight != 2 {
		t.Fatalf("Allow() = %+v, want 122 with 2 in flight and no lease", res)
	}
}

func TestLeaseCapUnderContention(t *testing.T) {
	p := policy.Policy{Name: "cap", Limit: 1 << 30, Window: time.Minute, MaxConcurrent: 7}
	l := mustNew(t, newClock(), nil, p)
	var mu sync.Mutex
	inFlight, peak := 0, 0
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				res, err := l.Allow(context.Background(), Request{Policy: "cap", Key: "hot"})
				if err != nil {
					t.Error(err)
					return
				}
				if res.InFlight > 7 {
					t.Errorf("InFlight = %d, want <= 7", res.InFlight)
				}
				if !res.Allowed {
					continue
				}
				mu.Lock()
				inFlight++
				peak = max(peak, inFlight)
				mu.Unlock()
				runtime.Gosched() // hold the lease while others try
				mu.Lock()
				inFlight--
				mu.Unlock()
				if _, err := l.Release(context.Background(), res.LeaseID); err != nil {
					t.Errorf("Release() error = %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if peak > 7 || peak == 0 {
		t.Errorf("peak leases held = %d, want 1..7", peak)
	}
}

func TestShadow(t *testing.T) {
	l := mustNew(t, newClock(), nil, policy.Policy{Name: "s", Limit: 1, Window: time.Minute, Shadow: true})
	allow(t, l, Request{Policy: "s", Key: "k"})
	res := allow(t, l, Request{Policy: "s", Key: "k"})
	if !res.Allowed || res.Code != 0 || res.ShadowCode != CodeRateLimited {
		t.Fatalf("Allow() = %+v, want allowed with shadow code 122", res)
	}
}

func TestPersistAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	db := mustOpenStore(t, dir)
	l := mustNew(t, clk, db, uploads)
	for range 600 {
		allow(t, l, Request{Key: "k"})
	}
	lease := allow(t, l, Request{Policy: "uploads", Key: "u"})
	if err := l.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	db.Close()

	db2 := mustOpenStore(t, dir)
	l2 := mustNew(t, clk, db2, uploads)
	if res := allow(t, l2, Request{Key: "k"}); res.Allowed {
		t.Fatalf("after restart: Allow() = %+v, want denied", res)
	}
	if n, err := l2.Release(context.Background(), lease.LeaseID); err != nil || n != 0 {
		t.Fatalf("after restart: Release() = %d, %v, want 0, nil", n, err)
	}
}

func TestSweepKeepsFileFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 200k keys")
	}
	dir := t.TempDir()
	clk := newClock()
	db := mustOpenStore(t, dir)
	p := policy.Policy{Name: "churn", Limit: 10, Window: time.Minute}
	l := mustNew(t, clk, db, p)
	ctx := context.Background()
	var sizes []int64
	const perWindow = 50_000
	for w := range 4 {
		for i := range perWindow {
			allow(t, l, Request{Policy: "churn", Key: fmt.Sprintf("w%d-key-%d", w, i)})
			if i%10_000 == 0 {
				clk.Advance(time.Second)
				if err := l.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		clk.Advance(2 * time.Minute)
		if n := l.Sweep(); n != perWindow {
			t.Fatalf("window %d: Sweep() = %d, want %d", w, n, perWindow)
		}
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		size, _ := db.Size()
		n, _ := db.Len(store.KindState)
		if n != 0 {
			t.Fatalf("window %d: %d records left, want 0", w, n)
		}
		sizes = append(sizes, size)
	}
	t.Logf("file sizes after each window: %v", sizes)
	if sizes[3] > sizes[0]+sizes[0]/5 {
		t.Errorf("file grew from %d to %d bytes as keys churned", sizes[0], sizes[3])
	}
}

func TestLeaseIDRoundTrip(t *testing.T) {
	id := LeaseID{Policy: "uploads", Key: "tenant:42:/invoices", Nonce: 1<<64 - 1}
	got, err := DecodeLeaseID(id.String())
	if err != nil || got != id {
		t.Fatalf("DecodeLeaseID() = %+v, %v, want %+v", got, err, id)
	}
}

func FuzzDecodeLeaseID(f *testing.F) {
	f.Add(LeaseID{Policy: "default", Key: "k", Nonce: 7}.String())
	f.Add("")
	f.Add("AQdkZWZhdWx0AWsAAAAAAAAABw")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := DecodeLeaseID(s)
		if err != nil {
			if !errors.Is(err, ErrBadLeaseID) {
				t.Fatalf("DecodeLeaseID() error = %v, want ErrBadLeaseID", err)
			}
			return
		}
		again, err := DecodeLeaseID(id.String())
		if err != nil || again != id {
			t.Fatalf("round trip: %+v, %v, want %+v", again, err, id)
		}
	})
}

// TestRunSleepsWhenIdle: Run stops its flush ticker after a flush with
// nothing to write, and whatever is queued next (a hit, a swept key's
// delete, a dropped policy's keys) still reaches the store.
func TestRunSleepsWhenIdle(t *testing.T) {
	clk := newClock()
	db := mustOpenStore(t, t.TempDir())
	cfg := DefaultConfig()
	cfg.Now, cfg.Store, cfg.FlushInterval = clk.Now, db, time.Millisecond
	cfg.Policies = []policy.Policy{{Name: "default", Limit: 100, Window: time.Minute}, {Name: "other", Limit: 100, Window: time.Minute}}
	l, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	idle := make(chan struct{}, 1)
	l.onIdle = func() {
		select {
		case idle <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)
	t.Cleanup(func() { l.Close() })
	waitIdle := func(what string) {
		t.Helper()
		select {
		case <-idle:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: Run never went idle", what)
		}
	}
	stored := func() int {
		t.Helper()
		n, err := db.Len(store.KindState)
		if err != nil {
			t.Fatalf("Len() error = %v", err)
		}
		return n
	}

	waitIdle("at start")
	for i := range 3 {
		allow(t, l, Request{Key: fmt.Sprintf("k%d", i)})
		waitIdle("after a hit")
		if got := stored(); got != i+1 {
			t.Fatalf("stored keys after %d hits on new keys = %d, want %d", i+1, got, i+1)
		}
	}
	allow(t, l, Request{Key: "gone", Policy: "other"})
	waitIdle("after a hit on other")
	if got := stored(); got != 4 {
		t.Fatalf("stored keys = %d, want 4", got)
	}
	if _, err := l.DeletePolicy(ctx, "other"); err != nil {
		t.Fatalf("DeletePolicy() error = %v", err)
	}
	waitIdle("after DeletePolicy")
	if got := stored(); got != 3 {
		t.Fatalf("stored keys after dropping a policy = %d, want 3", got)
	}
	clk.Advance(2 * time.Minute) // every window is empty: the next sweep forgets the keys
	if n := l.Sweep(); n != 3 {
		t.Fatalf("Sweep() = %d, want 3", n)
	}
	waitIdle("after a sweep")
	if got := stored(); got != 0 {
		t.Fatalf("stored keys after a sweep = %d, want 0", got)
	}
}
