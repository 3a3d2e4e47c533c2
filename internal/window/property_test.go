package window

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// model is a brute-force log of every admitted hit, against which a Sliding
// is checked. Times are effective times in Unix nanoseconds.
type model struct {
	r      Rate
	log    []entry // admitted hits, oldest first
	newest int64   // newest time of an admitted hit
	seen   bool    // newest is set
}

type entry struct{ t, hits int64 }

// eff returns the effective time of a call at now: the clock never goes
// back before the newest time the Sliding recorded.
func (m *model) eff(now int64) int64 {
	if m.seen && now < m.newest {
		return m.newest
	}
	return now
}

// count returns the hits the bucketed model counts at t: those recorded in
// the step of t and the previous Buckets steps.
func (m *model) count(t int64) int64 {
	first := floorDiv(t, m.r.step) - int64(m.r.buckets)
	var n int64
	for _, e := range m.log {
		if floorDiv(e.t, m.r.step) >= first && e.t <= t {
			n += e.hits
		}
	}
	return n
}

// exact returns the hits admitted in [from, to].
func (m *model) exact(from, to int64) int64 {
	var n int64
	for _, e := range m.log {
		if e.t >= from && e.t <= to {
			n += e.hits
		}
	}
	return n
}

// want returns the decision the model makes for hits at effective time t.
func (m *model) want(t, hits int64) Decision {
	r := m.r
	n := int64(r.buckets)
	c := m.count(t)
	d := Decision{Limit: r.limit, Allowed: hits <= r.limit-c}
	newest := int64(-1 << 62)
	first := floorDiv(t, r.step) - n
	for _, e := range m.log {
		if b := floorDiv(e.t, r.step); b >= first && e.hits > 0 {
			newest = max(newest, b)
		}
	}
	if d.Allowed {
		d.Remaining = r.limit - c - hits
		if hits > 0 {
			newest = floorDiv(t, r.step)
		}
	} else {
		d.Remaining = max(r.limit-c, 0)
		if hits > r.limit {
			d.RetryAfter = r.window
		} else {
			// The first step boundary at which the call fits.
			for k := floorDiv(t, r.step) + 1; ; k++ {
				if m.count(k*r.step)+hits <= r.limit {
					d.RetryAfter = time.Duration(k*r.step - t)
					break
				}
			}
		}
	}
	if newest > -1<<62 {
		d.ResetAfter = time.Duration((newest+n+1)*r.step - t)
	}
	return d
}

// admit records an admitted call and checks property (a): the hits admitted
// in any interval of length window never exceed the limit.
func (m *model) admit(t *testing.T, when, hits int64) {
	t.Helper()
	if hits == 0 {
		return
	}
	m.log = append(m.log, entry{when, hits})
	m.newest, m.seen = when, true
	if in := m.exact(when-int64(m.r.window)+1, when); in > m.r.limit {
		t.Fatalf("%d hits admitted in the window ending at %d, limit %d", in, when, m.r.limit)
	}
	// Forget what no later check needs: older than window+2 steps.
	cut := when - int64(m.r.window) - 2*m.r.step
	i := 0
	for i < len(m.log) && m.log[i].t < cut {
		i++
	}
	m.log = m.log[i:]
}

// op is one call in a trace.
type op struct {
	now  int64
	hits int64
	peek bool
}

// runTrace plays ops against a Sliding and the model, checking every
// decision, properties (a) to (c), RetryAfter and ResetAfter.
func runTrace(t *testing.T, r Rate, ops []op, rng *rand.Rand) {
	t.Helper()
	m := &model{r: r}
	var s Sliding
	for i, o := range ops {
		now := time.Unix(0, o.now)
		eff := m.eff(o.now)
		want := m.want(eff, o.hits)
		var got Decision
		if o.peek {
			before := encode(t, &s)
			got = s.Peek(&r, now, o.hits)
			if after := encode(t, &s); string(after) != string(before) {
				t.Fatalf("op %d: Peek changed the state: %x, want %x", i, after, before)
			}
		} else {
			got = s.Allow(&r, now, o.hits)
		}
		if got != want {
			t.Fatalf("op %d (%+v, eff %d): Allow(%d) = %+v, want %+v", i, o, eff, o.hits, got, want)
		}
		// (c) Remaining is never negative.
		if got.Remaining < 0 {
			t.Fatalf("op %d: Remaining = %d, want >= 0", i, got.Remaining)
		}
		if !got.Allowed {
			// (b) Every denial is explained by hits admitted less than
			// window+step ago.
			if o.hits <= r.limit {
				if recent := m.exact(eff-int64(r.window)-r.step, eff); recent+o.hits <= r.limit {
					t.Fatalf("op %d: denied %d hits at %d with only %d admitted in the last window+step, limit %d", i, o.hits, eff, recent, r.limit)
				}
				checkRetryAfter(t, &s, r, eff, o.hits, got.RetryAfter)
			}
		} else if !o.peek {
			m.admit(t, eff, o.hits)
		}
		if got.Allowed && !o.peek || rng.IntN(8) == 0 {
			checkResetAfter(t, &s, r, eff)
		}
		if rng.IntN(16) == 0 { // the state survives a round trip
			s = *clone(t, &s)
		}
	}
}

// checkRetryAfter checks that the denied call fits after retry, and not a
// nanosecond or a step earlier.
func checkRetryAfter(t *testing.T, s *Sliding, r Rate, eff, hits int64, retry time.Duration) {
	t.Helper()
	if retry <= 0 || retry > r.window+time.Duration(r.step) {
		t.Fatalf("RetryAfter = %v, want in (0, %v]", retry, r.window+time.Duration(r.step))
	}
	if d := clone(t, s).Allow(&r, time.Unix(0, eff).Add(retry), hits); !d.Allowed {
		t.Fatalf("Allow(%d) after RetryAfter %v = %+v, want allowed", hits, retry, d)
	}
	if d := clone(t, s).Allow(&r, time.Unix(0, eff).Add(retry-1), hits); d.Allowed {
		t.Fatalf("Allow(%d) 1ns before RetryAfter %v = %+v, want denied", hits, retry, d)
	}
	if retry > time.Duration(r.step) {
		if d := clone(t, s).Allow(&r, time.Unix(0, eff).Add(retry-time.Duration(r.step)), hits); d.Allowed {
			t.Fatalf("Allow(%d) a step before RetryAfter %v = %+v, want denied", hits, retry, d)
		}
	}
}

// checkResetAfter checks that the window is empty after ResetAfter, and not a
// nanosecond before.
func checkResetAfter(t *testing.T, s *Sliding, r Rate, eff int64) {
	t.Helper()
	d := s.Peek(&r, time.Unix(0, eff), 0)
	c := clone(t, s)
	if d.ResetAfter == 0 {
		if n := c.Count(&r, time.Unix(0, eff)); n != 0 {
			t.Fatalf("ResetAfter = 0 with Count() = %d, want 0", n)
		}
		return
	}
	if n := c.Count(&r, time.Unix(0, eff).Add(d.ResetAfter-1)); n == 0 {
		t.Fatalf("Count() 1ns before ResetAfter %v = 0, want > 0", d.ResetAfter)
	}
	if n := c.Count(&r, time.Unix(0, eff).Add(d.ResetAfter)); n != 0 {
		t.Fatalf("Count() after ResetAfter %v = %d, want 0", d.ResetAfter, n)
	}
	if got := c.Peek(&r, time.Unix(0, eff).Add(d.ResetAfter), 0); got.Remaining != r.limit || !c.Empty(&r, time.Unix(0, eff).Add(d.ResetAfter)) {
		t.Fatalf("Peek(0) after ResetAfter = %+v, want Remaining %d and Empty", got, r.limit)
	}
}

// randomRate returns limit 1..1000, window 1s..5m, buckets 1..120.
func randomRate(rng *rand.Rand) Rate {
	limit := []int64{1, 2, 3, 10, 1 + rng.Int64N(1000)}[rng.IntN(5)]
	window := []time.Duration{time.Second, time.Minute, 5 * time.Minute, time.Second + time.Duration(rng.Int64N(int64(5*time.Minute-time.Second)))}[rng.IntN(4)]
	buckets := []int{1, 2, 60, 120, 1 + rng.IntN(120)}[rng.IntN(5)]
	return MustRate(limit, window, buckets)
}

// randomTrace mixes small steps, step and window boundaries, standing still
// and jumps back.
func randomTrace(rng *rand.Rand, r Rate, n int) []op {
	step, win := r.step, int64(r.window)
	now := []int64{1_700_000_000_123_456_789, -1_000_000_007_000, 0, rng.Int64N(1 << 61)}[rng.IntN(4)]
	ops := make([]op, 0, n)
	for range n {
		switch rng.IntN(12) {
		case 0: // stand still
		case 1:
			now++
		case 2: // around the next step boundary
			now = (floorDiv(now, step)+1)*step + rng.Int64N(3) - 1
		case 3: // around a window boundary
			now += win + rng.Int64N(3) - 1
		case 4:
			now += step * (1 + rng.Int64N(3))
		case 5: // back by less than a step
			now -= rng.Int64N(step)
		case 6: // back by more than a window
			now -= win + rng.Int64N(2*win)
		case 7:
			now += win + step + rng.Int64N(3) - 1
		default:
			now += rng.Int64N(max(2*win/max(r.limit, 1), step/4, 1))
		}
		var hits int64
		switch rng.IntN(6) {
		case 0:
			hits = rng.Int64N(r.limit + 3)
		case 1:
			hits = 0
		case 2:
			hits = r.limit - rng.Int64N(2)
		default:
			hits = 1 + rng.Int64N(max(r.limit/8, 1))
		}
		ops = append(ops, op{now: now, hits: hits, peek: rng.IntN(10) == 0})
	}
	return ops
}

func TestSlidingProperties(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 50
	}
	for seed := range seeds {
		rng := rand.New(rand.NewPCG(uint64(seed), 42))
		r := randomRate(rng)
		t.Run(fmt.Sprintf("seed=%d/%v/%d", seed, r, r.buckets), func(t *testing.T) {
			runTrace(t, r, randomTrace(rng, r, 300), rng)
		})
	}
}

// TestSlidingBoundaries plays bursts right before and after step and window
// boundaries.
func TestSlidingBoundaries(t *testing.T) {
	rates := []Rate{
		MustRate(1, time.Second, 1),
		MustRate(3, time.Minute, 60),
		MustRate(10, 10*time.Second, 3),
		MustRate(600, 5*time.Minute, 60),
		MustRate(7, 7*time.Second, 120),
	}
	offsets := []int64{0, 1, -1, 2}
	for _, r := range rates {
		step, win := r.step, int64(r.window)
		base := int64(1_700_000_000_000_000_000) / win * win
		points := []int64{
			-1, 0, 1, step - 1, step, step + 1, 2*step - 1,
			win - step - 1, win - step, win - 1, win, win + 1,
			win + step - 1, win + step, win + step + 1,
			2*win - 1, 2 * win, 2*win + step - 1, 2*win + step,
		}
		for _, off := range offsets {
			for _, burst := range []int64{1, r.limit / 2, r.limit} {
				name := fmt.Sprintf("%v/%d/off=%d/burst=%d", r, r.buckets, off, burst)
				t.Run(name, func(t *testing.T) {
					rng := rand.New(rand.NewPCG(uint64(off+2), uint64(burst)))
					var ops []op
					for _, p := range points {
						now := base + p + off
						ops = append(ops,
							op{now: now, hits: max(burst, 1)},
							op{now: now, hits: 1},
							op{now: now - step, hits: 1}, // back a step
							op{now: now + 1, hits: 1},
						)
					}
					// Then the same again, with the clock stepping back a
					// window and standing still for many calls.
					for _, p := range slices.Backward(points) {
						now := base + 3*win + p + off
						for range 5 {
							ops = append(ops, op{now: now, hits: 1}, op{now: now - win, hits: 1})
						}
					}
					runTrace(t, r, ops, rng)
				})
			}
		}
	}
}
