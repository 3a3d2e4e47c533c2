package accuracy

import (
	"slices"
	"testing"
	"time"
)

// call is a shorthand for an allowed decision of one hit, times in ms.
func call(key int32, startMS, endMS float64) Decision {
	return Decision{Key: key, Start: ms(startMS), End: ms(endMS), Hits: 1, Allowed: true}
}

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

func denied(d Decision) Decision { d.Allowed = false; return d }

func hits(d Decision, n int32) Decision { d.Hits = n; return d }

// burst returns n calls of key, one per ms from startMS, each taking 1ms.
func burst(key int32, startMS float64, n int) []Decision {
	var ds []Decision
	for i := range n {
		s := startMS + float64(i)
		ds = append(ds, call(key, s, s+1))
	}
	return ds
}

func cat(parts ...[]Decision) []Decision {
	var ds []Decision
	for _, p := range parts {
		ds = append(ds, p...)
	}
	return ds
}

func TestAnalyze(t *testing.T) {
	tests := []struct {
		name         string
		log          []Decision
		limit        int64
		window       time.Duration
		wantMaxOver  int64
		wantSumOver  int64
		wantKeys     int
		wantKeysOver int
		wantWorst    KeyAccuracy // the key most over
	}{
		{
			name:   "nothing at all",
			limit:  5,
			window: 100 * time.Millisecond,
		},
		{
			name:   "nothing allowed",
			limit:  1,
			window: time.Second,
			log:    []Decision{denied(call(9, 0, 1))},
		},
		{
			name:   "within limit",
			limit:  3,
			window: 10 * time.Second,
			log: []Decision{
				call(0, 0, 1), call(0, 1000, 1001), call(0, 2000, 2002),
				denied(call(0, 3000, 3001)), denied(call(0, 9000, 9001)),
				call(0, 10000, 10001), // the first hit left the window at 10000
				call(1, 5, 6),
			},
			wantKeys:  2,
			wantWorst: KeyAccuracy{Key: 0, Admitted: 4, MaxInWindow: 3, MaxInWindowByEnd: 3},
		},
		{
			name:   "five admitted where three fit",
			limit:  3,
			window: time.Second,
			log: []Decision{
				call(7, 0, 1), call(7, 100, 101), call(7, 200, 230), call(7, 300, 301), call(7, 999, 999.5),
				denied(call(7, 500, 501)),
				call(8, 0, 1), call(8, 1500, 1501),
			},
			wantMaxOver:  2,
			wantSumOver:  2,
			wantKeys:     2,
			wantKeysOver: 1,
			wantWorst:    KeyAccuracy{Key: 7, Admitted: 5, MaxInWindow: 5, MaxInWindowByEnd: 5, Over: 2},
		},
		{
			name:   "hits weigh and two keys over",
			limit:  10,
			window: time.Minute,
			log: []Decision{
				hits(call(1, 0, 1), 6), hits(call(1, 10, 11), 6), // 12: over by 2
				hits(call(2, 0, 1), 10), hits(call(2, 5, 6), 5), // 15: over by 5
				hits(call(3, 0, 1), 10), hits(call(3, 60000, 60001), 10), // a window apart
			},
			wantMaxOver:  5,
			wantSumOver:  7,
			wantKeys:     3,
			wantKeysOver: 2,
			wantWorst:    KeyAccuracy{Key: 2, Admitted: 15, MaxInWindow: 15, MaxInWindowByEnd: 15, Over: 5},
		},
		{
			name:   "latency straddling the edge is not over-admission",
			limit:  1,
			window: 10 * time.Second,
			log: []Decision{
				call(4, 0, 5000),      // decided somewhere in [0s, 5s]
				call(4, 14000, 14100), // ends 9.1s after the first ended
			},
			wantKeys:  1,
			wantWorst: KeyAccuracy{Key: 4, Admitted: 2, MaxInWindow: 1, MaxInWindowByEnd: 2},
		},
		{
			// The sixth call ends at the end of the window that holds the
			// other five: it may have been decided in the next window. By
			// End time all six fit in [1ms, 101ms).
			name:      "a call ending at the window's end is left out",
			limit:     5,
			window:    100 * time.Millisecond,
			log:       append(burst(0, 0, 5), call(0, 50, 100)),
			wantKeys:  1,
			wantWorst: KeyAccuracy{Key: 0, Admitted: 6, MaxInWindow: 5, MaxInWindowByEnd: 6},
		},
		{
			name:         "a call ending inside the window counts",
			limit:        5,
			window:       100 * time.Millisecond,
			log:          append(burst(0, 0, 5), call(0, 50, 99)),
			wantMaxOver:  1,
			wantSumOver:  1,
			wantKeys:     1,
			wantKeysOver: 1,
			wantWorst:    KeyAccuracy{Key: 0, Admitted: 6, MaxInWindow: 6, MaxInWindowByEnd: 6, Over: 1},
		},
		{
			name:      "exactly a window apart",
			limit:     1,
			window:    10 * time.Second,
			log:       []Decision{call(5, 0, 0), call(5, 10000, 10000), call(5, 20000, 20000)},
			wantKeys:  1,
			wantWorst: KeyAccuracy{Key: 5, Admitted: 3, MaxInWindow: 1, MaxInWindowByEnd: 1},
		},
		{
			name:         "the best window need not start at the first call",
			limit:        5,
			window:       100 * time.Millisecond,
			log:          cat(burst(0, 0, 3), burst(0, 150, 7)),
			wantMaxOver:  2,
			wantSumOver:  2,
			wantKeys:     1,
			wantKeysOver: 1,
			wantWorst:    KeyAccuracy{Key: 0, Admitted: 10, MaxInWindow: 7, From: ms(150), MaxInWindowByEnd: 7, Over: 2},
		},
		{
			name:         "equal starts",
			limit:        2,
			window:       time.Second,
			log:          []Decision{call(6, 100, 300), call(6, 100, 200), call(6, 100, 900), call(6, 50, 60)},
			wantMaxOver:  2,
			wantSumOver:  2,
			wantKeys:     1,
			wantKeysOver: 1,
			wantWorst:    KeyAccuracy{Key: 6, Admitted: 4, MaxInWindow: 4, From: ms(50), MaxInWindowByEnd: 4, Over: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Analyze(tt.log, tt.limit, tt.window, 1)
			if got.MaxOver != tt.wantMaxOver || got.SumOver != tt.wantSumOver || got.Keys != tt.wantKeys || got.KeysOver != tt.wantKeysOver {
				t.Errorf("Analyze() max/sum over, keys/over = %d/%d, %d/%d, want %d/%d, %d/%d",
					got.MaxOver, got.SumOver, got.Keys, got.KeysOver, tt.wantMaxOver, tt.wantSumOver, tt.wantKeys, tt.wantKeysOver)
			}
			if got.Limit != tt.limit || got.Window != tt.window {
				t.Errorf("Analyze() limit, window = %d, %v, want %d, %v", got.Limit, got.Window, tt.limit, tt.window)
			}
			if tt.wantKeys == 0 {
				if got.Worst == nil || len(got.Worst) != 0 || got.MaxInWindow != 0 {
					t.Errorf("Analyze().Worst, MaxInWindow = %#v, %d, want empty, 0", got.Worst, got.MaxInWindow)
				}
				return
			}
			if len(got.Worst) != 1 {
				t.Fatalf("Analyze().Worst has %d keys, want 1", len(got.Worst))
			}
			if w := got.Worst[0]; w != tt.wantWorst {
				t.Errorf("Analyze().Worst[0] = %+v, want %+v", w, tt.wantWorst)
			}
			if got.MaxInWindow != tt.wantWorst.MaxInWindow {
				t.Errorf("Analyze().MaxInWindow = %d, want %d", got.MaxInWindow, tt.wantWorst.MaxInWindow)
			}
		})
	}
}

// TestAnalyzeWorst checks the order of Accuracy.Worst and its bound.
func TestAnalyzeWorst(t *testing.T) {
	log := func() []Decision {
		// Keys 1 and 3 are over by 2; key 0 is at the limit, keys 4 and 2
		// under it.
		return cat(burst(0, 0, 5), burst(1, 0, 7), burst(2, 0, 1), burst(3, 0, 7), burst(4, 0, 3))
	}
	tests := []struct {
		name  string
		worst int
		want  []int32
	}{
		{name: "every key", worst: 10, want: []int32{1, 3, 0, 4, 2}},
		{name: "bounded", worst: 2, want: []int32{1, 3}},
		{name: "none", worst: 0, want: []int32{}},
		{name: "negative", worst: -1, want: []int32{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Analyze(log(), 5, 100*time.Millisecond, tt.worst)
			keys := []int32{}
			for _, k := range got.Worst {
				keys = append(keys, k.Key)
			}
			if got.Worst == nil || !slices.Equal(keys, tt.want) {
				t.Errorf("Analyze().Worst keys = %v (nil %t), want %v", keys, got.Worst == nil, tt.want)
			}
			if got.Keys != 5 || got.KeysOver != 2 || got.SumOver != 4 {
				t.Errorf("Analyze() keys, over, sum over = %d, %d, %d, want 5, 2, 4", got.Keys, got.KeysOver, got.SumOver)
			}
		})
	}
}

// TestAnalyzeBruteForce compares the sweep with trying every interval start
// on pseudo-random logs of several sizes.
func TestAnalyzeBruteForce(t *testing.T) {
	const window = 50 * time.Millisecond
	seed := uint64(1)
	rnd := func(n uint64) int {
		seed = seed*6364136223846793005 + 1442695040888963407
		return int((seed >> 33) % n)
	}
	for round := range 50 {
		var log []Decision
		for range 1 + round*8 {
			s := ms(float64(rnd(400)))
			log = append(log, Decision{
				Key: int32(rnd(3)), Start: s, End: s + ms(float64(rnd(30))),
				Hits: int32(1 + rnd(3)), Allowed: rnd(4) != 0,
			})
		}
		type counts struct{ admitted, certain, byEnd int64 }
		want := map[int32]*counts{}
		for _, a := range log {
			if !a.Allowed {
				continue
			}
			c := want[a.Key]
			if c == nil {
				c = &counts{}
				want[a.Key] = c
			}
			c.admitted += int64(a.Hits)
			var certain, byEnd int64
			for _, d := range log {
				if !d.Allowed || d.Key != a.Key {
					continue
				}
				if d.Start >= a.Start && d.End < a.Start+window {
					certain += int64(d.Hits)
				}
				if d.End >= a.End && d.End < a.End+window {
					byEnd += int64(d.Hits)
				}
			}
			c.certain, c.byEnd = max(c.certain, certain), max(c.byEnd, byEnd)
		}
		got := Analyze(append([]Decision(nil), log...), 4, window, len(log))
		if len(got.Worst) != len(want) || got.Keys != len(want) {
			t.Fatalf("round %d: Analyze() has %d keys (%d in Worst), want %d", round, got.Keys, len(got.Worst), len(want))
		}
		for _, k := range got.Worst {
			w := want[k.Key]
			if k.Admitted != w.admitted || k.MaxInWindow != w.certain || k.MaxInWindowByEnd != w.byEnd || k.Over != max(0, w.certain-4) {
				t.Errorf("round %d key %d: admitted, MaxInWindow, MaxInWindowByEnd, Over = %d, %d, %d, %d, want %d, %d, %d, %d",
					round, k.Key, k.Admitted, k.MaxInWindow, k.MaxInWindowByEnd, k.Over, w.admitted, w.certain, w.byEnd, max(0, w.certain-4))
			}
		}
	}
}
