// Command ghzstat reads an HTML report written by ghz v0.121.0 (-O html) and
// prints its figures on one tab-separated line, so that bench/loadtest.sh
// gets machine-readable numbers and the HTML report from a single ghz run:
//
//	count  req/s  p50_ms  p90_ms  p99_ms  max_ms  errors  errors_by_status
//
// req/s is ghz's own "Requests / sec" (count / total). The latencies are
// computed from the per-call details the report embeds, over calls with
// status OK, as ghz does without --count-errors. errors_by_status is
// "Unavailable:3,DeadlineExceeded:1" or "-". A report in another format
// is an error, not a guess.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ghzstat REPORT.html")
		os.Exit(2)
	}
	line, err := summarize(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "ghzstat:", err)
		os.Exit(1)
	}
	fmt.Println(line)
}

var (
	rpsRE  = regexp.MustCompile(`<th>Requests / sec</th>\s*<td>\s*([0-9.]+)\s*</td>`)
	dataRE = regexp.MustCompile(`const rawData = `)
)

// detail is one call of the report (runner.ResultDetail).
type detail struct {
	Latency time.Duration `json:"latency"`
	Error   string        `json:"error"`
	Status  string        `json:"status"`
}

func summarize(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	m := rpsRE.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s: no Requests / sec row: not a ghz v0.121.0 HTML report", path)
	}
	rps, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return "", fmt.Errorf("%s: requests / sec: %w", path, err)
	}
	loc := dataRE.FindIndex(b)
	if loc == nil {
		return "", fmt.Errorf("%s: no rawData: not a ghz v0.121.0 HTML report", path)
	}
	var ds []detail
	if err := json.NewDecoder(bytes.NewReader(b[loc[1]:])).Decode(&ds); err != nil {
		return "", fmt.Errorf("%s: rawData: %w", path, err)
	}
	if len(ds) == 0 {
		return "", errors.New(path + ": no calls in the report")
	}
	var ok []time.Duration
	errs := map[string]int{}
	for _, d := range ds {
		if d.Status == "OK" {
			ok = append(ok, d.Latency)
		} else {
			errs[d.Status]++
		}
	}
	slices.Sort(ok)
	q := func(p float64) string {
		if len(ok) == 0 {
			return "0"
		}
		i := min(int(p*float64(len(ok))), len(ok)-1)
		return fmt.Sprintf("%.3f", float64(ok[i])/1e6)
	}
	var codes []string
	for s, n := range errs {
		codes = append(codes, fmt.Sprintf("%s:%d", s, n))
	}
	slices.Sort(codes)
	byStatus := strings.Join(codes, ",")
	if byStatus == "" {
		byStatus = "-"
	}
	return strings.Join([]string{strconv.Itoa(len(ds)), fmt.Sprintf("%.1f", rps),
		q(0.5), q(0.9), q(0.99), q(1), strconv.Itoa(len(ds) - len(ok)), byStatus}, "\t"), nil
}
