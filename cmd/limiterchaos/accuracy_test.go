package main

import (
	"testing"
	"time"
)

func TestAnalyze(t *testing.T) {
	const ms = time.Millisecond
	// call returns an admitted call of key k answered within [s, e] ms.
	call := func(k int32, s, e time.Duration) Decision { return Decision{Start: s * ms, End: e * ms, Key: k} }
	// burst returns n calls of key k, one per ms from s, each taking 1ms.
	burst := func(k int32, s time.Duration, n int) []Decision {
		var ds []Decision
		for i := range time.Duration(n) {
			ds = append(ds, call(k, s+i, s+i+1))
		}
		return ds
	}
	cat := func(parts ...[]Decision) []Decision {
		var ds []Decision
		for _, p := range parts {
			ds = append(ds, p...)
		}
		return ds
	}
	tests := []struct {
		name                     string
		ds                       []Decision
		limit                    int64
		window                   time.Duration
		keys, atLimit, keysOver  int
		maxOver, sumOver, maxWin int64
	}{
		{name: "nothing admitted", limit: 5, window: 100 * ms},
		{name: "under the limit", ds: burst(0, 0, 4), limit: 5, window: 100 * ms, keys: 1, maxWin: 4},
		{name: "exactly the limit", ds: burst(0, 0, 5), limit: 5, window: 100 * ms, keys: 1, atLimit: 1, maxWin: 5},
		{name: "two over", ds: burst(0, 0, 7), limit: 5, window: 100 * ms, keys: 1, atLimit: 1, keysOver: 1, maxOver: 2, sumOver: 2, maxWin: 7},
		{
			name: "bursts a window apart are not over",
			ds:   cat(burst(0, 0, 5), burst(0, 200, 5)), limit: 5, window: 100 * ms,
			keys: 1, atLimit: 1, maxWin: 5,
		},
		{
			// The sixth call ends after the window that holds the other
			// five: it may have been decided in the next window, so it
			// does not count.
			name: "a call straddling the window's end is left out",
			ds:   append(burst(0, 0, 5), call(0, 50, 101)), limit: 5, window: 100 * ms,
			keys: 1, atLimit: 1, maxWin: 5,
		},
		{
			name: "a call inside the window counts",
			ds:   append(burst(0, 0, 5), call(0, 50, 99)), limit: 5, window: 100 * ms,
			keys: 1, atLimit: 1, keysOver: 1, maxOver: 1, sumOver: 1, maxWin: 6,
		},
		{
			name: "the best window need not start at the first call",
			ds:   cat(burst(0, 0, 3), burst(0, 150, 7)), limit: 5, window: 100 * ms,
			keys: 1, atLimit: 1, keysOver: 1, maxOver: 2, sumOver: 2, maxWin: 7,
		},
		{
			name: "equal starts",
			ds:   []Decision{call(0, 10, 20), call(0, 10, 30), call(0, 10, 40)}, limit: 2, window: 100 * ms,
			keys: 1, atLimit: 1, keysOver: 1, maxOver: 1, sumOver: 1, maxWin: 3,
		},
		{
			name: "sum and max over keys",
			ds:   cat(burst(0, 0, 8), burst(1, 0, 6), burst(2, 0, 3)), limit: 5, window: 100 * ms,
			keys: 3, atLimit: 2, keysOver: 2, maxOver: 3, sumOver: 4, maxWin: 8,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Analyze(tt.ds, tt.limit, tt.window)
			var maxWin int64
			for _, k := range a.PerKey {
				maxWin = max(maxWin, k.MaxInWindow)
			}
			got := []int64{int64(a.Keys), int64(a.KeysAtLimit), int64(a.KeysOver), a.MaxOver, a.SumOver, maxWin}
			want := []int64{int64(tt.keys), int64(tt.atLimit), int64(tt.keysOver), tt.maxOver, tt.sumOver, tt.maxWin}
			if !equal(got, want) {
				t.Errorf("Analyze() keys, at limit, over, max over, sum over, max in window = %v, want %v", got, want)
			}
		})
	}
}

// TestAnalyzeMatchesBruteForce compares the sweep with trying every
// interval start on pseudo-random calls.
func TestAnalyzeMatchesBruteForce(t *testing.T) {
	const window = 50 * time.Millisecond
	seed := uint64(1)
	rnd := func(n uint64) time.Duration {
		seed = seed*6364136223846793005 + 1442695040888963407
		return time.Duration((seed >> 33) % n)
	}
	for round := range 50 {
		var ds []Decision
		for range 1 + round*3 {
			s := rnd(200) * time.Millisecond
			ds = append(ds, Decision{Start: s, End: s + rnd(30)*time.Millisecond, Key: int32(rnd(3))})
		}
		want := map[int32]int64{}
		for _, a := range ds {
			var n int64
			for _, d := range ds {
				if d.Key == a.Key && d.Start >= a.Start && d.End < a.Start+window {
					n++
				}
			}
			want[a.Key] = max(want[a.Key], n)
		}
		acc := Analyze(append([]Decision(nil), ds...), 1, window)
		if len(acc.PerKey) != len(want) {
			t.Fatalf("round %d: Analyze() has %d keys, want %d", round, len(acc.PerKey), len(want))
		}
		for _, k := range acc.PerKey {
			if k.MaxInWindow != want[k.Key] {
				t.Errorf("round %d key %d: MaxInWindow = %d, want %d", round, k.Key, k.MaxInWindow, want[k.Key])
			}
		}
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
