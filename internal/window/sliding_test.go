package window

import (
	"errors"
	"testing"
	"time"
)

func TestNewRate(t *testing.T) {
	tests := []struct {
		name    string
		limit   int64
		window  time.Duration
		buckets int
		want    error
		step    time.Duration
	}{
		{"default buckets", 600, 5 * time.Minute, 0, nil, 5 * time.Second},
		{"one bucket", 1, time.Second, 1, nil, time.Second},
		{"rounded window", 10, time.Second, 3600, nil, 277777},
		{"max limit", MaxLimit, MaxWindow, MaxBuckets, nil, MaxWindow / MaxBuckets},
		{"zero limit", 0, time.Minute, 60, ErrBadLimit, 0},
		{"limit too big", MaxLimit + 1, time.Minute, 60, ErrBadLimit, 0},
		{"short window", 1, time.Second - 1, 60, ErrBadWindow, 0},
		{"long window", 1, MaxWindow + 1, 60, ErrBadWindow, 0},
		{"negative buckets", 1, time.Minute, -1, ErrBadBuckets, 0},
		{"too many buckets", 1, time.Minute, MaxBuckets + 1, ErrBadBuckets, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRate(tt.limit, tt.window, tt.buckets)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewRate() error = %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			if r.Step() != tt.step {
				t.Errorf("Step() = %v, want %v", r.Step(), tt.step)
			}
			if r.Window() != r.Step()*time.Duration(r.Buckets()) {
				t.Errorf("Window() = %v, want Step()*Buckets() = %v", r.Window(), r.Step()*time.Duration(r.Buckets()))
			}
			if r.Limit() != tt.limit || r.IsZero() {
				t.Errorf("Limit() = %d, IsZero() = %v, want %d, false", r.Limit(), r.IsZero(), tt.limit)
			}
		})
	}
}

// call is one call in a hand-worked scenario.
type call struct {
	at   time.Duration // since t0
	op   string        // "allow" (default), "peek"
	hits int64
	want Decision
}

func TestSlidingHandWorked(t *testing.T) {
	s := time.Second
	tests := []struct {
		name  string
		rate  Rate
		calls []call
	}{
		{
			name: "600 per 5m, 60 buckets",
			rate: MustRate(600, 5*time.Minute, 60),
			calls: []call{
				{at: 2 * s, hits: 600, want: Decision{Allowed: true, Limit: 600, Remaining: 0, ResetAfter: 5*time.Minute + 3*s}},
				{at: 2 * s, hits: 1, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 5*time.Minute + 3*s, ResetAfter: 5*time.Minute + 3*s}},
				{at: 4 * s, hits: 1, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 5*time.Minute + s, ResetAfter: 5*time.Minute + s}},
				// Exactly one window later the hits are still counted: a hit
				// is remembered up to one step longer than the window.
				{at: 5*time.Minute + 2*s, hits: 1, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 3 * s, ResetAfter: 3 * s}},
				{at: 5*time.Minute + 5*s - 1, hits: 1, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 1, ResetAfter: 1}},
				{at: 5*time.Minute + 5*s, op: "peek", want: Decision{Allowed: true, Limit: 600, Remaining: 600}},
				{at: 5*time.Minute + 5*s, hits: 1, want: Decision{Allowed: true, Limit: 600, Remaining: 599, ResetAfter: 5*time.Minute + 5*s}},
				{at: 5*time.Minute + 7*s, hits: 599, want: Decision{Allowed: true, Limit: 600, Remaining: 0, ResetAfter: 5*time.Minute + 3*s}},
				{at: 5*time.Minute + 7*s, hits: 1, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 5*time.Minute + 3*s, ResetAfter: 5*time.Minute + 3*s}},
				{at: 5*time.Minute + 7*s, hits: 600, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 5*time.Minute + 3*s, ResetAfter: 5*time.Minute + 3*s}},
				{at: 5*time.Minute + 7*s, hits: 601, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 5 * time.Minute, ResetAfter: 5*time.Minute + 3*s}},
				// The 600 hits of step 61 (5m5s..5m10s) leave at 10m10s.
				{at: 5*time.Minute + 10*s, op: "peek", hits: 1, want: Decision{Limit: 600, Remaining: 0, RetryAfter: 5*time.Minute + 0*s, ResetAfter: 5*time.Minute + 0*s}},
			},
		},
		{
			name: "3 per minute, spread",
			rate: MustRate(3, time.Minute, 60),
			calls: []call{
				{at: 0, hits: 1, want: Decision{Allowed: true, Limit: 3, Remaining: 2, ResetAfter: 61 * s}},
				{at: 10 * s, hits: 1, want: Decision{Allowed: true, Limit: 3, Remaining: 1, ResetAfter: 61 * s}},
				{at: 20*s + s/2, hits: 1, want: Decision{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: 60*s + s/2}},
				{at: 30 * s, hits: 1, want: Decision{Limit: 3, Remaining: 0, RetryAfter: 31 * s, ResetAfter: 51 * s}},
				{at: 30 * s, hits: 2, want: Decision{Limit: 3, Remaining: 0, RetryAfter: 41 * s, ResetAfter: 51 * s}},
				{at: 30 * s, hits: 3, want: Decision{Limit: 3, Remaining: 0, RetryAfter: 51 * s, ResetAfter: 51 * s}},
				{at: 30 * s, hits: 4, want: Decision{Limit: 3, Remaining: 0, RetryAfter: time.Minute, ResetAfter: 51 * s}},
				{at: 30 * s, op: "peek", want: Decision{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: 51 * s}},
				{at: 61 * s, hits: 1, want: Decision{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: 61 * s}},
				// The clock steps back: time stands still at 61s.
				{at: 40 * s, hits: 1, want: Decision{Limit: 3, Remaining: 0, RetryAfter: 10 * s, ResetAfter: 61 * s}},
				{at: 40 * s, op: "peek", want: Decision{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: 61 * s}},
				{at: 71 * s, hits: 1, want: Decision{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: 61 * s}},
			},
		},
		{
			name: "2 per 10s, one bucket",
			rate: MustRate(2, 10*time.Second, 1),
			calls: []call{
				{at: 9 * s, hits: 2, want: Decision{Allowed: true, Limit: 2, Remaining: 0, ResetAfter: 11 * s}},
				{at: 10 * s, hits: 1, want: Decision{Limit: 2, Remaining: 0, RetryAfter: 10 * s, ResetAfter: 10 * s}},
				{at: 20*s - 1, hits: 1, want: Decision{Limit: 2, Remaining: 0, RetryAfter: 1, ResetAfter: 1}},
				{at: 20 * s, hits: 1, want: Decision{Allowed: true, Limit: 2, Remaining: 1, ResetAfter: 20 * s}},
			},
		},
		{
			name: "before 1970",
			rate: MustRate(2, time.Minute, 60),
			calls: []call{
				{at: -t0.Sub(time.Unix(-90, 0)), hits: 1, want: Decision{Allowed: true, Limit: 2, Remaining: 1, ResetAfter: 61 * s}},
				{at: -t0.Sub(time.Unix(-90, 0)) + s, hits: 1, want: Decision{Allowed: true, Limit: 2, Remaining: 0, ResetAfter: 61 * s}},
				{at: -t0.Sub(time.Unix(-90, 0)) + s, hits: 1, want: Decision{Limit: 2, Remaining: 0, RetryAfter: 60 * s, ResetAfter: 61 * s}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w Sliding
			for i, c := range tt.calls {
				var got Decision
				switch c.op {
				case "peek":
					got = w.Peek(&tt.rate, at(c.at), c.hits)
				default:
					got = w.Allow(&tt.rate, at(c.at), c.hits)
				}
				if got != c.want {
					t.Fatalf("call %d at %v: %s(%d) = %+v, want %+v", i, c.at, c.op, c.hits, got, c.want)
				}
			}
		})
	}
}

func TestSlidingAddCountEmpty(t *testing.T) {
	r := MustRate(10, time.Minute, 60)
	clk := newFakeClock(at(0))
	var s Sliding
	if !s.Empty(&r, clk.Now()) {
		t.Fatalf("Empty() on zero Sliding = false, want true")
	}
	s.Add(&r, clk.Now(), 25) // Add ignores the limit
	if got := s.Count(&r, clk.Now()); got != 25 {
		t.Fatalf("Count() = %d, want 25", got)
	}
	if d := s.Peek(&r, clk.Now(), 0); d.Allowed || d.Remaining != 0 {
		t.Fatalf("Peek(0) over limit = %+v, want denied with Remaining 0", d)
	}
	clk.Advance(30 * time.Second)
	s.Add(&r, clk.Now(), 0)
	s.Add(&r, clk.Now(), -3)
	if got := s.Count(&r, clk.Now()); got != 25 {
		t.Fatalf("Count() after Add(0) = %d, want 25", got)
	}
	clk.Advance(31*time.Second - 1)
	if s.Empty(&r, clk.Now()) {
		t.Fatalf("Empty() at 61s-1ns = true, want false")
	}
	clk.Advance(1)
	if !s.Empty(&r, clk.Now()) {
		t.Fatalf("Empty() at 61s = false, want true")
	}
}
