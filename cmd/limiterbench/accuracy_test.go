package main

import (
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

func TestAnalyze(t *testing.T) {
	tests := []struct {
		name        string
		log         []Decision
		limit       int64
		window      time.Duration
		wantMaxOver int64
		wantSumOver int64
		wantKeys    int
		wantWorst   KeyAccuracy // compared on Key, MaxInWindow, MaxInWindowByEnd, Over, Admitted
	}{
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
			wantMaxOver: 2,
			wantSumOver: 2,
			wantKeys:    2,
			wantWorst:   KeyAccuracy{Key: 7, Admitted: 5, MaxInWindow: 5, MaxInWindowByEnd: 5, Over: 2},
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
			wantMaxOver: 5,
			wantSumOver: 7,
			wantKeys:    3,
			wantWorst:   KeyAccuracy{Key: 2, Admitted: 15, MaxInWindow: 15, MaxInWindowByEnd: 15, Over: 5},
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
			name:      "exactly a window apart",
			limit:     1,
			window:    10 * time.Second,
			log:       []Decision{call(5, 0, 0), call(5, 10000, 10000), call(5, 20000, 20000)},
			wantKeys:  1,
			wantWorst: KeyAccuracy{Key: 5, Admitted: 3, MaxInWindow: 1, MaxInWindowByEnd: 1},
		},
		{
			name:        "equal starts",
			limit:       2,
			window:      time.Second,
			log:         []Decision{call(6, 100, 300), call(6, 100, 200), call(6, 100, 900), call(6, 50, 60)},
			wantMaxOver: 2,
			wantSumOver: 2,
			wantKeys:    1,
			wantWorst:   KeyAccuracy{Key: 6, Admitted: 4, MaxInWindow: 4, MaxInWindowByEnd: 4, Over: 2},
		},
		{
			name:   "nothing allowed",
			limit:  1,
			window: time.Second,
			log:    []Decision{denied(call(9, 0, 1))},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Analyze(tt.log, tt.limit, tt.window, 1)
			if got.MaxOver != tt.wantMaxOver || got.SumOver != tt.wantSumOver || got.Keys != tt.wantKeys {
				t.Errorf("Analyze() max/sum over, keys = %d/%d, %d, want %d/%d, %d",
					got.MaxOver, got.SumOver, got.Keys, tt.wantMaxOver, tt.wantSumOver, tt.wantKeys)
			}
			if tt.wantKeys == 0 {
				if len(got.Worst) != 0 {
					t.Errorf("Analyze().Worst = %+v, want none", got.Worst)
				}
				return
			}
			if len(got.Worst) != 1 {
				t.Fatalf("Analyze().Worst has %d keys, want 1", len(got.Worst))
			}
			w := got.Worst[0]
			w.From = 0
			if w != tt.wantWorst {
				t.Errorf("Analyze().Worst[0] = %+v, want %+v", w, tt.wantWorst)
			}
		})
	}
}

// TestAnalyzeBruteForce compares the sweep with trying every interval start.
func TestAnalyzeBruteForce(t *testing.T) {
	window := 100 * time.Millisecond
	var log []Decision
	seed := uint32(1)
	rnd := func(n int) int { seed = seed*1664525 + 1013904223; return int(seed>>8) % n }
	for range 400 {
		s := ms(float64(rnd(1000)))
		d := Decision{Key: int32(rnd(3)), Start: s, End: s + ms(float64(rnd(30))), Hits: int32(1 + rnd(3)), Allowed: rnd(4) != 0}
		log = append(log, d)
	}
	want := map[int32]int64{}
	for _, a := range log {
		var n int64
		for _, d := range log {
			if d.Allowed && d.Key == a.Key && d.Start >= a.Start && d.End < a.Start+window {
				n += int64(d.Hits)
			}
		}
		want[a.Key] = max(want[a.Key], n)
	}
	got := Analyze(log, 0, window, 10)
	for _, k := range got.Worst {
		if k.MaxInWindow != want[k.Key] {
			t.Errorf("key %d: MaxInWindow = %d, want %d", k.Key, k.MaxInWindow, want[k.Key])
		}
		if k.MaxInWindowByEnd < k.MaxInWindow {
			t.Errorf("key %d: MaxInWindowByEnd = %d < MaxInWindow %d", k.Key, k.MaxInWindowByEnd, k.MaxInWindow)
		}
	}
	if len(got.Worst) != len(want) {
		t.Errorf("Analyze().Worst has %d keys, want %d", len(got.Worst), len(want))
	}
}
