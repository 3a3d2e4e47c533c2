package window

import (
	"testing"
	"time"
)

func TestLeases(t *testing.T) {
	type step struct {
		op   string // acquire, release, expire, check
		id   uint64
		at   time.Duration
		ttl  time.Duration
		want int64 // release: 1 if true; expire: dropped; check: InFlight
		next time.Duration
		len  int
	}
	s := time.Second
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "acquire and release",
			steps: []step{
				{op: "check", at: 0, want: 0, next: -1, len: 0},
				{op: "acquire", id: 1, at: 0, ttl: 10 * s},
				{op: "acquire", id: 2, at: s, ttl: 5 * s},
				{op: "acquire", id: 3, at: 2 * s, ttl: 30 * s},
				{op: "check", at: 2 * s, want: 3, next: 6 * s, len: 3},
				{op: "release", id: 2, at: 3 * s, want: 1},
				{op: "check", at: 3 * s, want: 2, next: 10 * s, len: 2},
				{op: "release", id: 2, at: 3 * s, want: 0}, // already released
				{op: "release", id: 9, at: 3 * s, want: 0}, // unknown
				{op: "release", id: 1, at: 3 * s, want: 1},
				{op: "release", id: 3, at: 3 * s, want: 1},
				{op: "check", at: 3 * s, want: 0, next: -1, len: 0},
			},
		},
		{
			name: "expiry",
			steps: []step{
				{op: "acquire", id: 1, at: 0, ttl: 10 * s},
				{op: "acquire", id: 2, at: 0, ttl: 20 * s},
				{op: "acquire", id: 3, at: 0, ttl: 30 * s},
				{op: "check", at: 10*s - 1, want: 3, next: 10 * s, len: 3},
				{op: "check", at: 10 * s, want: 2, next: 10 * s, len: 3}, // expired but stored
				{op: "release", id: 1, at: 10 * s, want: 0},              // expired: dropped, not held
				{op: "check", at: 10 * s, want: 2, next: 20 * s, len: 2},
				{op: "expire", at: 15 * s, want: 0},
				{op: "expire", at: 25 * s, want: 1},
				{op: "check", at: 25 * s, want: 1, next: 30 * s, len: 1},
				{op: "release", id: 2, at: 25 * s, want: 0}, // expired and gone
				{op: "expire", at: time.Hour, want: 1},
				{op: "check", at: time.Hour, want: 0, next: -1, len: 0},
				{op: "expire", at: time.Hour, want: 0},
			},
		},
		{
			name: "before 1970 and at the epoch",
			steps: []step{
				{op: "acquire", id: 1, at: -t0.Sub(time.Unix(-5, 0)), ttl: 5 * s}, // expires at the epoch
				{op: "acquire", id: 2, at: -t0.Sub(time.Unix(-5, 0)), ttl: 7 * s},
				{op: "check", at: -t0.Sub(time.Unix(-1, 0)), want: 2, next: -t0.Sub(time.Unix(0, 0)), len: 2},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l Leases
			for i, st := range tt.steps {
				now := at(st.at)
				switch st.op {
				case "acquire":
					l.Acquire(st.id, now, st.ttl)
				case "release":
					if got := l.Release(st.id, now); got != (st.want == 1) {
						t.Fatalf("step %d: Release(%d) = %v, want %v", i, st.id, got, st.want == 1)
					}
				case "expire":
					if got := l.Expire(now); int64(got) != st.want {
						t.Fatalf("step %d: Expire() = %d, want %d", i, got, st.want)
					}
				case "check":
					if got := l.InFlight(now); got != st.want {
						t.Fatalf("step %d: InFlight() = %d, want %d", i, got, st.want)
					}
					var next int64
					if st.next >= 0 || st.at < 0 {
						next = at(st.next).UnixNano()
					}
					if got := l.Next(); got != next {
						t.Fatalf("step %d: Next() = %d, want %d", i, got, next)
					}
					if got := l.Len(); got != st.len {
						t.Fatalf("step %d: Len() = %d, want %d", i, got, st.len)
					}
				}
				// Every state survives a round trip.
				var c Leases
				if err := c.UnmarshalBinary(encode(t, &l)); err != nil {
					t.Fatalf("step %d: UnmarshalBinary() error = %v", i, err)
				}
				if c.Len() != l.Len() || c.InFlight(now) != l.InFlight(now) || c.Next() != l.Next() {
					t.Fatalf("step %d: round trip = %+v, want %+v", i, c, l)
				}
			}
		})
	}
}
