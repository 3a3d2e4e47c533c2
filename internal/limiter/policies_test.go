package limiter

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/policy"
)

func TestPolicyChangesPersist(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clk := newClock()
	db := mustOpenStore(t, dir)
	l := mustNew(t, clk, db, uploads)

	p := policy.Policy{Name: "burst", Limit: 2, Window: time.Minute}
	if _, err := l.CreatePolicy(ctx, p); err != nil {
		t.Fatalf("CreatePolicy() error = %v", err)
	}
	if _, err := l.CreatePolicy(ctx, p); !errors.Is(err, ErrPolicyExists) {
		t.Errorf("second CreatePolicy() error = %v, want ErrPolicyExists", err)
	}
	if _, err := l.UpdatePolicy(ctx, policy.Policy{Name: "nope", Limit: 1, Window: time.Minute}); !errors.Is(err, ErrUnknownPolicy) {
		t.Errorf("UpdatePolicy(missing) error = %v, want ErrUnknownPolicy", err)
	}
	if _, err := l.CreatePolicy(ctx, policy.Policy{Name: "bad", Limit: 0, Window: time.Minute}); !errors.Is(err, policy.ErrInvalid) {
		t.Errorf("CreatePolicy(invalid) error = %v, want ErrInvalid", err)
	}
	if _, err := l.DeletePolicy(ctx, "default"); !errors.Is(err, policy.ErrInvalid) {
		t.Errorf("DeletePolicy(default) error = %v, want ErrInvalid", err)
	}
	allow(t, l, Request{Policy: "burst", Key: "k"})
	allow(t, l, Request{Policy: "burst", Key: "k"})
	if res := allow(t, l, Request{Policy: "burst", Key: "k"}); res.Allowed {
		t.Fatalf("3rd call under limit 2 allowed")
	}
	// Raising the limit keeps the counted hits.
	if _, err := l.UpdatePolicy(ctx, policy.Policy{Name: "burst", Limit: 3, Window: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if res := allow(t, l, Request{Policy: "burst", Key: "k"}); !res.Allowed || res.Remaining != 0 {
		t.Fatalf("after update: Allow() = %+v, want allowed with 0 remaining", res)
	}
	if _, err := l.DeletePolicy(ctx, "uploads"); err != nil {
		t.Fatal(err)
	}
	l.Close()
	db.Close()

	db2 := mustOpenStore(t, dir)
	l2 := mustNew(t, clk, db2, uploads) // the config still has uploads; the tombstone wins
	if _, ok := l2.Policy("uploads"); ok {
		t.Errorf("deleted policy came back after restart")
	}
	got, ok := l2.Policy("burst")
	if !ok || got.Limit != 3 {
		t.Fatalf("Policy(burst) = %+v, %v, want limit 3", got, ok)
	}
	if res := allow(t, l2, Request{Policy: "burst", Key: "k"}); res.Allowed {
		t.Errorf("after restart: Allow() = %+v, want denied (3 hits counted)", res)
	}
	u, err := l2.Usage("burst", "k")
	if err != nil || u.Used != 3 || u.Remaining != 0 {
		t.Errorf("Usage() = %+v, %v, want 3 used", u, err)
	}
	if err := l2.Reset(ctx, "burst", "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Usage("burst", "k"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("Usage() after Reset error = %v, want ErrKeyNotFound", err)
	}
}

func TestApplyPolicyRecordVersions(t *testing.T) {
	ctx := context.Background()
	l := mustNew(t, newClock(), nil)
	p := policy.Policy{Name: "x", Limit: 5, Window: time.Minute}.WithDefaults()
	if ok, err := l.ApplyPolicyRecord(ctx, policy.Record{Policy: p, Version: 10}); !ok || err != nil {
		t.Fatalf("ApplyPolicyRecord(v10) = %v, %v", ok, err)
	}
	older := p
	older.Limit = 1
	if ok, _ := l.ApplyPolicyRecord(ctx, policy.Record{Policy: older, Version: 9}); ok {
		t.Errorf("an older record was applied")
	}
	if ok, _ := l.ApplyPolicyRecord(ctx, policy.Record{Policy: policy.Policy{Name: "x"}, Version: 11, Deleted: true}); !ok {
		t.Errorf("a newer tombstone was not applied")
	}
	if _, ok := l.Policy("x"); ok {
		t.Errorf("policy x survived its tombstone")
	}
	if recs := l.PolicyRecords(); len(recs) != 1 || !recs[0].Deleted {
		t.Errorf("PolicyRecords() = %+v, want the tombstone", recs)
	}
}
