package limiter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/store"
)

// TestFloodOfKeysIsPagedNotDropped sends a flood of distinct keys through a
// limiter with a small in-memory budget: memory stays under the budget, and
// every key's hits are still counted when it comes back (read from bbolt).
func TestFloodOfKeysIsPagedNotDropped(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	db := mustOpenStore(t, t.TempDir())
	cfg := DefaultConfig()
	cfg.Now = clk.Now
	cfg.Store = db
	cfg.MaxKeys = 1000
	cfg.Policies = []policy.Policy{{Name: "two", Limit: 2, Window: time.Minute}}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	const n = 20_000
	for i := range n {
		allow(t, l, Request{Policy: "two", Key: fmt.Sprintf("flood-%d", i), Hits: 2})
		if i%500 == 499 {
			if err := l.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if k := l.Keys(); k > 1000 {
				t.Fatalf("after %d keys and a flush: %d keys in memory, budget 1000", i+1, k)
			}
		}
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if k := l.Keys(); k > 1000 {
		t.Errorf("%d keys in memory, budget 1000", k)
	}
	// Every key is at its limit, paged out or not.
	for i := 0; i < n; i += 97 {
		key := fmt.Sprintf("flood-%d", i)
		if res := allow(t, l, Request{Policy: "two", Key: key}); res.Allowed {
			t.Fatalf("%s: Allow() = %+v, want denied (its 2 hits were paged out, not dropped)", key, res)
		}
		if u, err := l.Usage("two", key); err != nil || u.Used != 2 {
			t.Fatalf("Usage(%s) = %+v, %v, want 2 used", key, u, err)
		}
	}
	// Once the windows have passed, sweeping removes the paged-out records too.
	clk.Advance(2 * time.Minute)
	for range 6 {
		l.Sweep()
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := db.Len(store.KindState); left != 0 {
		t.Errorf("%d records left after the windows passed, want 0", left)
	}
}

func TestMaxKeysNeedsStore(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxKeys = 10
	if _, err := New(cfg); err == nil {
		t.Error("New() with MaxKeys and no Store succeeded")
	}
}
