// Package testcluster starts in-process limiterd clusters for tests of
// other packages (the client, the load generator): n daemons on loopback
// with ports chosen by the OS, memberlist timings shortened, /metrics
// served, all stopped at the test's cleanup.
package testcluster

import (
	"bufio"
	"context"
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
)

// Start runs n nodes named node-0 .. node-n-1, each configured by mods
// after the defaults here, and waits up to 10s until every node sees all n.
func Start(t testing.TB, n int, mods ...func(*daemon.Config)) []*daemon.Main {
	t.Helper()
	var nodes []*daemon.Main
	for i := range n {
		cfg := daemon.DefaultConfig()
		cfg.NodeName = fmt.Sprintf("node-%d", i)
		cfg.GRPCAddr = "127.0.0.1:0"
		cfg.HTTPAddr = "127.0.0.1:0"
		cfg.GossipAddr = "127.0.0.1:0"
		cfg.DataDir = t.TempDir()
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
		for _, mod := range mods {
			mod(&cfg)
		}
		m := daemon.New(cfg)
		if err := m.Run(context.Background()); err != nil {
			t.Fatalf("node %d: Run() = %v", i, err)
		}
		t.Cleanup(func() { m.Close() })
		nodes = append(nodes, m)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !allSee(nodes, n) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until every node sees %d members", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nodes
}

func allSee(nodes []*daemon.Main, n int) bool {
	for _, m := range nodes {
		if m.Node().Ring().Len() != n {
			return false
		}
	}
	return true
}

// Forwarded sums limiterd_forwarded_total{kind="allow"} over the nodes'
// /metrics: the Allow calls one node sent on to another.
func Forwarded(t testing.TB, nodes []*daemon.Main) float64 {
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
