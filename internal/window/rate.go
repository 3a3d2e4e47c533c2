package window

import (
	"fmt"
	"time"
)

// Limits on a Rate.
const (
	MinWindow  = time.Second
	MaxWindow  = 24 * time.Hour
	MinBuckets = 1
	MaxBuckets = 3600
	// MaxLimit keeps every per-step count within a uint32.
	MaxLimit = 1<<32 - 1
)

// DefaultBuckets is the number of resolution steps per window when a policy
// does not say.
const DefaultBuckets = 60

// Rate is a limit of hits per window, split into resolution steps. It is an
// immutable value, safe to share between goroutines.
type Rate struct {
	limit   int64
	window  time.Duration
	buckets int
	step    int64 // nanoseconds
}

// NewRate returns limit hits per window with the given number of resolution
// steps (0 means DefaultBuckets). The window must be a whole number of
// nanosecond steps, so window is rounded down to a multiple of buckets.
func NewRate(limit int64, window time.Duration, buckets int) (Rate, error) {
	if buckets == 0 {
		buckets = DefaultBuckets
	}
	switch {
	case limit < 1 || limit > MaxLimit:
		return Rate{}, fmt.Errorf("%w: %d (want 1..%d)", ErrBadLimit, limit, int64(MaxLimit))
	case window < MinWindow || window > MaxWindow:
		return Rate{}, fmt.Errorf("%w: %v (want %v..%v)", ErrBadWindow, window, MinWindow, MaxWindow)
	case buckets < MinBuckets || buckets > MaxBuckets:
		return Rate{}, fmt.Errorf("%w: %d (want %d..%d)", ErrBadBuckets, buckets, MinBuckets, MaxBuckets)
	}
	step := int64(window) / int64(buckets)
	return Rate{limit: limit, window: time.Duration(step * int64(buckets)), buckets: buckets, step: step}, nil
}

// MustRate is NewRate that panics on error, for constants in tests and
// examples.
func MustRate(limit int64, window time.Duration, buckets int) Rate {
	r, err := NewRate(limit, window, buckets)
	if err != nil {
		panic(err)
	}
	return r
}

// Limit returns the hits allowed per window.
func (r Rate) Limit() int64 { return r.limit }

// Window returns the window length.
func (r Rate) Window() time.Duration { return r.window }

// Buckets returns the number of resolution steps per window.
func (r Rate) Buckets() int { return r.buckets }

// Step returns the resolution step, Window()/Buckets().
func (r Rate) Step() time.Duration { return time.Duration(r.step) }

// IsZero reports whether r is the zero Rate (not made by NewRate).
func (r Rate) IsZero() bool { return r.step == 0 }

// String returns "600 per 5m0s".
func (r Rate) String() string { return fmt.Sprintf("%d per %v", r.limit, r.window) }
