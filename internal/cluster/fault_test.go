package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

func TestFaultsCut(t *testing.T) {
	var f Faults
	f.register("a", "127.0.0.1:1001", "127.0.0.1:2001")
	f.register("b", "127.0.0.1:1002", "127.0.0.1:2002")
	f.register("c", "127.0.0.1:1003", "127.0.0.1:2003")
	if f.Cut("a", "b") {
		t.Fatal("Cut() before any partition = true, want false")
	}
	f.Partition([]string{"a"}, []string{"127.0.0.1:1002", "c"})
	tests := []struct {
		name string
		x, y string
		want bool
	}{
		{"names across", "a", "b", true},
		{"names same side", "b", "c", false},
		{"self", "a", "a", false},
		{"gossip address across", "a", "127.0.0.1:1003", true},
		{"grpc address across", "127.0.0.1:2001", "127.0.0.1:2002", true},
		{"grouped by address, asked by name", "b", "a", true},
		{"addresses same side", "127.0.0.1:1002", "127.0.0.1:2003", false},
		{"unknown node", "a", "d", false},
		{"unknown address", "127.0.0.1:9", "a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := f.Cut(tt.x, tt.y); got != tt.want {
				t.Errorf("Cut(%q, %q) = %v, want %v", tt.x, tt.y, got, tt.want)
			}
		})
	}
	f.Heal()
	if f.Cut("a", "b") {
		t.Error("Cut() after Heal = true, want false")
	}
}

// TestFaultsPartitionAndHeal cuts one node off: both sides drop the other
// from their rings, forwards across the cut fail fast, and after Heal and
// a Join the cluster is whole again.
func TestFaultsPartitionAndHeal(t *testing.T) {
	faults := new(Faults)
	nodes := startCluster(t, 3, func(c *Config) { c.Faults = faults })
	lone, rest := nodes[0], nodes[1:]
	ctx := context.Background()
	req := &limiterv1.AllowRequest{Key: "k"}

	faults.Partition([]string{lone.Name()}, []string{rest[0].Name(), rest[1].Self().GRPCAddr})
	start := time.Now()
	_, err := rest[0].Forward(ctx, lone.Self(), req)
	if !errors.Is(err, ErrOwnerUnavailable) {
		t.Fatalf("Forward() across the partition: %v, want ErrOwnerUnavailable", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Forward() across the partition took %v, want it to fail fast", d)
	}
	if _, err := rest[0].Forward(ctx, rest[1].Self(), req); err != nil {
		t.Fatalf("Forward() within a side: %v", err)
	}
	waitFor(t, 10*time.Second, "both sides to drop each other", func() bool {
		return lone.Ring().Len() == 1 && rest[0].Ring().Len() == 2 && rest[1].Ring().Len() == 2
	})
	// Keep the partition well past memberlist's retransmits of the dead
	// messages (a few gossip rounds here): healing then relies on the
	// reconnect loops, not on a stray broadcast crossing over. This wait is
	// the scenario's length, not a synchronisation.
	time.Sleep(1500 * time.Millisecond)

	faults.Heal()
	if _, err := rest[0].Forward(ctx, lone.Self(), req); err != nil {
		t.Fatalf("Forward() after Heal: %v", err)
	}
	// The reconnect loops join the lost members again (without them memberlist
	// never re-merges after a partition this long).
	waitConverged(t, nodes...)
}
