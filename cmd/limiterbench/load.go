package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/client"
	"github.com/limiterd/limiterd/internal/accuracy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// loadConfig describes one closed-loop run.
type loadConfig struct {
	Addrs      []string      // gRPC addresses; connection i goes to Addrs[i%len]
	Conns      int           // gRPC connections, at least len(Addrs)
	Workers    int           // goroutines; worker w uses connection w%Conns
	Duration   time.Duration // run length when Requests is 0
	Requests   int64         // total calls; 0 means run for Duration
	Keys       int           // distinct keys, chosen uniformly per call
	KeyPrefix  string        // key i is KeyPrefix+i
	Policy     string        // AllowRequest.policy
	Hits       int32         // AllowRequest.hits
	Timeout    time.Duration // per call
	Release    bool          // release leases right away
	MaxRecords int           // decisions kept for the accuracy check
	Route      bool          // send each key to its owner (client.WithRouting)
}

// loadResult is what a run saw.
type loadResult struct {
	Elapsed   time.Duration
	Requests  uint64 // calls answered, with or without error
	Allowed   uint64
	Denied    uint64
	Errors    map[string]uint64   // by gRPC code name; "release " prefix for Release calls
	Latency   hist                // every Allow call, errors included
	Decisions []accuracy.Decision // OK answers, up to MaxRecords
	Dropped   uint64              // OK answers not kept because of MaxRecords
	// Limit and Window are what the server said: the largest limit field
	// and the w= of the RateLimit-Policy header (0 when absent).
	Limit  int64
	Window time.Duration
}

// pickFunc returns the Limiter client a call for key goes to.
type pickFunc func(key string) limiterv1.LimiterClient

// target is one of the run's connections, or with routing one routing
// client (a connection to its address plus one to each member).
type target struct {
	pick  pickFunc
	close func()
}

// connect opens the run's targets: plain connections, or with cfg.Route
// routing clients, waiting until each routes keys to their owners.
func connect(ctx context.Context, cfg loadConfig, stderr io.Writer) ([]target, error) {
	if !cfg.Route {
		conns, err := dial(ctx, cfg)
		if err != nil {
			return nil, err
		}
		ts := make([]target, len(conns))
		for i, c := range conns {
			l := limiterv1.NewLimiterClient(c)
			ts[i] = target{pick: func(string) limiterv1.LimiterClient { return l }, close: func() { c.Close() }}
		}
		return ts, nil
	}
	var ts []target
	for i := range cfg.Conns {
		addr := cfg.Addrs[i%len(cfg.Addrs)]
		c, err := client.New(addr, client.WithRouting(0))
		if err != nil {
			closeTargets(ts)
			return nil, fmt.Errorf("connect %s: %w", addr, err)
		}
		ts = append(ts, target{pick: c.LimiterFor, close: func() { c.Close() }})
		if !waitRouted(ctx, c, cfg.KeyPrefix, min(cfg.Keys, 100), 5*time.Second) {
			fmt.Fprintf(stderr, "limiterbench: %s: not routing every key to its owner after 5s (%v); those calls go to %s\n", addr, c.RoutingError(), addr)
		}
	}
	return ts, nil
}

// waitRouted polls until the first n keys all go to a member other than
// the target's own connection, or d passes.
func waitRouted(ctx context.Context, c *client.Client, prefix string, n int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		all := true
		for i := range n {
			if c.LimiterFor(prefix+strconv.Itoa(i)) == c.Limiter() {
				all = false
				break
			}
		}
		if all {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func closeTargets(ts []target) {
	for _, t := range ts {
		t.close()
	}
}

// dial opens cfg.Conns connections and waits until each is ready.
func dial(ctx context.Context, cfg loadConfig) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	for i := range cfg.Conns {
		addr := cfg.Addrs[i%len(cfg.Addrs)]
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("connect %s: %w", addr, err)
		}
		conns = append(conns, c)
		if err := waitReady(ctx, c, 5*time.Second); err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("connect %s: %w", addr, err)
		}
	}
	return conns, nil
}

func waitReady(ctx context.Context, c *grpc.ClientConn, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	c.Connect()
	for {
		s := c.GetState()
		if s == connectivity.Ready {
			return nil
		}
		if !c.WaitForStateChange(ctx, s) {
			return fmt.Errorf("not ready after %v (state %v)", d, s)
		}
	}
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		c.Close()
	}
}

var windowRE = regexp.MustCompile(`;w=(\d+)`)

// worker is one closed-loop caller; its fields are its alone until run ends.
type worker struct {
	lat     hist
	ds      []accuracy.Decision
	allowed uint64
	denied  uint64
	errs    map[string]uint64
	limit   int64
	window  time.Duration
}

// runLoad drives the load until ctx ends, cfg.Duration passes or
// cfg.Requests calls were made, and returns what it saw.
func runLoad(ctx context.Context, cfg loadConfig, targets []target) *loadResult {
	keys := make([]string, cfg.Keys)
	for i := range keys {
		keys[i] = cfg.KeyPrefix + strconv.Itoa(i)
	}
	var (
		stop     atomic.Bool
		issued   atomic.Int64
		recorded atomic.Int64
		dropped  atomic.Uint64
		wg       sync.WaitGroup
	)
	ws := make([]*worker, cfg.Workers)
	t0 := time.Now()
	if cfg.Requests == 0 {
		t := time.AfterFunc(cfg.Duration, func() { stop.Store(true) })
		defer t.Stop()
	}
	defer context.AfterFunc(ctx, func() { stop.Store(true) })()
	for w := range ws {
		wk := &worker{errs: map[string]uint64{}}
		ws[w] = wk
		pick := targets[w%len(targets)].pick
		rng := rand.New(rand.NewPCG(uint64(t0.UnixNano()), uint64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if cfg.Requests > 0 && issued.Add(1) > cfg.Requests {
					return
				}
				k := rng.IntN(len(keys))
				req := &limiterv1.AllowRequest{Key: keys[k], Policy: cfg.Policy, Hits: int64(cfg.Hits)}
				cctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
				start := time.Since(t0)
				resp, err := pick(req.Key).Allow(cctx, req)
				end := time.Since(t0)
				cancel()
				wk.lat.record(end - start)
				if err != nil {
					wk.errs[status.Code(err).String()]++
					continue
				}
				if resp.GetAllowed() {
					wk.allowed++
				} else {
					wk.denied++
				}
				wk.learn(resp)
				if recorded.Add(1) <= int64(cfg.MaxRecords) {
					wk.ds = append(wk.ds, accuracy.Decision{Start: start, End: end, Key: int32(k), Hits: max(cfg.Hits, 1), Allowed: resp.GetAllowed()})
				} else {
					dropped.Add(1)
				}
				if id := resp.GetLeaseId(); id != "" && cfg.Release {
					rctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
					if _, err := pick(req.Key).Release(rctx, &limiterv1.ReleaseRequest{LeaseId: id}); err != nil {
						wk.errs["release "+status.Code(err).String()]++
					}
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	res := &loadResult{Elapsed: time.Since(t0), Errors: map[string]uint64{}, Dropped: dropped.Load()}
	for _, wk := range ws {
		res.Latency.merge(&wk.lat)
		res.Allowed += wk.allowed
		res.Denied += wk.denied
		for c, n := range wk.errs {
			res.Errors[c] += n
		}
		res.Decisions = append(res.Decisions, wk.ds...)
		wk.ds = nil
		res.Limit = max(res.Limit, wk.limit)
		res.Window = max(res.Window, wk.window)
	}
	res.Requests = res.Latency.n
	return res
}

// learn notes the limit and window the server reports.
func (wk *worker) learn(resp *limiterv1.AllowResponse) {
	wk.limit = max(wk.limit, resp.GetLimit())
	if wk.window != 0 {
		return
	}
	if m := windowRE.FindStringSubmatch(resp.GetHeaders()["RateLimit-Policy"]); m != nil {
		if s, err := strconv.ParseInt(m[1], 10, 64); err == nil {
			wk.window = time.Duration(s) * time.Second
		}
	}
}
