package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

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
