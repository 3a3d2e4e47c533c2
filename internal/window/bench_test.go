package window

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkSlidingAllow is Allow on one existing key, the clock moving a
// little each op, with enough limit that most calls are admitted.
func BenchmarkSlidingAllow(b *testing.B) {
	for _, buckets := range []int{1, 60, 3600} {
		b.Run(fmt.Sprintf("buckets=%d", buckets), func(b *testing.B) {
			r := MustRate(1<<30, 5*time.Minute, buckets)
			var s Sliding
			now := t0
			s.Allow(&r, now, 1)
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(time.Millisecond)
				s.Allow(&r, now, 1)
			}
		})
	}
}

// BenchmarkSlidingAllowDenied is Allow on a full window: every call is
// denied and computes RetryAfter.
func BenchmarkSlidingAllowDenied(b *testing.B) {
	r := MustRate(600, 5*time.Minute, 60)
	var s Sliding
	for i := range 60 {
		s.Add(&r, t0.Add(time.Duration(i)*5*time.Second), 10)
	}
	now := t0.Add(5 * time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if s.Allow(&r, now, 1).Allowed {
			b.Fatal("Allow() = allowed, want denied")
		}
	}
}

func BenchmarkSlidingPeek(b *testing.B) {
	r := MustRate(600, 5*time.Minute, 60)
	var s Sliding
	for i := range 30 {
		s.Add(&r, t0.Add(time.Duration(i)*5*time.Second), 10)
	}
	now := t0.Add(3 * time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		s.Peek(&r, now, 1)
	}
}

func BenchmarkStateAppendBinary(b *testing.B) {
	r := MustRate(600, 5*time.Minute, 60)
	var st State
	for i := range 60 {
		st.Window.Add(&r, t0.Add(time.Duration(i)*5*time.Second), 10)
	}
	st.Leases.Acquire(1, t0, time.Minute)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		buf, err = st.AppendBinary(buf[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf)), "bytes/encoding")
}

func BenchmarkStateUnmarshalBinary(b *testing.B) {
	r := MustRate(600, 5*time.Minute, 60)
	var st State
	st.Window.Allow(&r, t0, 1)
	data, _ := st.MarshalBinary()
	b.ReportAllocs()
	for b.Loop() {
		var got State
		if err := got.UnmarshalBinary(data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStateHeapBytes reports the heap a default-policy State (600 per 5m,
// 60 buckets) holds after one hit, and the allocations of a hot Allow.
func TestStateHeapBytes(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k States")
	}
	const n = 100_000
	r := MustRate(600, 5*time.Minute, DefaultBuckets)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	states := make([]*State, n)
	for i := range states {
		st := new(State)
		st.Window.Allow(&r, t0, 1)
		states[i] = st
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	runtime.KeepAlive(states)
	t.Logf("default-policy State after one hit: %.0f heap bytes (plus the %d-byte slot that points at it)", per-8, 8)
	if per > 512 {
		t.Errorf("heap bytes per State = %.0f, want <= 512", per)
	}

	var s Sliding
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond)
		s.Allow(&r, now, 0)
		s.Add(&r, now, 1)
		s.Peek(&r, now, 1)
	})
	if allocs != 0 {
		t.Errorf("allocs per Allow+Add+Peek on an existing key = %v, want 0", allocs)
	}
}

// BenchmarkReplicaMerge is a replica's work per replicated key: decode the
// owner's copy (encoded with its node id) and merge it into the replica's
// copy of the same key, which already came from that owner.
func BenchmarkReplicaMerge(b *testing.B) {
	r := MustRate(600, 5*time.Minute, DefaultBuckets)
	var owner State
	for i := range 30 {
		owner.Window.Add(&r, t0.Add(time.Duration(i)*7*time.Second), 3)
	}
	data, _ := owner.AppendBinaryFrom(nil, 7)
	var replica, in State
	if err := in.UnmarshalBinary(data); err != nil {
		b.Fatal(err)
	}
	replica.MergeFrom(&r, &in, true, 9)
	b.ReportAllocs()
	for b.Loop() {
		if err := in.UnmarshalBinaryReuse(data); err != nil {
			b.Fatal(err)
		}
		replica.MergeFrom(&r, &in, true, 9)
	}
	if replica.Window.Count(&r, t0.Add(210*time.Second)) != owner.Window.Count(&r, t0.Add(210*time.Second)) {
		b.Fatal("replica count differs from the owner's")
	}
}
