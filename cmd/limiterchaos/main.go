// Command limiterchaos runs a 3-node limiterd cluster on loopback under
// paced load and injects faults, one scenario after another:
//
//	go run ./cmd/limiterchaos                 # all scenarios, 20s each
//	go run ./cmd/limiterchaos --short         # a few seconds each, as in CI
//	go run ./cmd/limiterchaos --scenarios kill9 --duration 30s --rate 3000
//
// Scenarios:
//
//   - kill9: SIGKILL the owner of the first key (all keys are equally
//     loaded, so that node owns about a third of them), restart it after
//     --restart-delay with the same name, data directory and gossip address.
//   - rolling: SIGTERM each node in turn (graceful leave with hand-off) and
//     start it again. Clients stop sending to a node and let its calls finish
//     before it is stopped, as a load balancer draining it would.
//   - freeze: SIGSTOP the owner of the first key for --freeze-for, then
//     SIGCONT. This FREEZES the node; it does not partition it. The others
//     cannot reach it (their forwards hang, memberlist suspects it), but the
//     frozen node admits nothing on its own, so this does not show the "each
//     side admits up to a full limit" behaviour of a real partition. True
//     partitions are tested in-process by internal/daemon's
//     TestClusterPartition, with a fault-injecting transport.
//
// In every scenario clients drop a faulted node from their rotation at the
// moment of the fault (an ideal health check) and take it back as soon as it
// answers again; they never retry. Errors are therefore what the cluster
// itself returns (failed forwards, hand-offs, rejoins), not connection errors
// to a dead address.
//
// Each scenario uses fresh keys (<scenario>-0 .. <scenario>-N) of policy
// "chaos" (--limit per --window, written to a generated config file), so
// scenarios do not share counts. Workers spread calls over keys round-robin
// and over live nodes in turn, paced to --rate calls/s in total. Every
// admitted call is kept with the client times [start, end] around it.
//
// Reported per scenario: calls, admitted, client errors by gRPC code,
// degraded answers, over-admission and time to recover. Over-admission of a
// key is the most hits admitted within any window-long interval minus the
// limit, counting a call only when its whole [start, end] lies in the
// interval (so what is reported certainly happened); the table gives the
// largest over keys and the sum. Time to recover runs from a fault until
// every node lists the 3 members alive at their current addresses AND client
// calls have succeeded without an error for 1s (the 1s is not included).
// Rolling reports the slowest of its three restarts.
//
// Exit status: 0 when every scenario stayed within its tolerance
// (--max-over-*) and recovered within --recover-timeout; 1 when one did
// not; 2 on a usage or setup error (build, start, interrupted).
package main

import (
	"context"
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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options is the parsed command line.
type options struct {
	limiterd     string
	workDir      string
	scenarios    []string
	duration     time.Duration
	rate         float64
	workers      int
	keys         int
	limit        int64
	window       time.Duration
	timeout      time.Duration
	restartDelay time.Duration
	freezeFor    time.Duration
	recoverBound time.Duration
	maxOver      map[string]int64
	extraArgs    []string
	json         bool
}

// allScenarios lists the scenarios in the order they run.
var allScenarios = []string{"kill9", "rolling", "freeze"}

// replicationInterval is the --replication-interval the nodes run with:
// limiterd's default unless an --limiterd-arg sets it.
func replicationInterval(args []string) (time.Duration, error) {
	iv := 10 * time.Millisecond
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		v, ok := strings.CutPrefix(a, "replication-interval=")
		if !ok && a == "replication-interval" && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if ok {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return 0, fmt.Errorf("--limiterd-arg: bad --replication-interval %q", v)
			}
			iv = d
		}
	}
	return iv, nil
}

// argList is a repeatable flag.
type argList []string

func (a *argList) String() string     { return strings.Join(*a, " ") }
func (a *argList) Set(s string) error { *a = append(*a, s); return nil }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{maxOver: map[string]int64{}}
	fs := flag.NewFlagSet("limiterchaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.limiterd, "limiterd", "", "limiterd `binary`; default: go build ./cmd/limiterd from the module around the working directory")
	fs.StringVar(&o.workDir, "work-dir", "", "`directory` for data, config and node logs (kept); default a temporary one, removed at exit")
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "comma-separated `list` of kill9, rolling, freeze")
	short := fs.Bool("short", false, "CI preset: 3s per scenario, 300 calls/s, 6 keys, 6 workers (explicit flags still win)")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "load per scenario, at least (a scenario lasts until its faults recovered)")
	fs.Float64Var(&o.rate, "rate", 2000, "target calls/s over all workers, paced")
	fs.IntVar(&o.workers, "workers", 32, "concurrent clients")
	fs.IntVar(&o.keys, "keys", 12, "keys per scenario")
	fs.Int64Var(&o.limit, "limit", 0, "policy limit per key per window; 0: half of the calls a key gets in --duration, so keys reach it mid-scenario")
	fs.DurationVar(&o.window, "window", time.Minute, "policy window; keep it longer than a scenario")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "deadline of each client call")
	fs.DurationVar(&o.restartDelay, "restart-delay", time.Second, "kill9: how long the killed node stays down")
	fs.DurationVar(&o.freezeFor, "freeze-for", 3*time.Second, "freeze: how long the node stays stopped")
	fs.DurationVar(&o.recoverBound, "recover-timeout", 30*time.Second, "a fault not recovered within this fails the scenario")
	maxKill9 := fs.Int64("max-over-kill9", -1, "tolerated over-admission of any key in kill9; -1: the calls a key gets in one replication interval (rounded up), plus one in flight")
	maxRolling := fs.Int64("max-over-rolling", 0, "tolerated over-admission of any key in rolling")
	maxFreeze := fs.Int64("max-over-freeze", -1, "tolerated over-admission of any key in freeze; -1: the limit")
	fs.Var((*argList)(&o.extraArgs), "limiterd-arg", "extra `argument` for every limiterd, e.g. --limiterd-arg=--replication-interval=5ms (repeatable)")
	fs.BoolVar(&o.json, "json", false, "print the results as JSON instead of a table")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *short {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["duration"] {
			o.duration = 3 * time.Second
		}
		if !set["rate"] {
			o.rate = 300
		}
		if !set["keys"] {
			o.keys = 6
		}
		if !set["workers"] {
			o.workers = 6
		}
	}
	for _, s := range strings.Split(*scen, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !slices.Contains(allScenarios, s) {
			return o, fmt.Errorf("--scenarios: unknown scenario %q (have %s)", s, strings.Join(allScenarios, ", "))
		}
		o.scenarios = append(o.scenarios, s)
	}
	switch {
	case len(o.scenarios) == 0:
		return o, errors.New("--scenarios: none given")
	case o.duration <= 0:
		return o, errors.New("--duration must be positive")
	case o.rate <= 0:
		return o, errors.New("--rate must be positive")
	case o.workers < 1 || o.keys < 1:
		return o, errors.New("--workers and --keys must be at least 1")
	case o.limit < 0:
		return o, errors.New("--limit must not be negative")
	case o.window < time.Second:
		return o, errors.New("--window must be at least 1s")
	case o.timeout <= 0 || o.recoverBound <= 0 || o.freezeFor <= 0 || o.restartDelay < 0:
		return o, errors.New("--timeout, --recover-timeout and --freeze-for must be positive, --restart-delay not negative")
	}
	if o.limit == 0 {
		o.limit = max(1, int64(o.rate*o.duration.Seconds()/float64(o.keys)/2))
	}
	if *maxFreeze < 0 {
		*maxFreeze = o.limit
	}
	if *maxKill9 < 0 {
		iv, err := replicationInterval(o.extraArgs)
		if err != nil {
			return o, err
		}
		*maxKill9 = int64(math.Ceil(o.rate/float64(o.keys)*iv.Seconds())) + 1
	}
	o.maxOver["kill9"], o.maxOver["rolling"], o.maxOver["freeze"] = *maxKill9, *maxRolling, *maxFreeze
	return o, nil
}

// run is the whole command; it returns the exit status. Every limiterd it
// started has been killed when it returns.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "limiterchaos:", err)
		return 2
	}
	results, err := runScenarios(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "limiterchaos:", err)
		return 2
	}
	if o.json {
		err = writeJSON(stdout, o, results)
	} else {
		err = writeTable(stdout, o, results)
	}
	if err != nil {
		fmt.Fprintln(stderr, "limiterchaos:", err)
		return 2
	}
	for _, r := range results {
		if !r.Pass {
			return 1
		}
	}
	return 0
}

// runScenarios builds or finds limiterd, starts the cluster and runs the
// chosen scenarios on it. Progress goes to log.
func runScenarios(ctx context.Context, o options, log io.Writer) ([]result, error) {
	dir := o.workDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "limiterchaos-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	bin := o.limiterd
	if bin == "" {
		fmt.Fprintln(log, "building limiterd")
		var err error
		if bin, err = buildLimiterd(ctx, dir); err != nil {
			return nil, err
		}
	}
	cfgFile, err := writePolicy(dir, o.limit, o.window)
	if err != nil {
		return nil, err
	}
	c, err := startCluster(ctx, clusterConfig{bin: bin, dir: dir, cfgFile: cfgFile, n: 3, extra: o.extraArgs, log: log})
	if err != nil {
		return nil, err
	}
	defer c.close()
	fmt.Fprintf(log, "cluster up: %s\n", c.describe())
	var results []result
	for _, name := range o.scenarios {
		r, err := runScenario(ctx, c, o, name, log)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %w", name, err)
		}
		results = append(results, r)
	}
	return results, nil
}
