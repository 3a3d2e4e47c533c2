package cluster

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"testing"
)

func members(names ...string) []Member {
	out := make([]Member, len(names))
	for i, n := range names {
		out[i] = Member{Name: n, GRPCAddr: n + ":1", Alive: true}
	}
	return out
}

func ownersOf(r *Ring, keys int) []string {
	out := make([]string, keys)
	for i := range out {
		m, _ := r.Owner(fmt.Sprintf("key-%d", i))
		out[i] = m.Name
	}
	return out
}

func TestRingBalance(t *testing.T) {
	const keys = 10000
	r := NewRing("", members("node-1", "node-2", "node-3"), nil)
	count := map[string]int{}
	for _, o := range ownersOf(r, keys) {
		count[o]++
	}
	for _, m := range r.Members() {
		share := float64(count[m.Name]) / keys
		if math.Abs(share-1.0/3) > 0.05 {
			t.Errorf("%s owns %.1f%% of keys, want 33.3%% ± 5%%", m.Name, 100*share)
		}
	}
	t.Logf("shares: %v", count)
}

func TestRingAddMovesOnlyToNewMember(t *testing.T) {
	const keys = 10000
	before := ownersOf(NewRing("", members("node-1", "node-2", "node-3"), nil), keys)
	after := ownersOf(NewRing("", members("node-1", "node-2", "node-3", "node-4"), nil), keys)
	moved := 0
	for i := range before {
		if before[i] == after[i] {
			continue
		}
		moved++
		if after[i] != "node-4" {
			t.Fatalf("key-%d moved from %s to %s, want only moves to node-4", i, before[i], after[i])
		}
	}
	if share := float64(moved) / keys; math.Abs(share-0.25) > 0.05 {
		t.Errorf("%.1f%% of keys moved, want 25%% ± 5%%", 100*share)
	}
}

func TestRingRemoveMovesOnlyRemovedKeys(t *testing.T) {
	const keys = 10000
	before := ownersOf(NewRing("", members("node-1", "node-2", "node-3", "node-4"), nil), keys)
	after := ownersOf(NewRing("", members("node-1", "node-2", "node-4"), nil), keys)
	moved := 0
	for i := range before {
		if before[i] != after[i] {
			moved++
			if before[i] != "node-3" {
				t.Fatalf("key-%d moved from %s to %s, want only node-3's keys to move", i, before[i], after[i])
			}
		} else if before[i] == "node-3" {
			t.Fatalf("key-%d still owned by removed node-3", i)
		}
	}
	if share := float64(moved) / keys; math.Abs(share-0.25) > 0.05 {
		t.Errorf("%.1f%% of keys moved, want 25%% ± 5%%", 100*share)
	}
}

// TestRingTrivialHash uses a hash whose scores can be worked out by hand:
// score = member's last digit * key's last digit mod 7.
func TestRingTrivialHash(t *testing.T) {
	hash := func(member, key string) uint64 {
		m := uint64(member[len(member)-1] - '0')
		k := uint64(key[len(key)-1] - '0')
		return m * k % 7
	}
	r := NewRing("n2", members("n1", "n2", "n3"), hash)
	tests := []struct {
		key      string
		owner    string
		self     bool
		replicas []string
	}{
		// k=1: scores n1=1 n2=2 n3=3
		{"k1", "n3", false, []string{"n3", "n2", "n1"}},
		// k=2: n1=2 n2=4 n3=6
		{"k2", "n3", false, []string{"n3", "n2", "n1"}},
		// k=3: n1=3 n2=6 n3=2
		{"k3", "n2", true, []string{"n2", "n1", "n3"}},
		// k=5: n1=5 n2=3 n3=1
		{"k5", "n1", false, []string{"n1", "n2", "n3"}},
		// k=7: all 0; ties go to the lowest name, then name order
		{"k7", "n1", false, []string{"n1", "n2", "n3"}},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			m, self := r.Owner(tt.key)
			if m.Name != tt.owner || self != tt.self {
				t.Errorf("Owner(%q) = %s, %v, want %s, %v", tt.key, m.Name, self, tt.owner, tt.self)
			}
			var got []string
			for _, m := range r.Replicas(tt.key, 3) {
				got = append(got, m.Name)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.replicas) {
				t.Errorf("Replicas(%q, 3) = %v, want %v", tt.key, got, tt.replicas)
			}
			if two := r.Replicas(tt.key, 2); len(two) != 2 || two[0].Name != tt.replicas[0] || two[1].Name != tt.replicas[1] {
				t.Errorf("Replicas(%q, 2) = %v, want %v", tt.key, two, tt.replicas[:2])
			}
		})
	}
}

func TestRingEdges(t *testing.T) {
	var empty *Ring
	if m, self := empty.Owner("k"); m.Name != "" || self {
		t.Errorf("nil Ring Owner = %v, %v, want zero", m, self)
	}
	r := NewRing("a", nil, nil)
	if m, _ := r.Owner("k"); m.Name != "" {
		t.Errorf("empty Ring Owner = %v, want zero Member", m)
	}
	r = NewRing("a", members("a", "b"), nil)
	if got := r.Replicas("k", 5); len(got) != 2 {
		t.Errorf("Replicas(k, 5) on 2 members has %d, want 2", len(got))
	}
	if got := r.Replicas("k", 0); got != nil {
		t.Errorf("Replicas(k, 0) = %v, want nil", got)
	}
	for i := range 100 {
		key := fmt.Sprint("k", i)
		owner, self := r.Owner(key)
		if reps := r.Replicas(key, 2); reps[0] != owner {
			t.Fatalf("Replicas(%q)[0] = %v, want owner %v", key, reps[0], owner)
		}
		if self != (owner.Name == "a") {
			t.Fatalf("Owner(%q) self = %v for %s", key, self, owner.Name)
		}
	}
}

func BenchmarkRingOwner(b *testing.B) {
	for _, n := range []int{3, 10, 100} {
		b.Run(fmt.Sprint(n, "members"), func(b *testing.B) {
			ms := make([]Member, n)
			for i := range ms {
				ms[i] = Member{Name: fmt.Sprint("node-", i)}
			}
			r := NewRing("", ms, nil)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				r.Owner("tenant:42:/invoices")
			}
		})
	}
}

// TestRingReplicasOrder checks Replicas against sorting every member by
// score (highest first, ties in name order), with scores that often tie.
func TestRingReplicasOrder(t *testing.T) {
	tied := func(member, key string) uint64 { return hashString(member+"/"+key) % 4 }
	for size := 1; size <= 12; size++ {
		names := make([]string, size)
		for i := range names {
			names[i] = fmt.Sprintf("n%02d", i)
		}
		for _, hash := range []HashFunc{nil, tied} {
			r := NewRing("", members(names...), hash)
			for k := range 50 {
				key := fmt.Sprint("key-", k)
				all := r.Members()
				slices.SortStableFunc(all, func(a, b Member) int {
					return cmp.Compare(r.score(slices.Index(names, b.Name), key, hashString(key)),
						r.score(slices.Index(names, a.Name), key, hashString(key)))
				})
				for n := 1; n <= size+1; n++ {
					got := r.AppendReplicas(make([]Member, 0, 1), key, n)
					if want := all[:min(n, size)]; !slices.Equal(got, want) {
						t.Fatalf("%d members, Replicas(%q, %d) = %v, want %v", size, key, n, got, want)
					}
				}
			}
		}
	}
}
