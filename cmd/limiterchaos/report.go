package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/limiterd/limiterd/internal/accuracy"
)

// accuracyReport is the over-admission part of a scenario's result: what
// accuracy.Analyze found, with every key rather than the worst few.
type accuracyReport struct {
	Limit  int64         `json:"limit"`
	Window time.Duration `json:"window_ns"`
	// Keys is how many keys admitted at least one call; KeysAtLimit how
	// many of them reached the limit within one window (a key that never
	// did could not show over-admission); KeysOver how many went beyond.
	Keys        int `json:"keys"`
	KeysAtLimit int `json:"keys_at_limit"`
	KeysOver    int `json:"keys_over"`
	// MaxOver is the largest Over of any key; SumOver adds them up.
	MaxOver int64 `json:"max_over"`
	SumOver int64 `json:"sum_over"`
	// PerKey has every key with an admitted call, by key; nil when none.
	PerKey []keyReport `json:"per_key"`
}

// keyReport is the worst window of one key (accuracy.KeyAccuracy without
// the informative by-end count).
type keyReport struct {
	Key int32 `json:"key"`
	// Admitted is every hit admitted for the key.
	Admitted int64 `json:"admitted"`
	// MaxInWindow is the most calls certainly admitted within one interval
	// [From, From+window): calls whose whole [Start, End] lies inside it.
	MaxInWindow int64         `json:"max_in_window"`
	From        time.Duration `json:"from_ns"`
	// Over is max(0, MaxInWindow-limit).
	Over int64 `json:"over"`
}

// analyze runs accuracy.Analyze over the admitted calls of a scenario,
// which it reorders, and keeps every key.
func analyze(ds []accuracy.Decision, limit int64, window time.Duration) accuracyReport {
	a := accuracy.Analyze(ds, limit, window, len(ds))
	r := accuracyReport{Limit: a.Limit, Window: a.Window, Keys: a.Keys, KeysOver: a.KeysOver, MaxOver: a.MaxOver, SumOver: a.SumOver}
	slices.SortFunc(a.Worst, func(x, y accuracy.KeyAccuracy) int { return cmp.Compare(x.Key, y.Key) })
	for _, k := range a.Worst {
		if k.MaxInWindow >= limit {
			r.KeysAtLimit++
		}
		r.PerKey = append(r.PerKey, keyReport{Key: k.Key, Admitted: k.Admitted, MaxInWindow: k.MaxInWindow, From: k.From, Over: k.Over})
	}
	return r
}

// writeTable prints the results as a markdown table, then the faults and
// problems of each scenario.
func writeTable(w io.Writer, o options, rs []result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "3 nodes, %.0f calls/s from %d workers, %d keys per scenario, limit %d per %v, load >= %v per scenario\n\n",
		o.rate, o.workers, o.keys, o.limit, o.window, o.duration)
	b.WriteString("| scenario | calls | calls/s | admitted | client errors | degraded | keys at limit | over-admission max (tolerance) | over sum | recovery | result |\n")
	b.WriteString("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rs {
		rec := fmtDur(r.Recover)
		if !r.Recovered {
			rec = "none"
		}
		res := "ok"
		if !r.Pass {
			res = "FAIL"
		}
		rate := 0.0
		if r.Elapsed > 0 {
			rate = float64(r.Calls) / r.Elapsed.Seconds()
		}
		fmt.Fprintf(&b, "| %s | %d | %.0f | %d | %s | %d | %d/%d | %d (%d) | %d | %s | %s |\n",
			r.Scenario, r.Calls, rate, r.Admitted, fmtErrors(r.Errors), r.Degraded, r.Accuracy.KeysAtLimit, len(r.Accuracy.PerKey),
			r.Accuracy.MaxOver, r.Tolerance, r.Accuracy.SumOver, rec, res)
	}
	b.WriteString("\n")
	for _, r := range rs {
		for _, f := range r.Faults {
			if f.Err != "" {
				fmt.Fprintf(&b, "- %s: %s: %s\n", r.Scenario, f.What, f.Err)
			} else {
				fmt.Fprintf(&b, "- %s: %s: recovered in %s\n", r.Scenario, f.What, fmtDur(f.Recover))
			}
		}
		for _, p := range r.Problems {
			if !strings.Contains(p, "not recovered") {
				fmt.Fprintf(&b, "- %s: %s\n", r.Scenario, p)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// fmtErrors renders errors by code, most frequent first, or "0".
func fmtErrors(m map[string]int64) string {
	if len(m) == 0 {
		return "0"
	}
	codes := make([]string, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	slices.SortFunc(codes, func(a, b string) int {
		if m[a] != m[b] {
			return int(m[b] - m[a])
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s %d", c, m[c])
	}
	return strings.Join(parts, ", ")
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// writeJSON prints the settings and results as one JSON object.
func writeJSON(w io.Writer, o options, rs []result) error {
	out := struct {
		Nodes    int           `json:"nodes"`
		Rate     float64       `json:"rate"`
		Workers  int           `json:"workers"`
		Keys     int           `json:"keys"`
		Limit    int64         `json:"limit"`
		Window   time.Duration `json:"window_ns"`
		Duration time.Duration `json:"duration_ns"`
		Results  []result      `json:"results"`
	}{3, o.rate, o.workers, o.keys, o.limit, o.window, o.duration, rs}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
