// Command limiterbench is a closed-loop load generator and accuracy checker
// for limiter.v1.Limiter servers (limiterd, or bench/baseline).
//
//	go run ./cmd/limiterbench --addr 127.0.0.1:8081 --workers 64 --duration 10s --keys 1000
//
// Workers (goroutines) call Allow back to back over --conns connections
// spread over the --addr addresses, each call on a key chosen uniformly from
// key-0 .. key-(N-1). It reports throughput, latency quantiles, errors by
// gRPC code and allowed/denied counts, and, for the accuracy check, the most
// hits admitted for one key within any interval of length --window compared
// with --limit. Over-admission is max(0, that count - limit) per key; the
// command exits 1 when the largest over-admission of any key exceeds
// --tolerance, 2 on a usage or connection error or when no call succeeded.
//
// The check is conservative: the client knows only that the server decided
// within [start, end] of each call, so a call counts toward an interval only
// when its whole [start, end] lies inside it. A reported over-admission
// certainly happened; one hidden by latency at a window's edge can be missed.
// Calls that failed are unknown and left out.
//
// Memory: latency goes into fixed-size histograms (0.8% resolution); for the
// check every OK answer is kept as a 32-byte record, up to --max-records
// (default 2,000,000, about 64 MiB, up to twice that while merging). Answers
// beyond the cap still count in the totals but not in the check, which then
// covers the beginning of the run and says how many it left out.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/limiterd/limiterd/internal/accuracy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// addrList is a repeatable, comma-separated flag.
type addrList []string

func (a *addrList) String() string { return strings.Join(*a, ",") }

func (a *addrList) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*a = append(*a, p)
		}
	}
	return nil
}

type options struct {
	load      loadConfig
	limit     int64
	window    time.Duration
	check     bool
	tolerance int64
	worst     int
	json      bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var addrs addrList
	var hits int64
	fs := flag.NewFlagSet("limiterbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&addrs, "addr", "server `address` host:port; repeat or comma-separate to spread load (default 127.0.0.1:8081)")
	fs.IntVar(&o.load.Conns, "conns", 4, "gRPC `connections`, spread round-robin over the addresses (at least one per address)")
	fs.IntVar(&o.load.Workers, "workers", 64, "concurrent callers (goroutines)")
	fs.DurationVar(&o.load.Duration, "duration", 10*time.Second, "how long to run (ignored when --requests is set)")
	fs.Int64Var(&o.load.Requests, "requests", 0, "total calls to make; 0 runs for --duration")
	fs.IntVar(&o.load.Keys, "keys", 1000, "distinct keys, named <prefix>0 .. <prefix>N-1")
	fs.StringVar(&o.load.KeyPrefix, "key-prefix", "key-", "key name `prefix`")
	fs.StringVar(&o.load.Policy, "policy", "", "policy `name` sent with each call (empty: the server's default)")
	fs.Int64Var(&hits, "hits", 1, "hits each call counts")
	fs.DurationVar(&o.load.Timeout, "timeout", 5*time.Second, "deadline of each call")
	fs.BoolVar(&o.load.Release, "release", true, "release a lease as soon as a call returns one")
	fs.IntVar(&o.load.MaxRecords, "max-records", 2_000_000, "most decisions kept for the accuracy check (32 bytes each)")
	fs.Int64Var(&o.limit, "limit", 0, "the policy's limit, for the check; 0 takes the limit field of the answers")
	fs.DurationVar(&o.window, "window", 0, "the policy's window, for the check; 0 takes w= of the RateLimit-Policy header")
	fs.BoolVar(&o.check, "check", true, "run the accuracy check (turn off for bench/baseline, which limits nothing)")
	fs.Int64Var(&o.tolerance, "tolerance", 0, "over-admission `hits` allowed for any one key before exiting 1")
	fs.IntVar(&o.worst, "worst", 5, "keys to list in the report, most over-admitted first")
	fs.BoolVar(&o.json, "json", false, "print one JSON object instead of text")
	fs.BoolVar(&o.load.Route, "route", false, "send each key straight to its owner (the Go client's WithRouting), one routing client per connection")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if len(addrs) == 0 {
		addrs = addrList{"127.0.0.1:8081"}
	}
	o.load.Addrs = addrs
	o.load.Conns = max(o.load.Conns, len(addrs))
	switch {
	case o.load.Workers < 1:
		return o, errors.New("--workers must be at least 1")
	case o.load.Keys < 1 || o.load.Keys > math.MaxInt32:
		return o, errors.New("--keys must be in 1..2^31-1")
	case hits < 0 || hits > math.MaxInt32:
		return o, errors.New("--hits must be in 0..2^31-1")
	case o.load.Requests < 0, o.load.Requests == 0 && o.load.Duration <= 0:
		return o, errors.New("give a positive --duration or --requests")
	case o.load.Timeout <= 0:
		return o, errors.New("--timeout must be positive")
	case o.load.MaxRecords < 0:
		return o, errors.New("--max-records must not be negative")
	case o.limit < 0 || o.window < 0 || o.tolerance < 0:
		return o, errors.New("--limit, --window and --tolerance must not be negative")
	}
	o.load.Hits = int32(hits)
	return o, nil
}

// report is the --json output; the text output says the same.
type report struct {
	Addrs         []string           `json:"addrs"`
	Conns         int                `json:"conns"`
	Workers       int                `json:"workers"`
	Keys          int                `json:"keys"`
	ElapsedSec    float64            `json:"elapsed_s"`
	Requests      uint64             `json:"requests"`
	RPS           float64            `json:"rps"`
	Allowed       uint64             `json:"allowed"`
	Denied        uint64             `json:"denied"`
	Errors        uint64             `json:"errors"`
	ErrorsByCode  map[string]uint64  `json:"errors_by_code"`
	LatencyMS     map[string]string  `json:"latency_ms"`
	Recorded      int                `json:"recorded"`
	Dropped       uint64             `json:"dropped"`
	Accuracy      *accuracy.Accuracy `json:"accuracy,omitempty"`
	LimitFrom     string             `json:"limit_from,omitempty"`
	Tolerance     int64              `json:"tolerance"`
	Pass          bool               `json:"pass"`
	CheckSkipped  string             `json:"check_skipped,omitempty"`
	latencyValues []time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "limiterbench:", err)
		}
		return 2
	}
	targets, err := connect(ctx, o.load, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "limiterbench:", err)
		return 2
	}
	res := runLoad(ctx, o.load, targets)
	closeTargets(targets)

	r := report{
		Addrs: o.load.Addrs, Conns: len(targets), Workers: o.load.Workers, Keys: o.load.Keys,
		ElapsedSec: res.Elapsed.Seconds(), Requests: res.Requests,
		RPS:     float64(res.Requests) / res.Elapsed.Seconds(),
		Allowed: res.Allowed, Denied: res.Denied, Errors: res.Requests - res.Allowed - res.Denied,
		ErrorsByCode: res.Errors, Recorded: len(res.Decisions), Dropped: res.Dropped,
		Tolerance: o.tolerance, Pass: true,
	}
	qs := []struct {
		name string
		v    time.Duration
	}{{"p50", res.Latency.quantile(0.5)}, {"p90", res.Latency.quantile(0.9)}, {"p99", res.Latency.quantile(0.99)}, {"max", res.Latency.max}}
	r.LatencyMS = map[string]string{}
	for _, q := range qs {
		r.LatencyMS[q.name] = fmt.Sprintf("%.3f", float64(q.v)/1e6)
		r.latencyValues = append(r.latencyValues, q.v)
	}
	limit, window := o.limit, o.window
	limitFrom, windowFrom := "--limit", "--window"
	if limit == 0 {
		limit, limitFrom = res.Limit, "answers"
	}
	if window == 0 {
		window, windowFrom = res.Window, "RateLimit-Policy"
	}
	r.LimitFrom = limitFrom + ", " + windowFrom
	switch {
	case !o.check:
		r.CheckSkipped = "--check=false"
	case limit == 0 || window == 0:
		r.CheckSkipped = fmt.Sprintf("limit (%d) or window (%v) unknown: pass --limit and --window", limit, window)
		r.Pass = false
	default:
		acc := accuracy.Analyze(res.Decisions, limit, window, o.worst)
		r.Accuracy = &acc
		r.Pass = acc.MaxOver <= o.tolerance
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else {
		printText(stdout, &r, o.load.KeyPrefix)
	}
	switch {
	case res.Allowed+res.Denied == 0:
		fmt.Fprintln(stderr, "limiterbench: no call succeeded")
		return 2
	case r.CheckSkipped != "" && o.check:
		fmt.Fprintln(stderr, "limiterbench: accuracy check not possible:", r.CheckSkipped)
		return 2
	case !r.Pass:
		fmt.Fprintf(stderr, "limiterbench: over-admission %d exceeds tolerance %d\n", r.Accuracy.MaxOver, o.tolerance)
		return 1
	}
	return 0
}

func printText(w io.Writer, r *report, prefix string) {
	fmt.Fprintf(w, "target     %s (%d conns, %d workers, %d keys)\n", strings.Join(r.Addrs, ","), r.Conns, r.Workers, r.Keys)
	fmt.Fprintf(w, "requests   %d in %.2fs = %.0f req/s\n", r.Requests, r.ElapsedSec, r.RPS)
	fmt.Fprintf(w, "decisions  allowed %d, denied %d\n", r.Allowed, r.Denied)
	codes := make([]string, 0, len(r.ErrorsByCode))
	for c, n := range r.ErrorsByCode {
		codes = append(codes, fmt.Sprintf("%s %d", c, n))
	}
	slices.Sort(codes)
	if len(codes) == 0 {
		codes = []string{"none"}
	}
	fmt.Fprintf(w, "errors     %d (%s)\n", r.Errors, strings.Join(codes, ", "))
	l := r.latencyValues
	fmt.Fprintf(w, "latency    p50 %v  p90 %v  p99 %v  max %v\n", round(l[0]), round(l[1]), round(l[2]), round(l[3]))
	if r.CheckSkipped != "" {
		fmt.Fprintf(w, "accuracy   skipped: %s\n", r.CheckSkipped)
		return
	}
	a := r.Accuracy
	fmt.Fprintf(w, "accuracy   limit %d per %v (from %s); %d keys admitted hits; %d decisions checked",
		a.Limit, a.Window, r.LimitFrom, a.Keys, r.Recorded)
	if r.Dropped > 0 {
		fmt.Fprintf(w, ", %d left out (--max-records)", r.Dropped)
	}
	fmt.Fprintln(w)
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "           max in any window %d; over-admission max %d, sum %d over %d keys; tolerance %d: %s\n",
		a.MaxInWindow, a.MaxOver, a.SumOver, a.KeysOver, r.Tolerance, verdict)
	for _, k := range a.Worst {
		fmt.Fprintf(w, "           %s%d: admitted %d, max in window %d from %v (by end times %d), over %d\n",
			prefix, k.Key, k.Admitted, k.MaxInWindow, round(k.From), k.MaxInWindowByEnd, k.Over)
	}
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
