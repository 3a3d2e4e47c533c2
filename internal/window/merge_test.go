package window

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestMergeNeverUndercounts builds two histories of one key on two nodes
// (a shared prefix, then diverging hits) and checks that the merge counts at
// least what either side counts, at every later instant, is idempotent, and
// that merge order does not matter.
func TestMergeNeverUndercounts(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for seed := range 200 {
		r := MustRate(int64(1+rng.IntN(500)), time.Duration(1+rng.IntN(300))*time.Second, 1+rng.IntN(120))
		base := time.Unix(1_700_000_000, 0)
		var a, b Sliding
		now := base
		for range rng.IntN(50) {
			now = now.Add(time.Duration(rng.Int64N(int64(r.Step()) * 3)))
			a.Add(&r, now, int64(1+rng.IntN(3)))
		}
		b = *clone(t, &a)
		nowA, nowB := now, now
		for range rng.IntN(50) {
			nowA = nowA.Add(time.Duration(rng.Int64N(int64(r.Step()) * 2)))
			a.Add(&r, nowA, 1)
		}
		for range rng.IntN(50) {
			nowB = nowB.Add(time.Duration(rng.Int64N(int64(r.Step()) * 2)))
			b.Add(&r, nowB, 2)
		}
		ab := clone(t, &a)
		ab.Merge(&r, &b)
		ba := clone(t, &b)
		ba.Merge(&r, &a)
		again := clone(t, ab)
		again.Merge(&r, &b)
		later := latest(nowA, nowB, now, base)
		for d := time.Duration(0); d <= r.Window()+2*r.Step(); d += r.Step() / 2 {
			at := later.Add(d)
			ca, cb, cab, cba, cagain := a.Count(&r, at), b.Count(&r, at), ab.Count(&r, at), ba.Count(&r, at), again.Count(&r, at)
			if cab < ca || cab < cb {
				t.Fatalf("seed %d at +%v: merged count %d < max(%d, %d)", seed, d, cab, ca, cb)
			}
			if cab != cba || cab != cagain {
				t.Fatalf("seed %d at +%v: a+b=%d b+a=%d (a+b)+b=%d, want equal", seed, d, cab, cba, cagain)
			}
		}
	}
}

func latest(ts ...time.Time) time.Time {
	m := ts[0]
	for _, t := range ts[1:] {
		if t.After(m) {
			m = t
		}
	}
	return m
}

func TestLeasesMergeAndReplace(t *testing.T) {
	now := time.Unix(1000, 0)
	var a, b Leases
	a.Acquire(1, now, time.Second)
	a.Acquire(2, now, time.Second)
	b.Acquire(2, now, time.Minute)
	b.Acquire(3, now, time.Second)
	m := a
	m.held = append([]Lease(nil), a.held...)
	m.Merge(&b)
	if m.Len() != 3 || m.InFlight(now.Add(30*time.Second)) != 1 {
		t.Errorf("Merge() = %+v, want ids 1,2,3 with 2 expiring after a minute", m.held)
	}
	a.Replace(&b)
	if a.Len() != 2 || a.Release(1, now) {
		t.Errorf("Replace() = %+v, want b's leases only", a.held)
	}
}
