package server

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/limiterd/limiterd/internal/cluster"
	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// fakePeers is a peerNode for one node, "x", in a ring of three: "r" and
// "s" are limiters in this process, reached through calls that a test can
// fail one by one. Methods the Cluster does not call in these tests panic
// (the embedded nil interface).
type fakePeers struct {
	peerNode
	ring  *cluster.Ring
	peers map[string]*limiter.Limiter

	mu        sync.Mutex
	noFetch   map[string]bool // members whose Fetch fails
	noForward map[string]bool // members whose Forward fails
	forwarded []string        // members Forward reached

	replBlock  map[string]chan struct{} // ReplicateAsync to these members waits for a close
	replicated map[string][]string      // keys ReplicateAsync got, by member
	hung       int                      // ReplicateAsync calls waiting on replBlock
}

var errFakeDown = fmt.Errorf("fake: %w", cluster.ErrOwnerUnavailable)

func (f *fakePeers) Name() string                                               { return f.ring.Self() }
func (f *fakePeers) Ring() *cluster.Ring                                        { return f.ring }
func (f *fakePeers) Owner(key string) (cluster.Member, bool)                    { return f.ring.Owner(key) }
func (f *fakePeers) Replicas(key string, n int) []cluster.Member                { return f.ring.Replicas(key, n) }
func (f *fakePeers) ReplicaCount() int                                          { return 2 }
func (f *fakePeers) Members() []cluster.Member                                  { return f.ring.Members() }
func (f *fakePeers) RegisterPeerService(grpc.ServiceRegistrar, cluster.Handler) {}
func (f *fakePeers) GossipAddr() string                                         { return "127.0.0.1:1" }
func (f *fakePeers) Reconnect(string)                                           {}

func (f *fakePeers) Replicate(context.Context, cluster.Member, []*limiterv1.KeyState) error {
	return nil
}

func (f *fakePeers) ReplicateAsync(m cluster.Member, states []*limiterv1.KeyState, done func([]*limiterv1.KeyState, error), written func()) {
	f.mu.Lock()
	block := f.replBlock[m.Name]
	if block != nil {
		f.hung++
	}
	f.mu.Unlock()
	send := func() {
		f.mu.Lock()
		if f.replicated == nil {
			f.replicated = map[string][]string{}
		}
		for _, st := range states {
			f.replicated[m.Name] = append(f.replicated[m.Name], st.GetKey())
		}
		f.mu.Unlock()
		done(nil, nil)
		written()
	}
	if block == nil {
		send() // the connection took it at once
		return
	}
	go func() {
		<-block // a write that hangs
		send()
	}()
}

// got reports whether ReplicateAsync gave member key.
func (f *fakePeers) got(member, key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.replicated[member], key)
}

func (f *fakePeers) Fetch(_ context.Context, m cluster.Member, refs []*limiterv1.KeyRef) ([]*limiterv1.KeyState, error) {
	f.mu.Lock()
	down := f.noFetch[m.Name]
	f.mu.Unlock()
	if down {
		return nil, errFakeDown
	}
	var out []*limiterv1.KeyState
	for _, r := range refs {
		if st, ok := f.peers[m.Name].State(r.GetPolicy(), r.GetKey()); ok {
			out = append(out, &limiterv1.KeyState{Policy: r.GetPolicy(), Key: r.GetKey(), State: st})
		}
	}
	return out, nil
}

// Forward decides on the member's limiter, as the member would when the
// key's owner (this node) does not answer it either.
func (f *fakePeers) Forward(ctx context.Context, m cluster.Member, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
	f.mu.Lock()
	down := f.noForward[m.Name]
	if !down {
		f.forwarded = append(f.forwarded, m.Name)
	}
	f.mu.Unlock()
	if down {
		return nil, errFakeDown
	}
	res, err := f.peers[m.Name].Allow(ctx, limiter.Request{Policy: req.GetPolicy(), Key: req.GetKey(), Hits: req.GetHits()})
	if err != nil {
		return nil, err
	}
	return toDecision(res), nil
}

func (f *fakePeers) ForwardWithin(ctx context.Context, m cluster.Member, req *limiterv1.AllowRequest, _ time.Duration) (*limiterv1.PeerDecision, error) {
	return f.Forward(ctx, m, req)
}

func newTestLimiter(t *testing.T, p policy.Policy, now func() time.Time) *limiter.Limiter {
	t.Helper()
	cfg := limiter.DefaultConfig()
	cfg.Now = now
	cfg.Policies = []policy.Policy{p}
	cfg.Replicate = true
	lim, err := limiter.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	return lim
}

// startFakeCluster starts node x of a ring {x, r, s} and returns it with
// its peers and a key that x owns with r as its first replica: the member
// that decided the key while x was away.
func startFakeCluster(t *testing.T, p policy.Policy, opts ...func(*ClusterConfig)) (*Cluster, *fakePeers, string) {
	t.Helper()
	now := func() time.Time { return t0 }
	var ms []cluster.Member
	for _, n := range []string{"x", "r", "s"} {
		ms = append(ms, cluster.Member{Name: n, GRPCAddr: n + ":1", Alive: true})
	}
	f := &fakePeers{ring: cluster.NewRing("x", ms, nil), peers: map[string]*limiter.Limiter{},
		noFetch: map[string]bool{}, noForward: map[string]bool{}}
	f.peers["r"] = newTestLimiter(t, p, now)
	f.peers["s"] = newTestLimiter(t, p, now)
	key := keysReplicatedTo(f, "r", 1)[0]
	lim := newTestLimiter(t, p, now)
	cfg := DefaultConfig()
	cfg.Decider = lim
	cfg.Now = now
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := DefaultClusterConfig()
	ccfg.SyncTimeout = time.Millisecond // retries after 4ms
	for _, o := range opts {
		o(&ccfg)
	}
	c := NewCluster(svc, lim, nil, ccfg)
	c.Start(f, svc.NewGRPCServer())
	c.Alone()
	t.Cleanup(c.Stop)
	return c, f, key
}

// TestUnmergedOwnerLetsReplicaDecide: an owner back from an absence whose
// fetch of a key's state misses the member that counted the key meanwhile
// must not decide on its own stale copy, even when another member did
// answer. It hands the call to that replica, and merges the copy once the
// replica answers. (Deciding on the partial merge was the flaky end of
// cmd/limiterd's TestKill9OwnerOverAdmission.)
func TestUnmergedOwnerLetsReplicaDecide(t *testing.T) {
	p := policy.Policy{Name: "hundred", Limit: 100, Window: time.Minute, Buckets: 60}
	c, f, key := startFakeCluster(t, p)
	ctx := context.Background()
	// r decided the key up to its limit while x was away; s knows nothing.
	if res, err := f.peers["r"].Allow(ctx, limiter.Request{Policy: p.Name, Key: key, Hits: 100}); err != nil || !res.Allowed {
		t.Fatalf("r: Allow(100 hits) = %+v, %v", res, err)
	}
	f.noFetch["r"] = true

	res, err := c.allow(ctx, &limiterv1.AllowRequest{Policy: p.Name, Key: key})
	if err != nil {
		t.Fatalf("allow() error = %v", err)
	}
	if res.Allowed {
		t.Errorf("allow() on the unmerged owner = allowed, remaining %d; want denied by r, which holds 100 hits", res.Remaining)
	}
	if f.forwarded == nil || f.forwarded[0] != "r" {
		t.Errorf("calls forwarded to %v, want r", f.forwarded)
	}

	// Once r answers, x merges r's count and decides the key itself.
	f.mu.Lock()
	f.noFetch["r"] = false
	f.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for !c.lim.Synced(p.Name, key, 1) {
		if time.Now().After(deadline) {
			t.Fatal("x never merged the key once r answered")
		}
		if _, err := c.allow(ctx, &limiterv1.AllowRequest{Policy: p.Name, Key: key, DryRun: true}); err != nil {
			t.Fatalf("allow(dry run) error = %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	f.mu.Lock()
	n := len(f.forwarded)
	f.mu.Unlock()
	res, err = c.allow(ctx, &limiterv1.AllowRequest{Policy: p.Name, Key: key})
	if err != nil || res.Allowed || res.Degraded {
		t.Errorf("allow() after the merge = %+v, %v; want denied by x itself, not degraded", res, err)
	}
	if len(f.forwarded) != n {
		t.Errorf("a call after the merge was forwarded to %v", f.forwarded[n:])
	}
}

// TestUnmergedOwnerDecidesWhenNoReplicaCan: when the replicas cannot take
// the call either, the owner decides on its own copy (its last resort, not
// degraded: the owner decided) instead of failing the call.
func TestUnmergedOwnerDecidesWhenNoReplicaCan(t *testing.T) {
	p := policy.Policy{Name: "hundred", Limit: 100, Window: time.Minute, Buckets: 60}
	c, f, key := startFakeCluster(t, p)
	for _, m := range []string{"r", "s"} {
		f.noFetch[m], f.noForward[m] = true, true
	}
	res, err := c.allow(context.Background(), &limiterv1.AllowRequest{Policy: p.Name, Key: key})
	if err != nil || !res.Allowed || res.Degraded || res.Remaining != 99 {
		t.Errorf("allow() with no peer reachable = %+v, %v; want allowed on local state, remaining 99, not degraded", res, err)
	}
	if c.lim.Synced(p.Name, key, 1) {
		t.Error("the key is marked merged though no peer answered")
	}
}

// TestStuckReplicaHoldsUpNoOther: while a write of replica updates to one
// member hangs, the other member keeps getting its updates, and the stuck
// member gets the keys it missed once it takes writes again.
func TestStuckReplicaHoldsUpNoOther(t *testing.T) {
	c, f, toR := startFakeCluster(t, policy.Policy{Name: "default", Limit: 100, Window: time.Minute})
	toS := keysReplicatedTo(f, "s", 1)[0]
	stuck := make(chan struct{})
	unstick := sync.OnceFunc(func() { close(stuck) })
	t.Cleanup(unstick) // before c.Stop, which waits for the replication loop
	f.mu.Lock()
	f.replBlock = map[string]chan struct{}{"r": stuck}
	f.mu.Unlock()
	ctx := context.Background()
	allow := func(key string) {
		t.Helper()
		if _, err := c.allow(ctx, &limiterv1.AllowRequest{Key: key}); err != nil {
			t.Fatalf("allow(%s) = %v", key, err)
		}
	}
	allow(toR)
	waitFor(t, 5*time.Second, "the write to r to hang", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.hung > 0
	})
	allow(toS)
	waitFor(t, 5*time.Second, "s to get its update past the stuck r", func() bool { return f.got("s", toS) })
	unstick()
	waitFor(t, 5*time.Second, "r to get its key once it takes writes", func() bool { return f.got("r", toR) })
}

// roundClock is a ClusterConfig.Now that a test moves on.
type roundClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *roundClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *roundClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// keysReplicatedTo returns n keys that x owns with member as the replica.
func keysReplicatedTo(f *fakePeers, member string, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		k := fmt.Sprintf("%s-%d", member, i)
		if reps := f.ring.Replicas(k, 2); reps[0].Name == "x" && reps[1].Name == member {
			out = append(out, k)
		}
	}
	return out
}

// TestReplicationRidesOnDecisions: a decision made an interval or more
// after the last replication round runs the next round itself, with every
// key changed since, so a node that is deciding calls needs no timer to
// replicate. The interval is an hour, so replicateLoop's timer cannot be
// what sends them.
func TestReplicationRidesOnDecisions(t *testing.T) {
	clk := &roundClock{now: t0}
	c, f, _ := startFakeCluster(t, policy.Policy{Name: "default", Limit: 100, Window: time.Minute}, func(cfg *ClusterConfig) {
		cfg.ReplicationInterval = time.Hour
		cfg.Now = clk.Now
	})
	keys := keysReplicatedTo(f, "r", 3)
	allow := func(key string) {
		t.Helper()
		if _, err := c.allow(context.Background(), &limiterv1.AllowRequest{Key: key}); err != nil {
			t.Fatalf("allow(%s) = %v", key, err)
		}
	}
	allow(keys[0]) // no round yet: one is due at once
	waitFor(t, 5*time.Second, "the first decision's round to reach r", func() bool { return f.got("r", keys[0]) })
	allow(keys[1])
	if got, want := c.lastRound.Load(), t0.UnixNano(); got != want {
		t.Fatalf("a decision within the interval ran a round at %v; the last should be at %v", time.Unix(0, got), t0)
	}
	clk.add(time.Hour)
	allow(keys[2])
	waitFor(t, 5*time.Second, "the round an interval later to send both keys", func() bool {
		return f.got("r", keys[1]) && f.got("r", keys[2])
	})
}

// TestReplicationInLull: a key changed within an interval of the last
// round, with no decision after it, is sent by replicateLoop's timer,
// lullRounds intervals after the last round.
func TestReplicationInLull(t *testing.T) {
	clk := &roundClock{now: t0}
	c, f, _ := startFakeCluster(t, policy.Policy{Name: "default", Limit: 100, Window: time.Minute}, func(cfg *ClusterConfig) {
		cfg.ReplicationInterval = 5 * time.Millisecond
		cfg.Now = clk.Now
	})
	keys := keysReplicatedTo(f, "r", 2)
	for _, k := range keys {
		if _, err := c.allow(context.Background(), &limiterv1.AllowRequest{Key: k}); err != nil {
			t.Fatalf("allow(%s) = %v", k, err)
		}
	}
	clk.add(5 * time.Millisecond)
	waitFor(t, 5*time.Second, "the timer's round to send the last key", func() bool { return f.got("r", keys[1]) })
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}
