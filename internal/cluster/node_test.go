package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := func(c *Config) {}
	tests := []struct {
		name  string
		tune  func(*Config)
		match string // "" means valid
	}{
		{"default plus required", ok, ""},
		{"no name", func(c *Config) { c.NodeName = "" }, "NodeName"},
		{"no grpc", func(c *Config) { c.GRPCAddr = "" }, "GRPCAddr"},
		{"zero replicas", func(c *Config) { c.Replicas = 0 }, "Replicas"},
		{"zero batch", func(c *Config) { c.BatchSize = 0 }, "BatchSize"},
		{"negative wait", func(c *Config) { c.BatchWait = -1 }, "BatchWait"},
		{"zero wait ok", func(c *Config) { c.BatchWait = 0 }, ""},
		{"bad key", func(c *Config) { c.GossipKey = []byte("short") }, "GossipKey"},
		{"good key", func(c *Config) { c.GossipKey = make([]byte, 32) }, ""},
		{"hostname gossip", func(c *Config) { c.GossipAddr = "localhost:7946" }, "IP address"},
		{"bad advertise", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:x" }, "AdvertiseAddr"},
		{"nil logger", func(c *Config) { c.Logger = nil }, "Logger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.NodeName, c.GRPCAddr = "a", "127.0.0.1:1"
			tt.tune(&c)
			err := c.Validate()
			switch {
			case tt.match == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.match != "" && (err == nil || !strings.Contains(err.Error(), tt.match)):
				t.Errorf("Validate() = %v, want error mentioning %q", err, tt.match)
			}
		})
	}
}

// ownersAgree reports whether every node names the same owner for keys
// key-0..key-(n-1), and returns that mapping.
func ownersAgree(nodes []*testNode, n int) (map[string]string, bool) {
	owners := make(map[string]string, n)
	for i := range n {
		key := fmt.Sprintf("key-%d", i)
		for j, tn := range nodes {
			m, self := tn.Owner(key)
			if self != (m.Name == tn.Name()) {
				return nil, false
			}
			if j == 0 {
				owners[key] = m.Name
			} else if owners[key] != m.Name {
				return nil, false
			}
		}
	}
	return owners, true
}

func TestClusterFormsAndAgrees(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	owners, ok := ownersAgree(nodes, 1000)
	if !ok {
		t.Fatal("nodes disagree about owners")
	}
	seen := map[string]int{}
	for _, o := range owners {
		seen[o]++
	}
	if len(seen) != 3 {
		t.Errorf("owners = %v, want all 3 nodes to own keys", seen)
	}
	for _, tn := range nodes {
		ms := tn.Members()
		if len(ms) != 3 {
			t.Fatalf("%s Members() has %d, want 3", tn.Name(), len(ms))
		}
		for _, m := range ms {
			if !m.Alive || m.GRPCAddr == "" || m.GossipAddr == "" {
				t.Errorf("%s sees member %+v, want alive with addresses", tn.Name(), m)
			}
		}
		for _, m := range tn.Ring().Members() {
			want := nodes[m.Name[len(m.Name)-1]-'1']
			if m.GRPCAddr != want.cfg.GRPCAddr || m.GossipAddr != want.GossipAddr() {
				t.Errorf("%s ring has %+v, want addresses %s / %s", tn.Name(), m, want.cfg.GRPCAddr, want.GossipAddr())
			}
		}
		reps := tn.Replicas("key-1", tn.ReplicaCount())
		if len(reps) != 2 || reps[0].Name != owners["key-1"] || reps[1].Name == reps[0].Name {
			t.Errorf("%s Replicas(key-1) = %v, want owner %s and one other", tn.Name(), reps, owners["key-1"])
		}
	}
}

func TestClusterLeaveMovesOnlyLeaversKeys(t *testing.T) {
	var mu sync.Mutex
	var changes []Change // seen by node-1
	nodes := startCluster(t, 3, func(c *Config) {
		if c.NodeName == "node-1" {
			c.OnChange = func(ch Change) { mu.Lock(); changes = append(changes, ch); mu.Unlock() }
		}
	})
	before, ok := ownersAgree(nodes, 1000)
	if !ok {
		t.Fatal("nodes disagree about owners before leave")
	}
	leaver := nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := leaver.Leave(ctx); err != nil {
		t.Fatalf("Leave() = %v", err)
	}
	if _, self := leaver.Owner("anything"); self {
		t.Error("leaver still owns keys after Leave")
	}
	if err := leaver.Leave(ctx); err != nil {
		t.Errorf("second Leave() = %v, want nil", err)
	}
	waitConverged(t, nodes[0], nodes[1])
	if leaver.Ring().Len() != 2 {
		t.Errorf("leaver's ring has %d members, want the 2 that stay", leaver.Ring().Len())
	}
	after, ok := ownersAgree(nodes, 1000)
	if !ok {
		t.Fatal("nodes disagree about owners after leave")
	}
	for key, was := range before {
		now := after[key]
		if was == leaver.Name() && now == leaver.Name() {
			t.Fatalf("%s still owned by the leaver", key)
		}
		if was != leaver.Name() && now != was {
			t.Fatalf("%s moved from %s to %s though its owner stayed", key, was, now)
		}
	}
	waitFor(t, 5*time.Second, "node-1 OnChange for the leaver", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, ch := range changes {
			if ch.Kind == MemberLeft && ch.Member.Name == leaver.Name() {
				if ch.Before.Len() != 3 || ch.After.Len() != 2 {
					t.Errorf("Change rings have %d -> %d members, want 3 -> 2", ch.Before.Len(), ch.After.Len())
				}
				return true
			}
		}
		return false
	})
}

func TestClusterGossipKey(t *testing.T) {
	key := []byte("0123456789abcdef")
	nodes := startCluster(t, 2, func(c *Config) { c.GossipKey = key })
	stranger := startNode(t, "stranger", nil) // no key
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := stranger.Join(ctx, nodes[0].GossipAddr()); err == nil {
		t.Error("node without the gossip key joined an encrypted cluster")
	}
	if got := nodes[0].Ring().Len(); got != 2 {
		t.Errorf("encrypted cluster has %d members, want 2", got)
	}
}

func TestPolicyConvergence(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]PolicyEntry{}
	tune := func(c *Config) {
		name := c.NodeName
		c.OnPolicy = func(e PolicyEntry) { mu.Lock(); seen[name] = append(seen[name], e); mu.Unlock() }
	}
	nodes := startCluster(t, 3, tune)
	has := func(tn *testNode, name, data string, version uint64) bool {
		e, ok := tn.Policy(name)
		return ok && string(e.Data) == data && e.Version == version
	}
	allHave := func(name, data string, version uint64) func() bool {
		return func() bool {
			for _, tn := range nodes {
				if !has(tn, name, data, version) {
					return false
				}
			}
			return true
		}
	}

	if err := nodes[0].SetPolicy("uploads", []byte("limit=100"), 1); err != nil {
		t.Fatalf("SetPolicy() = %v", err)
	}
	waitFor(t, 5*time.Second, "uploads v1 everywhere", allHave("uploads", "limit=100", 1))

	if err := nodes[1].SetPolicy("uploads", []byte("limit=200"), 2); err != nil {
		t.Fatalf("SetPolicy(v2) = %v", err)
	}
	waitFor(t, 5*time.Second, "uploads v2 everywhere", allHave("uploads", "limit=200", 2))

	if err := nodes[2].SetPolicy("uploads", []byte("limit=1"), 1); err != ErrStaleVersion {
		t.Errorf("SetPolicy(stale) = %v, want ErrStaleVersion", err)
	}
	if err := nodes[2].SetPolicy("uploads", []byte("limit=200"), 2); err != nil {
		t.Errorf("SetPolicy(same entry) = %v, want nil", err)
	}
	if err := nodes[0].SetPolicy("gone", []byte("x"), 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "gone v1 everywhere", allHave("gone", "x", 1))
	if err := nodes[2].DeletePolicy("gone", 2); err != nil {
		t.Fatalf("DeletePolicy() = %v", err)
	}
	waitFor(t, 5*time.Second, "gone deleted everywhere", func() bool {
		for _, tn := range nodes {
			if _, ok := tn.Policy("gone"); ok {
				return false
			}
		}
		return true
	})

	// A node that joins now saw none of the broadcasts; push/pull on join
	// must bring it the map, tombstone included.
	late := startNode(t, "late", tune)
	joinTo(t, late, nodes[1])
	waitFor(t, 5*time.Second, "late joiner to converge", func() bool {
		_, gone := late.Policy("gone")
		return has(late, "uploads", "limit=200", 2) && !gone
	})
	if err := late.SetPolicy("gone", []byte("resurrected"), 2); err != ErrStaleVersion {
		t.Errorf("late SetPolicy(gone, v2) = %v, want ErrStaleVersion (tombstone v2 wins)", err)
	}
	if got := late.Policies(); len(got) != 1 || got[0].Name != "uploads" {
		t.Errorf("late Policies() = %v, want just uploads", got)
	}
	waitFor(t, 5*time.Second, "OnPolicy on the late joiner", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen["late"]) >= 2 // uploads and the gone tombstone
	})
}

func TestClusterCrashedNodeIsDropped(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	before, _ := ownersAgree(nodes, 300)
	crashed := nodes[1]
	if err := crashed.Shutdown(); err != nil { // no Leave: looks like a crash
		t.Fatal(err)
	}
	survivors := []*testNode{nodes[0], nodes[2]}
	// Failure detection takes a probe plus memberlist's suspicion timeout.
	waitFor(t, 15*time.Second, "survivors to drop the crashed node", func() bool {
		return nodes[0].Ring().Len() == 2 && nodes[2].Ring().Len() == 2
	})
	after, ok := ownersAgree(survivors, 300)
	if !ok {
		t.Fatal("survivors disagree about owners")
	}
	for key, was := range before {
		if was != crashed.Name() && after[key] != was {
			t.Fatalf("%s moved from %s to %s, though its owner survived", key, was, after[key])
		}
		if after[key] == crashed.Name() {
			t.Fatalf("%s still owned by the crashed node", key)
		}
	}
}

// countHandler counts records whose attributes include component=memberlist.
type countHandler struct {
	mu    *sync.Mutex
	n     *int
	attrs []slog.Attr
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	for _, a := range h.attrs {
		if a.Key == "component" && a.Value.String() == "memberlist" {
			h.mu.Lock()
			*h.n++
			h.mu.Unlock()
		}
	}
	return nil
}
func (h countHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(slices.Clone(h.attrs), as...)
	return h
}
func (h countHandler) WithGroup(string) slog.Handler { return h }

func TestMemberlistLogsGoThroughSlog(t *testing.T) {
	var mu sync.Mutex
	var n int
	logger := slog.New(countHandler{mu: &mu, n: &n})
	startCluster(t, 2, func(c *Config) { c.Logger = logger })
	mu.Lock()
	defer mu.Unlock()
	if n == 0 {
		t.Error("no memberlist log records reached Config.Logger")
	}
}
