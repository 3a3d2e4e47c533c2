package client

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/cluster"
	"github.com/limiterd/limiterd/internal/daemon"
	"github.com/limiterd/limiterd/internal/policy"
)

// startNodes runs an n-node cluster in this process on loopback, with
// /metrics served, and waits until every node sees all n.
func startNodes(t *testing.T, n int) []*daemon.Main {
	t.Helper()
	var nodes []*daemon.Main
	for i := range n {
		cfg := daemon.DefaultConfig()
		cfg.NodeName = fmt.Sprintf("node-%d", i)
		cfg.GRPCAddr = "127.0.0.1:0"
		cfg.HTTPAddr = "127.0.0.1:0"
		cfg.GossipAddr = "127.0.0.1:0"
		cfg.DataDir = t.TempDir()
		cfg.Policies = []policy.Policy{policy.Default(), tiny, {Name: "hundred", Limit: 100, Window: time.Minute}}
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.DrainTimeout = 2 * time.Second
		cfg.Cluster = func(c *cluster.Config) {
			c.GossipInterval = 20 * time.Millisecond
			c.ProbeInterval = 100 * time.Millisecond
			c.ProbeTimeout = 50 * time.Millisecond
			c.PushPullInterval = 200 * time.Millisecond
			c.ReconnectInterval = 100 * time.Millisecond
		}
		if i > 0 {
			cfg.Join = []string{nodes[0].GossipAddr()}
		}
		m := daemon.New(cfg)
		if err := m.Run(testCtx(t)); err != nil {
			t.Fatalf("node %d: Run() = %v", i, err)
		}
		t.Cleanup(func() { m.Close() })
		nodes = append(nodes, m)
	}
	waitUntil(t, "every node sees every member", func() bool {
		for _, m := range nodes {
			if m.Node().Ring().Len() != n {
				return false
			}
		}
		return true
	})
	return nodes
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

// forwarded sums limiterd_forwarded_total{kind="allow"} over nodes.
func forwarded(t *testing.T, nodes []*daemon.Main) float64 {
	t.Helper()
	var sum float64
	for _, m := range nodes {
		res, err := http.Get("http://" + m.HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatalf("scrape %s: %v", m.HTTPAddr(), err)
		}
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "limiterd_forwarded_total{") && strings.Contains(line, `kind="allow"`) {
				f := strings.Fields(line)
				v, err := strconv.ParseFloat(f[len(f)-1], 64)
				if err != nil {
					t.Fatalf("metric line %q: %v", line, err)
				}
				sum += v
			}
		}
		res.Body.Close()
	}
	return sum
}

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
