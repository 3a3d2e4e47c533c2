package main

import (
	"testing"
	"time"
)

func TestHistBuckets(t *testing.T) {
	prev := -1
	for _, v := range []time.Duration{0, 1, 127, 128, 129, 255, 256, 1000, time.Microsecond * 37, time.Millisecond, time.Second, time.Minute} {
		b := bucketOf(v)
		if b < prev {
			t.Errorf("bucketOf(%d) = %d, below the bucket of a smaller value (%d)", v, b, prev)
		}
		prev = b
		lo := lowest(b)
		if lo > v || float64(v-lo) > float64(v)/(1<<subBits) {
			t.Errorf("lowest(bucketOf(%d)) = %d, want within 1/%d below", v, lo, 1<<subBits)
		}
		if bucketOf(lo) != b {
			t.Errorf("bucketOf(lowest(%d)) = %d, want %d", b, bucketOf(lo), b)
		}
	}
	if b := bucketOf(time.Hour); b != len(hist{}.counts)-1 {
		t.Errorf("bucketOf(1h) = %d, want the last bucket %d", b, len(hist{}.counts)-1)
	}
}

func TestHistQuantile(t *testing.T) {
	var a, b hist
	for i := 1; i <= 1000; i++ {
		h := &a
		if i%2 == 0 {
			h = &b
		}
		h.record(time.Duration(i) * time.Microsecond)
	}
	a.merge(&b)
	tests := []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, time.Millisecond}}
	for _, tt := range tests {
		got := a.quantile(tt.q)
		if got > tt.want || float64(tt.want-got) > float64(tt.want)/(1<<subBits) {
			t.Errorf("quantile(%v) = %v, want %v within 1/%d", tt.q, got, tt.want, 1<<subBits)
		}
	}
	if a.max != time.Millisecond || a.n != 1000 {
		t.Errorf("max, n = %v, %d, want 1ms, 1000", a.max, a.n)
	}
}
