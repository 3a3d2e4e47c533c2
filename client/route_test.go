package client

import (
	"fmt"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/daemon"
	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/testcluster"
)

// startNodes runs an n-node cluster with the client tests' policies.
func startNodes(t *testing.T, n int) []*daemon.Main {
	t.Helper()
	return testcluster.Start(t, n, func(c *daemon.Config) {
		c.Policies = []policy.Policy{policy.Default(), tiny, {Name: "hundred", Limit: 100, Window: time.Minute}}
	})
}

// waitUntil polls cond every 10ms for up to 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func forwarded(t *testing.T, nodes []*daemon.Main) float64 { return testcluster.Forwarded(t, nodes) }

func TestRoutingSendsKeysToOwners(t *testing.T) {
	nodes := startNodes(t, 3)
	ctx := testCtx(t)
	keys := make([]string, 30)
	for i := range keys {
		keys[i] = fmt.Sprintf("route-%d", i)
	}

	// Without routing, calls to node 0 for other nodes' keys are forwarded:
	// the metric this test reads does see forwarding.
	plain := newClient(t, nodes[0].GRPCAddr())
	before := forwarded(t, nodes)
	for _, k := range keys {
		if _, err := plain.Allow(ctx, k, Policy("hundred")); err != nil {
			t.Fatalf("Allow(%s) = %v", k, err)
		}
	}
	if d := forwarded(t, nodes) - before; d == 0 {
		t.Fatalf("no call forwarded without routing; want about 2/3 of %d", len(keys))
	}

	routed := newClient(t, nodes[0].GRPCAddr(), WithRouting(50*time.Millisecond))
	waitUntil(t, "the client routes every key to a ready owner", func() bool {
		for _, k := range keys {
			if routed.LimiterFor(k) == routed.Limiter() {
				return false
			}
		}
		return true
	})
	if err := routed.RoutingError(); err != nil {
		t.Fatalf("RoutingError() = %v", err)
	}
	before = forwarded(t, nodes)
	for _, k := range keys {
		d, err := routed.Allow(ctx, k, Policy("hundred"))
		if err != nil {
			t.Fatalf("routed Allow(%s) = %v", k, err)
		}
		// The plain client's call counted too: the owner holds the key's
		// one state, whichever way the calls came.
		if !d.Allowed || d.Remaining != 98 {
			t.Errorf("routed Allow(%s) = allowed %t, remaining %d; want allowed, 98", k, d.Allowed, d.Remaining)
		}
	}
	if d := forwarded(t, nodes) - before; d != 0 {
		t.Errorf("%v calls forwarded with routing, want 0", d)
	}

	// A node goes away: calls for its keys still succeed, through the
	// target or the new owner.
	gone := nodes[2].Node().Name()
	var itsKeys []string
	for _, k := range keys {
		if m, _ := nodes[0].Node().Owner(k); m.Name == gone {
			itsKeys = append(itsKeys, k)
		}
	}
	if len(itsKeys) == 0 {
		t.Fatalf("no key of %d owned by %s", len(keys), gone)
	}
	if err := nodes[2].Close(); err != nil {
		t.Fatalf("Close(%s) = %v", gone, err)
	}
	for range 3 {
		for _, k := range itsKeys {
			if _, err := routed.Allow(ctx, k, Policy("hundred")); err != nil {
				t.Errorf("Allow(%s) after its owner left = %v", k, err)
			}
		}
	}
}

// TestRoutingSingleNode checks that a routing client of a node without a
// cluster (no member addresses) sends everything to the target.
func TestRoutingSingleNode(t *testing.T) {
	addr := startDaemon(t, tiny)
	c := newClient(t, addr, WithRouting(20*time.Millisecond))
	ctx := testCtx(t)
	for i := range 5 {
		d, err := c.Allow(ctx, "solo", Policy("tiny"))
		if err != nil {
			t.Fatalf("Allow() = %v", err)
		}
		if want := i < 2; d.Allowed != want {
			t.Errorf("call %d: allowed %t, want %t", i, d.Allowed, want)
		}
	}
	waitUntil(t, "the member list was read", func() bool { return c.router.routes.Load() != nil })
	if err := c.RoutingError(); err != nil {
		t.Errorf("RoutingError() = %v", err)
	}
	if c.LimiterFor("solo") != c.Limiter() {
		t.Error("LimiterFor() routed on a single node with no member address")
	}
}

// TestRoutingListMembersRefused checks that a member list the target
// refuses leaves the client on the target, with the reason reported.
func TestRoutingListMembersRefused(t *testing.T) {
	c := newClient(t, deadAddr(t), WithRouting(20*time.Millisecond))
	waitUntil(t, "the refresh failed", func() bool { return c.RoutingError() != nil })
	if c.LimiterFor("k") != c.Limiter() {
		t.Error("LimiterFor() routed without a member list")
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
}
