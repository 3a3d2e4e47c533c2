package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/internal/accuracy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// loadConfig describes the paced load of one scenario.
type loadConfig struct {
	keys    []string
	rate    float64       // calls/s over all workers
	workers int           // goroutines
	timeout time.Duration // per call
}

// loadStats is what the workers saw.
type loadStats struct {
	calls, admitted, degraded int64
	errors                    map[string]int64    // by gRPC code name
	decisions                 []accuracy.Decision // admitted calls
}

// load runs paced Allow calls from several workers over the cluster's
// rotation until stopped.
type load struct {
	c    *cluster
	cfg  loadConfig
	base time.Time // call times are measured from here (monotonic)

	n       atomic.Int64 // calls started; picks key and node
	lastErr atomic.Int64 // time of the last error since base, in ns; -1 for none
	stop    chan struct{}
	wg      sync.WaitGroup
	stats   []loadStats // one per worker
}

// startLoad starts the workers. Worker w sends a call every
// workers/rate seconds, offset so that the workers interleave; a worker that
// falls behind (a slow call) skips the missed slots rather than bursting.
// Call n goes to key n%len(keys) on node (n/len(keys))%len(rotation), so
// every key is called equally often and through every node in turn.
func startLoad(ctx context.Context, c *cluster, cfg loadConfig, base time.Time) *load {
	l := &load{c: c, cfg: cfg, base: base, stop: make(chan struct{}), stats: make([]loadStats, cfg.workers)}
	l.lastErr.Store(-1)
	interval := time.Duration(float64(cfg.workers) / cfg.rate * float64(time.Second))
	start := time.Now()
	for w := range cfg.workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			st := &l.stats[w]
			st.errors = map[string]int64{}
			next := start.Add(interval * time.Duration(w) / time.Duration(cfg.workers))
			timer := time.NewTimer(0)
			defer timer.Stop()
			<-timer.C
			for {
				if d := time.Until(next); d > 0 {
					timer.Reset(d)
					select {
					case <-timer.C:
					case <-l.stop:
						return
					case <-ctx.Done():
						return
					}
				} else {
					select {
					case <-l.stop:
						return
					case <-ctx.Done():
						return
					default:
					}
				}
				next = next.Add(interval)
				if now := time.Now(); now.Sub(next) > interval {
					next = now
				}
				l.call(ctx, st)
			}
		}()
	}
	return l
}

// call sends one Allow and records its outcome in st.
func (l *load) call(ctx context.Context, st *loadStats) {
	procs := *l.c.rotation.Load()
	if len(procs) == 0 {
		return
	}
	n := l.n.Add(1) - 1
	k := n % int64(len(l.cfg.keys))
	p := procs[(n/int64(len(l.cfg.keys)))%int64(len(procs))]
	p.inflight.Add(1)
	cctx, cancel := context.WithTimeout(ctx, l.cfg.timeout)
	start := time.Since(l.base)
	res, err := p.lim.Allow(cctx, &limiterv1.AllowRequest{Key: l.cfg.keys[k], Policy: policyName})
	end := time.Since(l.base)
	cancel()
	p.inflight.Add(-1)
	st.calls++
	switch {
	case err != nil:
		st.errors[status.Code(err).String()]++
		for {
			old := l.lastErr.Load()
			if old >= int64(end) || l.lastErr.CompareAndSwap(old, int64(end)) {
				break
			}
		}
	case res.GetAllowed():
		st.admitted++
		st.decisions = append(st.decisions, accuracy.Decision{Start: start, End: end, Key: int32(k), Hits: 1, Allowed: true})
	}
	if res.GetDegraded() {
		st.degraded++
	}
}

// lastError returns when the last failed call ended, or the zero time.
func (l *load) lastError() time.Time {
	ns := l.lastErr.Load()
	if ns < 0 {
		return time.Time{}
	}
	return l.base.Add(time.Duration(ns))
}

// finish stops the workers, waits for their calls to end and merges what
// they saw.
func (l *load) finish() loadStats {
	close(l.stop)
	l.wg.Wait()
	out := loadStats{errors: map[string]int64{}}
	for _, st := range l.stats {
		out.calls += st.calls
		out.admitted += st.admitted
		out.degraded += st.degraded
		for c, v := range st.errors {
			out.errors[c] += v
		}
		out.decisions = append(out.decisions, st.decisions...)
	}
	return out
}
