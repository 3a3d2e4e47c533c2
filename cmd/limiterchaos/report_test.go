package main

import (
	"slices"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/accuracy"
)

func TestAnalyze(t *testing.T) {
	const ms = time.Millisecond
	// burst returns n admitted calls of key k, one per ms from s, each
	// taking 1ms.
	burst := func(k int32, s time.Duration, n int) []accuracy.Decision {
		var ds []accuracy.Decision
		for i := range time.Duration(n) {
			ds = append(ds, accuracy.Decision{Start: (s + i) * ms, End: (s + i + 1) * ms, Key: k, Hits: 1, Allowed: true})
		}
		return ds
	}
	tests := []struct {
		name    string
		ds      []accuracy.Decision
		atLimit int
		perKey  []keyReport
	}{
		{name: "nothing admitted"},
		{name: "under the limit", ds: burst(0, 0, 4), perKey: []keyReport{{Key: 0, Admitted: 4, MaxInWindow: 4}}},
		{name: "exactly the limit", ds: burst(0, 0, 5), atLimit: 1, perKey: []keyReport{{Key: 0, Admitted: 5, MaxInWindow: 5}}},
		{
			name: "every key, by key",
			ds:   slices.Concat(burst(2, 0, 3), burst(0, 0, 8), burst(1, 300, 6)), atLimit: 2,
			perKey: []keyReport{
				{Key: 0, Admitted: 8, MaxInWindow: 8, Over: 3},
				{Key: 1, Admitted: 6, MaxInWindow: 6, From: 300 * ms, Over: 1},
				{Key: 2, Admitted: 3, MaxInWindow: 3},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := analyze(tt.ds, 5, 100*ms)
			if a.Limit != 5 || a.Window != 100*ms || a.Keys != len(tt.perKey) || a.KeysAtLimit != tt.atLimit {
				t.Errorf("analyze() limit, window, keys, at limit = %d, %v, %d, %d, want 5, 100ms, %d, %d",
					a.Limit, a.Window, a.Keys, a.KeysAtLimit, len(tt.perKey), tt.atLimit)
			}
			var keysOver int
			var maxOver, sumOver int64
			for _, k := range tt.perKey {
				if k.Over > 0 {
					keysOver++
				}
				maxOver, sumOver = max(maxOver, k.Over), sumOver+k.Over
			}
			if a.KeysOver != keysOver || a.MaxOver != maxOver || a.SumOver != sumOver {
				t.Errorf("analyze() keys over, max over, sum over = %d, %d, %d, want %d, %d, %d",
					a.KeysOver, a.MaxOver, a.SumOver, keysOver, maxOver, sumOver)
			}
			if !slices.Equal(a.PerKey, tt.perKey) {
				t.Errorf("analyze().PerKey = %+v, want %+v", a.PerKey, tt.perKey)
			}
		})
	}
}
