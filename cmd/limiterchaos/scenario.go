package main

import (
	"context"
	"fmt"
	"io"
	"syscall"
	"time"
)

// result is what one scenario measured.
type result struct {
	Scenario string           `json:"scenario"`
	Elapsed  time.Duration    `json:"elapsed_ns"` // load start to load end
	Calls    int64            `json:"calls"`
	Admitted int64            `json:"admitted"`
	Degraded int64            `json:"degraded"`
	Errors   map[string]int64 `json:"errors"` // by gRPC code
	Accuracy accuracyReport   `json:"accuracy"`
	// Tolerance is the largest over-admission of a key that passes.
	Tolerance int64   `json:"tolerance"`
	Faults    []fault `json:"faults"`
	// Recover is the slowest recovery of any fault; Recovered is false when
	// some fault did not recover within --recover-timeout.
	Recover   time.Duration `json:"recover_ns"`
	Recovered bool          `json:"recovered"`
	Pass      bool          `json:"pass"`
	// Problems says why the scenario did not pass, or what else went wrong
	// (a node that exited with an error after SIGTERM).
	Problems []string `json:"problems,omitempty"`
}

// fault is one injected fault and how long the cluster took to recover.
type fault struct {
	What    string        `json:"what"`
	Recover time.Duration `json:"recover_ns"`
	Err     string        `json:"error,omitempty"`
}

// scenario runs the faults of one scenario while the load runs, appending
// to r.Faults and r.Problems. An error aborts the whole run.
type scenarioFunc func(ctx context.Context, s *scenarioRun) error

// scenarioRun is the state one scenario's faults work with.
type scenarioRun struct {
	c    *cluster
	o    options
	l    *load
	keys []string
	r    *result
	log  io.Writer
}

var scenarios = map[string]scenarioFunc{
	"kill9":   kill9,
	"rolling": rolling,
	"freeze":  freeze,
}

// runScenario runs the load for at least o.duration with the scenario's
// faults after the first quarter, then analyses what was admitted.
func runScenario(ctx context.Context, c *cluster, o options, name string, log io.Writer) (result, error) {
	r := result{Scenario: name, Tolerance: o.maxOver[name], Recovered: true}
	keys := make([]string, o.keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s-%d", name, i)
	}
	fmt.Fprintf(log, "%s: load %.0f calls/s on %d keys (limit %d per %v) from %d workers\n", name, o.rate, o.keys, o.limit, o.window, o.workers)
	base := time.Now()
	l := startLoad(ctx, c, loadConfig{keys: keys, rate: o.rate, workers: o.workers, timeout: o.timeout}, base)
	s := &scenarioRun{c: c, o: o, l: l, keys: keys, r: &r, log: log}
	sleep(ctx, o.duration/4)
	var err error
	if ctx.Err() == nil {
		err = scenarios[name](ctx, s)
	}
	if err == nil {
		sleep(ctx, time.Until(base.Add(o.duration)))
	}
	st := l.finish()
	r.Elapsed = time.Since(base)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return r, err
	}
	r.Calls, r.Admitted, r.Degraded, r.Errors = st.calls, st.admitted, st.degraded, st.errors
	r.Accuracy = analyze(st.decisions, o.limit, o.window)
	for _, f := range r.Faults {
		r.Recover = max(r.Recover, f.Recover)
		if f.Err != "" {
			r.Recovered = false
			r.Problems = append(r.Problems, f.What+": "+f.Err)
		}
	}
	if r.Accuracy.MaxOver > r.Tolerance {
		r.Problems = append(r.Problems, fmt.Sprintf("over-admission %d exceeds the tolerance %d", r.Accuracy.MaxOver, r.Tolerance))
	}
	if r.Elapsed >= o.window {
		r.Problems = append(r.Problems, fmt.Sprintf("note: the scenario (%v) outlasted the window (%v); sliding-window bucket expiry can show as over-admission", r.Elapsed.Round(time.Millisecond), o.window))
	}
	r.Pass = r.Recovered && r.Accuracy.MaxOver <= r.Tolerance
	fmt.Fprintf(log, "%s: done in %v: %d calls, %d admitted, over-admission max %d, recovery %v\n",
		name, r.Elapsed.Round(time.Millisecond), r.Calls, r.Admitted, r.Accuracy.MaxOver, r.Recover.Round(time.Millisecond))
	return r, nil
}

// kill9 SIGKILLs the owner of the first key and restarts it after
// o.restartDelay on the same gossip address.
func kill9(ctx context.Context, s *scenarioRun) error {
	n, err := s.c.ownerOf(ctx, s.keys[0])
	if err != nil {
		return err
	}
	what := fmt.Sprintf("SIGKILL %s (owner of %s), restart after %v", n.name, s.keys[0], s.o.restartDelay)
	fmt.Fprintf(s.log, "kill9: %s\n", what)
	s.c.setRotation(n, false)
	at := time.Now()
	n.cur.kill()
	n.cur = nil
	sleep(ctx, s.o.restartDelay)
	if err := s.c.start(ctx, n, ""); err != nil {
		return err
	}
	s.c.setRotation(n, true)
	s.recover(ctx, what, at)
	return nil
}

// rolling restarts every node in turn with SIGTERM, draining it from the
// clients' rotation first, and waits for recovery before the next one.
func rolling(ctx context.Context, s *scenarioRun) error {
	for _, n := range s.c.nodes {
		what := fmt.Sprintf("SIGTERM %s, restart", n.name)
		fmt.Fprintf(s.log, "rolling: %s\n", what)
		s.c.drain(ctx, n)
		at := time.Now()
		n.cur.signal(syscall.SIGTERM)
		if err := n.cur.wait(ctx, 30*time.Second); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.r.Problems = append(s.r.Problems, fmt.Sprintf("%s after SIGTERM: %v\n%s", n.name, err, n.cur.tail))
			n.cur.kill()
		}
		n.cur = nil
		if err := s.c.start(ctx, n, ""); err != nil {
			return err
		}
		s.c.setRotation(n, true)
		s.recover(ctx, what, at)
	}
	return nil
}

// freeze stops the owner of the first key with SIGSTOP for o.freezeFor,
// then continues it.
func freeze(ctx context.Context, s *scenarioRun) error {
	n, err := s.c.ownerOf(ctx, s.keys[0])
	if err != nil {
		return err
	}
	what := fmt.Sprintf("SIGSTOP %s (owner of %s) for %v, SIGCONT", n.name, s.keys[0], s.o.freezeFor)
	fmt.Fprintf(s.log, "freeze: %s\n", what)
	s.c.setRotation(n, false)
	at := time.Now()
	n.cur.signal(syscall.SIGSTOP)
	sleep(ctx, s.o.freezeFor)
	n.cur.signal(syscall.SIGCONT)
	s.c.setRotation(n, true)
	s.recover(ctx, what, at)
	return nil
}

// recover waits until the cluster recovered from the fault injected at at
// and records the fault with its recovery time: every node lists all nodes
// alive at their current addresses, continuously since some moment m, and
// no client call has failed since some moment e; once both held for a full
// second, recovery took max(m, e) - at.
func (s *scenarioRun) recover(ctx context.Context, what string, at time.Time) {
	f := fault{What: what}
	deadline := time.Now().Add(s.o.recoverBound)
	var since time.Time // start of the current run of good membership polls
	for {
		ok, why := s.c.membersOK(ctx)
		now := time.Now()
		if !ok {
			since = time.Time{}
		} else if since.IsZero() {
			since = now
		}
		if ok {
			from := since
			if e := s.l.lastError(); e.After(from) {
				from = e
			}
			if now.Sub(from) >= time.Second {
				f.Recover = from.Sub(at)
				break
			}
		}
		if ctx.Err() != nil {
			f.Err = "interrupted"
			break
		}
		if now.After(deadline) {
			if ok {
				why = "client calls kept failing"
			}
			f.Err = fmt.Sprintf("not recovered within %v: %s", s.o.recoverBound, why)
			break
		}
		sleep(ctx, 50*time.Millisecond)
	}
	if f.Err != "" {
		fmt.Fprintf(s.log, "  %s\n", f.Err)
	} else {
		fmt.Fprintf(s.log, "  recovered in %v\n", f.Recover.Round(time.Millisecond))
	}
	s.r.Faults = append(s.r.Faults, f)
}
