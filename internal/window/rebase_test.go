package window

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestSlidingRebase uses a state made under one Rate with another: no hit is
// forgotten before the new Rate would forget it, and none is invented.
func TestSlidingRebase(t *testing.T) {
	for seed := range 200 {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		a, b := randomRate(rng), randomRate(rng)
		if rng.IntN(4) == 0 { // same window, other buckets
			if r, err := NewRate(b.limit, a.window, []int{1, 7, 60, 120}[rng.IntN(4)]); err == nil {
				b = r
			}
		}
		t.Run(fmt.Sprintf("seed=%d/%v/%d->%v/%d", seed, a, a.buckets, b, b.buckets), func(t *testing.T) {
			var s Sliding
			m := &model{r: a}
			for _, o := range randomTrace(rng, a, 100) {
				eff := m.eff(o.now)
				if d := s.Allow(&a, time.Unix(0, o.now), o.hits); d.Allowed && o.hits > 0 {
					m.log = append(m.log, entry{eff, o.hits})
					m.newest, m.seen = eff, true
				}
			}
			if !m.seen {
				return
			}
			last := m.newest
			prev := s.Count(&a, time.Unix(0, last))
			if prev != m.count(last) {
				t.Fatalf("Count() before rebase = %d, want %d", prev, m.count(last))
			}
			// The hits a still remembers, at their real times.
			var kept []entry
			for _, e := range m.log {
				if floorDiv(e.t, a.step) >= floorDiv(last, a.step)-int64(a.buckets) {
					kept = append(kept, e)
				}
			}
			exactIn := func(now int64) int64 { // kept hits less than b.window ago
				var n int64
				for _, e := range kept {
					if now-e.t < int64(b.window) {
						n += e.hits
					}
				}
				return n
			}
			c := clone(t, &s)
			got := s.Count(&b, time.Unix(0, last-int64(b.window)*rng.Int64N(2))) // now, or the clock a window back
			if got > prev {
				t.Errorf("Count() right after rebase = %d, want <= %d", got, prev)
			}
			if b.window+time.Duration(b.step) >= a.window+time.Duration(a.step) && got != prev {
				t.Errorf("Count() right after rebase to a longer window = %d, want %d", got, prev)
			}
			if want := exactIn(last); got < want {
				t.Errorf("Count() right after rebase = %d, want >= %d", got, want)
			}
			// Rebasing in Count or in Allow gives the same state.
			c.Add(&b, time.Unix(0, last), 0)
			if x, y := encode(t, c), encode(t, &s); string(x) != string(y) {
				t.Errorf("state rebased by Add = %x, by Count = %x", x, y)
			}
			// Later on, still nothing is forgotten early.
			for k := range int64(3 * b.buckets) {
				now := last + k*b.step/2 + rng.Int64N(b.step)
				if got, want := s.Count(&b, time.Unix(0, now)), exactIn(now); got < want {
					t.Fatalf("Count() %v after rebase = %d, want >= %d", time.Duration(now-last), got, want)
				}
			}
			// And back again.
			back := s.Count(&a, time.Unix(0, last))
			if back > prev {
				t.Errorf("Count() after rebase back = %d, want <= %d", back, prev)
			}
		})
	}
}

// TestSlidingRebaseKeepsNewestTime: after a rebase, a clock that stepped
// back still stands at the newest time seen, so a hit admitted then is
// remembered a full window from that time.
func TestSlidingRebaseKeepsNewestTime(t *testing.T) {
	tests := []struct {
		name string
		hits int64 // under the first Rate
	}{
		{"with hits", 1},
		{"empty", 0},
	}
	a := MustRate(5, time.Minute, 60)
	b := MustRate(5, time.Minute, 30)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Sliding
			s.Add(&a, at(100*time.Second), tt.hits)
			s.Add(&a, at(200*time.Second), 0) // newest time seen: 200s
			// The clock steps back to 150s and the policy changes.
			if d := s.Allow(&b, at(150*time.Second), 4); !d.Allowed {
				t.Fatalf("Allow(4) = %+v, want allowed", d)
			}
			// The 4 hits count as made at 200s: still there at 200s+1m-1ns.
			if got := s.Count(&b, at(260*time.Second-1)); got != 4 {
				t.Errorf("Count() at 260s-1ns = %d, want 4", got)
			}
			if d := s.Allow(&b, at(260*time.Second-1), 2); d.Allowed {
				t.Errorf("Allow(2) at 260s-1ns = %+v, want denied", d)
			}
		})
	}
}
