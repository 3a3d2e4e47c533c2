package window

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// t0 is an arbitrary instant aligned to every step used in the hand-worked
// tests (a multiple of 1 hour since the Unix epoch).
var t0 = time.Unix(1_700_000_000-1_700_000_000%3600, 0)

// at returns t0 plus d.
func at(d time.Duration) time.Time { return t0.Add(d) }

// clone copies s through MarshalBinary/UnmarshalBinary.
func clone(t testing.TB, s *Sliding) *Sliding {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary() error = %v", err)
	}
	var c Sliding
	if err := c.UnmarshalBinary(b); err != nil {
		t.Fatalf("UnmarshalBinary(%x) error = %v", b, err)
	}
	return &c
}

// encode returns s.MarshalBinary() or fails the test.
func encode(t testing.TB, s interface{ MarshalBinary() ([]byte, error) }) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary() error = %v", err)
	}
	return b
}
