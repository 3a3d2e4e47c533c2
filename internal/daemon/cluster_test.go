package daemon

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/limiterd/limiterd/internal/cluster"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// fastGossip shortens memberlist's timings for loopback tests.
func fastGossip(c *cluster.Config) {
	c.GossipInterval = 20 * time.Millisecond
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = 50 * time.Millisecond
	c.PushPullInterval = 200 * time.Millisecond
	c.ReconnectInterval = 100 * time.Millisecond
}

var testPolicies = []policy.Policy{
	policy.Default(),
	{Name: "hundred", Limit: 100, Window: time.Minute},
	{Name: "capped", Limit: 1000, Window: time.Minute, MaxConcurrent: 2, LeaseTTL: time.Minute},
}

// startCluster starts n nodes in this process on loopback and waits until
// every node sees all n.
func startCluster(t *testing.T, n int, mods ...func(*Config)) []*Main {
	t.Helper()
	var nodes []*Main
	for i := range n {
		m := startMain(t, func(c *Config) {
			c.NodeName = fmt.Sprintf("node-%d", i)
			c.GossipAddr = "127.0.0.1:0"
			c.HTTPAddr = ""
			c.Policies = testPolicies
			c.Cluster = fastGossip
			c.DrainTimeout = 5 * time.Second
			if i > 0 {
				c.Join = []string{nodes[0].GossipAddr()}
			}
			for _, mod := range mods {
				mod(c)
			}
		})
		nodes = append(nodes, m)
	}
	waitRing(t, nodes, n)
	return nodes
}

// waitRing waits up to 10s until every node's ring has n members.
func waitRing(t *testing.T, nodes []*Main, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("every node sees %d members", n), func() bool {
		for _, m := range nodes {
			if m.Node().Ring().Len() != n {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func clients(t *testing.T, nodes []*Main) []limiterv1.LimiterClient {
	var cs []limiterv1.LimiterClient
	for _, m := range nodes {
		cs = append(cs, limiterv1.NewLimiterClient(dial(t, m.GRPCAddr())))
	}
	return cs
}

func TestClusterExactLimitFromEveryNode(t *testing.T) {
	nodes := startCluster(t, 3)
	cs := clients(t, nodes)
	var allowed, denied atomic.Int64
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cs[i%3]
			for range 10 {
				res, err := c.Allow(context.Background(), &limiterv1.AllowRequest{Key: "shared", Policy: "hundred"})
				if err != nil {
					t.Errorf("Allow() error = %v", err)
					return
				}
				if res.GetDegraded() {
					t.Errorf("degraded decision with stable membership: %v", res)
				}
				if res.GetAllowed() {
					allowed.Add(1)
				} else {
					denied.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 100 || denied.Load() != 200 {
		t.Errorf("allowed %d, denied %d; want exactly 100 and 200", allowed.Load(), denied.Load())
	}
}

func TestClusterLeasesFromAnyNode(t *testing.T) {
	nodes := startCluster(t, 3)
	cs := clients(t, nodes)
	ctx := context.Background()
	owner, _ := nodes[0].Node().Owner("lease-key")
	var other int
	for i, m := range nodes {
		if m.Node().Name() != owner.Name {
			other = i
		}
	}
	var leases []string
	for i := range 2 {
		res, err := cs[(other+i)%3].Allow(ctx, &limiterv1.AllowRequest{Key: "lease-key", Policy: "capped"})
		if err != nil || !res.GetAllowed() || res.GetLeaseId() == "" {
			t.Fatalf("Allow() = %v, %v, want a lease", res, err)
		}
		leases = append(leases, res.GetLeaseId())
	}
	if res, _ := cs[other].Allow(ctx, &limiterv1.AllowRequest{Key: "lease-key", Policy: "capped"}); res.GetCode() != 123 {
		t.Fatalf("third Allow() = %v, want 123", res)
	}
	// Release through a node that is not the owner.
	rel, err := cs[other].Release(ctx, &limiterv1.ReleaseRequest{LeaseId: leases[0]})
	if err != nil || rel.GetInFlight() != 1 {
		t.Fatalf("Release() via non-owner = %v, %v, want 1 in flight", rel, err)
	}
	if _, err := cs[(other+1)%3].Release(ctx, &limiterv1.ReleaseRequest{LeaseId: leases[0]}); err == nil {
		t.Errorf("second Release() of the same lease succeeded")
	}
}

func TestClusterPoliciesConverge(t *testing.T) {
	nodes := startCluster(t, 3)
	a := limiterv1.NewAdminClient(dial(t, nodes[1].GRPCAddr()))
	ctx := context.Background()
	_, err := a.CreatePolicy(ctx, &limiterv1.CreatePolicyRequest{Policy: &limiterv1.Policy{Name: "late", Limit: 3, Window: durationpb.New(time.Minute)}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every node knows policy late", func() bool {
		for _, m := range nodes {
			if _, ok := m.Limiter().Policy("late"); !ok {
				return false
			}
		}
		return true
	})
	// A node that joins afterwards learns it too.
	late := startMain(t, func(c *Config) {
		c.NodeName = "node-late"
		c.GossipAddr = "127.0.0.1:0"
		c.HTTPAddr = ""
		c.Policies = testPolicies
		c.Cluster = fastGossip
		c.Join = []string{nodes[2].GossipAddr()}
	})
	waitFor(t, 10*time.Second, "the late joiner knows policy late", func() bool {
		_, ok := late.Limiter().Policy("late")
		return ok
	})
	if _, err := a.DeletePolicy(ctx, &limiterv1.DeletePolicyRequest{Name: "late"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every node forgot policy late", func() bool {
		for _, m := range append(nodes, late) {
			if _, ok := m.Limiter().Policy("late"); ok {
				return false
			}
		}
		return true
	})
	members, err := a.ListMembers(ctx, &limiterv1.ListMembersRequest{})
	if err != nil || len(members.GetMembers()) != 4 {
		t.Errorf("ListMembers() = %v, %v, want 4", members, err)
	}
	// GetKey is answered by the key's owner from any node.
	c := limiterv1.NewLimiterClient(dial(t, nodes[0].GRPCAddr()))
	c.Allow(ctx, &limiterv1.AllowRequest{Key: "seen", Policy: "hundred", Hits: 7})
	info, err := a.GetKey(ctx, &limiterv1.GetKeyRequest{Policy: "hundred", Key: "seen"})
	if err != nil || info.GetKey().GetUsed() != 7 {
		t.Errorf("GetKey() = %v, %v, want 7 used", info, err)
	}
}

// TestClusterGracefulLeaveKeepsCounts stops the owner of a busy key; the
// survivors keep its count (hand-off), so the key stays at its limit.
func TestClusterGracefulLeaveKeepsCounts(t *testing.T) {
	nodes := startCluster(t, 3)
	owner, _ := nodes[0].Node().Owner("busy")
	var ownerIdx int
	for i, m := range nodes {
		if m.Node().Name() == owner.Name {
			ownerIdx = i
		}
	}
	survivor := nodes[(ownerIdx+1)%3]
	c := limiterv1.NewLimiterClient(dial(t, survivor.GRPCAddr()))
	ctx := context.Background()
	if res, err := c.Allow(ctx, &limiterv1.AllowRequest{Key: "busy", Policy: "hundred", Hits: 100}); err != nil || !res.GetAllowed() {
		t.Fatalf("Allow(100) = %v, %v", res, err)
	}
	if err := nodes[ownerIdx].Close(); err != nil {
		t.Fatalf("Close() of the owner: %v", err)
	}
	waitFor(t, 10*time.Second, "survivors drop the owner", func() bool {
		return survivor.Node().Ring().Len() == 2
	})
	res, err := c.Allow(ctx, &limiterv1.AllowRequest{Key: "busy", Policy: "hundred"})
	if err != nil || res.GetAllowed() {
		t.Fatalf("after the owner left: Allow() = %v, %v, want denied (count handed off)", res, err)
	}
}

// TestImmediateOnOwnerOnly checks which forwarded calls an owner decides
// on the batch's own goroutine: only those for keys it owns and has merged
// with its peers' copies. A cluster that forms from scratch has nothing to
// merge, the node that started alone included; after a member leaves, each
// key is merged before its next decision.
func TestImmediateOnOwnerOnly(t *testing.T) {
	nodes := startCluster(t, 3)
	cs := clients(t, nodes)
	owners := map[string]int{} // key -> index of its owner
	for i := range 60 {
		key := fmt.Sprintf("k-%d", i)
		for j, m := range nodes {
			if _, self := m.Node().Owner(key); self {
				owners[key] = j
			}
		}
	}
	req := func(key string) *limiterv1.AllowRequest { return &limiterv1.AllowRequest{Policy: "hundred", Key: key} }
	check := func(when string, live []int, want func(node, owner int) bool) {
		t.Helper()
		for _, j := range live {
			for key, owner := range owners {
				if got, want := nodes[j].glue.Immediate(req(key)), want(j, owner); got != want {
					t.Errorf("%s: node %d: Immediate(%s) = %v, want %v (owner: node %d)", when, j, key, got, want, owner)
				}
			}
		}
	}
	// Each node learns that its peers held no state in the background.
	waitFor(t, 5*time.Second, "every node to decide its own keys at once", func() bool {
		for key, owner := range owners {
			if !nodes[owner].glue.Immediate(req(key)) {
				return false
			}
		}
		return true
	})
	check("formed from scratch", []int{0, 1, 2}, func(node, owner int) bool { return node == owner })

	if err := nodes[2].Close(); err != nil {
		t.Fatalf("Close(node 2) = %v", err)
	}
	live := []int{0, 1}
	for key := range owners {
		for _, j := range live {
			if _, self := nodes[j].Node().Owner(key); self {
				owners[key] = j
			}
		}
	}
	waitFor(t, 5*time.Second, "nodes 0 and 1 to see node 2 leave", func() bool {
		for key, owner := range owners {
			if nodes[owner].glue.Immediate(req(key)) {
				return false
			}
		}
		return true
	})
	check("after a member left", live, func(int, int) bool { return false })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for key := range owners {
		if _, err := cs[1].Allow(ctx, req(key)); err != nil {
			t.Fatalf("Allow(%s) via node 1 = %v", key, err)
		}
	}
	check("after a call for each key", live, func(node, owner int) bool { return node == owner })
}
