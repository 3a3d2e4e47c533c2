package window

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// node is one limiterd process's copy of a key, for the tests below.
type node struct {
	id uint64
	s  Sliding
}

// send encodes n's copy as it travels to a peer.
func (n *node) send(t *testing.T) *Sliding {
	t.Helper()
	b, err := n.s.AppendBinaryFrom(nil, n.id)
	if err != nil {
		t.Fatalf("AppendBinaryFrom() error = %v", err)
	}
	var out Sliding
	if err := out.UnmarshalBinary(b); err != nil {
		t.Fatalf("UnmarshalBinary(AppendBinaryFrom()) error = %v", err)
	}
	return &out
}

// add counts hits as the limiter does: a copy still held as another
// node's is adopted first.
func (n *node) add(r *Rate, now time.Time, hits int64) {
	if n.s.Unadopted() {
		n.s.Adopt(n.id)
	}
	n.s.Add(r, now, hits)
}

func (n *node) recv(t *testing.T, r *Rate, from *node) { n.s.MergeFrom(r, from.send(t), n.id) }

// TestMergeFromAddsConcurrentDeciders is the failure max-merging gets wrong:
// two nodes decide the same key from the same state at the same time (an
// owner back from a restart and the replica that stood in for it); once
// their copies are exchanged, both count the hits of both.
func TestMergeFromAddsConcurrentDeciders(t *testing.T) {
	r := MustRate(100, time.Minute, 60)
	a, b := &node{id: 1}, &node{id: 2}
	a.add(&r, at(0), 30)
	b.recv(t, &r, a) // replication
	a.add(&r, at(100*time.Millisecond), 5)
	b.add(&r, at(150*time.Millisecond), 7) // b decides too, same step
	a.recv(t, &r, b)
	b.recv(t, &r, a)
	for _, n := range []*node{a, b} {
		if got := n.s.Count(&r, at(time.Second)); got != 42 {
			t.Errorf("node %d counts %d, want 42 (30 + 5 + 7)", n.id, got)
		}
	}
	// Idempotent: merging the same copies again changes nothing.
	a.recv(t, &r, b)
	b.recv(t, &r, a)
	a.recv(t, &r, a)
	if got := a.s.Count(&r, at(time.Second)); got != 42 {
		t.Errorf("after repeated merges node 1 counts %d, want 42", got)
	}
	// Plain Merge (max per step) keeps only the larger side: the bug.
	var x, y Sliding
	x.Add(&r, at(0), 35)
	y.Add(&r, at(0), 37)
	x.Merge(&r, &y)
	if got := x.Count(&r, at(time.Second)); got != 37 {
		t.Fatalf("Merge counts %d, want 37 (max per step)", got)
	}
}

// TestAdoptAfterRestart: a node restarts with a new id and an older copy of
// its own state (its last hits were not flushed); a peer holds the newer
// copy. Hits it counts after the restart are added to, not hidden behind,
// what the peer knows of its previous life.
func TestAdoptAfterRestart(t *testing.T) {
	r := MustRate(1000, time.Minute, 60)
	old, peer := &node{id: 10}, &node{id: 20}
	old.add(&r, at(0), 50)
	flushed, err := old.s.AppendBinaryFrom(nil, old.id) // what the store has
	if err != nil {
		t.Fatal(err)
	}
	old.add(&r, at(10*time.Millisecond), 8) // not flushed: lost at kill -9
	peer.recv(t, &r, old)                   // but replicated

	restarted := &node{id: 11}
	if err := restarted.s.UnmarshalBinary(flushed); err != nil {
		t.Fatal(err)
	}
	restarted.s.Adopt(restarted.id)
	if restarted.s.Peers() != 1 {
		t.Fatalf("after Adopt: %d peer rings, want 1 (the previous process)", restarted.s.Peers())
	}
	restarted.add(&r, at(time.Second), 4)
	restarted.recv(t, &r, peer)
	peer.recv(t, &r, restarted)
	for _, n := range []*node{restarted, peer} {
		if got := n.s.Count(&r, at(2*time.Second)); got != 62 {
			t.Errorf("node %d counts %d, want 62 (50 + 8 + 4)", n.id, got)
		}
	}
}

// TestMergeFromConverges runs random histories on three nodes that decide
// one key concurrently and exchange copies at random; after a final
// all-to-all exchange every node counts exactly the hits all of them
// admitted, and never less than any node alone at any point.
func TestMergeFromConverges(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	for seed := range 200 {
		r := MustRate(MaxLimit, time.Duration(1+rng.IntN(120))*time.Second, 1+rng.IntN(60))
		nodes := []*node{{id: 1}, {id: 2}, {id: 3}}
		var hits []time.Time
		now := at(0)
		for range 40 + rng.IntN(60) {
			now = now.Add(time.Duration(rng.Int64N(int64(r.Step()) / 2)))
			n := nodes[rng.IntN(3)]
			if rng.IntN(3) == 0 {
				n.recv(t, &r, nodes[rng.IntN(3)])
				continue
			}
			k := int64(1 + rng.IntN(3))
			n.add(&r, now, k)
			for range k {
				hits = append(hits, now)
			}
		}
		for range 2 {
			for _, x := range nodes {
				for _, y := range nodes {
					x.recv(t, &r, y)
				}
			}
		}
		// Every hit is within the window at now, so the count is exact
		// when hits were made within the last window.
		var want int64
		for _, h := range hits {
			if now.Sub(h) < r.Window()-r.Step() {
				want++
			}
		}
		for _, n := range nodes {
			got := n.s.Count(&r, now)
			if got < want {
				t.Fatalf("seed %d: node %d counts %d, want at least %d (hits in the window)", seed, n.id, got, want)
			}
			if all := int64(len(hits)); got > all {
				t.Fatalf("seed %d: node %d counts %d, more than the %d hits made", seed, n.id, got, all)
			}
			if got != nodes[0].s.Count(&r, now) {
				t.Fatalf("seed %d: nodes disagree after exchanging copies", seed)
			}
		}
	}
}

// withPeer returns node 1 holding 1 hit of its own and 3 of node 2's.
func withPeer(t *testing.T, r *Rate) *node {
	a, b := &node{id: 1}, &node{id: 2}
	b.add(r, at(0), 3)
	a.add(r, at(0), 1)
	a.recv(t, r, b)
	return a
}

// TestDecidersExpire: peer rings leave with the hits they hold.
func TestDecidersExpire(t *testing.T) {
	r := MustRate(100, time.Minute, 60)
	a := withPeer(t, &r)
	if a.s.Peers() != 1 || a.s.Count(&r, at(time.Second)) != 4 {
		t.Fatalf("peers %d count %d, want 1 and 4", a.s.Peers(), a.s.Count(&r, at(time.Second)))
	}
	a.add(&r, at(2*time.Minute), 1)
	if a.s.Peers() != 0 || a.s.Count(&r, at(2*time.Minute)) != 1 {
		t.Fatalf("after a window: peers %d count %d, want 0 and 1", a.s.Peers(), a.s.Count(&r, at(2*time.Minute)))
	}
}

func TestDecidersDecodeRejects(t *testing.T) {
	r := MustRate(100, time.Minute, 4)
	a := withPeer(t, &r)
	good, err := a.s.AppendBinaryFrom(nil, a.id)
	if err != nil {
		t.Fatal(err)
	}
	var s Sliding
	if err := s.UnmarshalBinary(good); err != nil {
		t.Fatalf("UnmarshalBinary(good) error = %v", err)
	}
	for i := 1; i < len(good); i++ {
		if err := s.UnmarshalBinary(good[:i]); !errors.Is(err, ErrCorrupt) {
			t.Errorf("UnmarshalBinary(first %d bytes) error = %v, want ErrCorrupt", i, err)
		}
	}
	// The peer's id equal to the sender's is not a valid encoding.
	bad := append([]byte(nil), good...)
	bad[len(bad)-6] = 1 // peer id (1 byte) before its 5 counts
	if err := s.UnmarshalBinary(bad); !errors.Is(err, ErrCorrupt) {
		t.Errorf("UnmarshalBinary(peer id = sender) error = %v, want ErrCorrupt", err)
	}
}

// TestReplicaCopyStaysCompact: a replica that only ever merges its owner's
// copies keeps them as the owner's own hits, without a ring per node, and
// tells them apart once it counts hits itself.
func TestReplicaCopyStaysCompact(t *testing.T) {
	r := MustRate(100, time.Minute, 60)
	owner, replica := &node{id: 1}, &node{id: 2}
	owner.add(&r, at(0), 10)
	replica.recv(t, &r, owner)
	owner.add(&r, at(time.Second), 5)
	replica.recv(t, &r, owner)
	if replica.s.Peers() != 0 || !replica.s.Unadopted() {
		t.Fatalf("replica copy: %d peer rings, unadopted %v; want 0 and true", replica.s.Peers(), replica.s.Unadopted())
	}
	if got := replica.s.Count(&r, at(2*time.Second)); got != 15 {
		t.Fatalf("replica counts %d, want 15", got)
	}
	// The replica stands in for the owner while both decide.
	replica.add(&r, at(3*time.Second), 7)
	owner.add(&r, at(3*time.Second), 2)
	replica.recv(t, &r, owner)
	owner.recv(t, &r, replica)
	for _, n := range []*node{owner, replica} {
		if got := n.s.Count(&r, at(4*time.Second)); got != 24 {
			t.Errorf("node %d counts %d, want 24 (10 + 5 + 7 + 2)", n.id, got)
		}
	}
}

// TestReplicaFollowsOwner: a replica that merges each copy its owner sends
// (decoded into one reused scratch State, as the limiter does) holds exactly
// the owner's state, whatever the window moved by in between.
func TestReplicaFollowsOwner(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 13))
	for seed := range 100 {
		r := MustRate(MaxLimit, time.Duration(1+rng.IntN(120))*time.Second, 1+rng.IntN(60))
		var owner, replica, scratch State
		now := at(0)
		for range 20 + rng.IntN(40) {
			now = now.Add(time.Duration(rng.Int64N(int64(r.Window()) / 4)))
			owner.Window.Add(&r, now, int64(rng.IntN(4)))
			if rng.IntN(2) == 0 {
				continue
			}
			b, _ := owner.AppendBinaryFrom(nil, 1)
			if err := scratch.UnmarshalBinaryReuse(b); err != nil {
				t.Fatalf("seed %d: UnmarshalBinaryReuse() error = %v", seed, err)
			}
			replica.MergeFrom(&r, &scratch, true, 2)
			got, _ := replica.AppendBinaryFrom(nil, 2)
			if !bytes.Equal(got, b) {
				t.Fatalf("seed %d: replica encodes as\n%v, its owner as\n%v", seed, got, b)
			}
		}
	}
}

// TestUnmarshalBinaryReuse: decoding one encoding after another into the
// same State gives what a fresh State decodes, and a merged copy shares no
// memory with the scratch it came from.
func TestUnmarshalBinaryReuse(t *testing.T) {
	r := MustRate(100, time.Minute, 6)
	a, b := &node{id: 1}, &node{id: 2}
	b.add(&r, at(0), 3)
	a.add(&r, at(0), 1)
	a.recv(t, &r, b) // a holds a peer ring
	var leased State
	leased.Window.Add(&r, at(0), 2)
	leased.Leases.Acquire(7, at(0), time.Minute)
	leased.Leases.Acquire(8, at(0), time.Minute)
	var plain State
	plain.Window.Add(&r, at(0), 5)
	withPeerRing, _ := (&State{Window: a.s}).AppendBinaryFrom(nil, 1)
	fromOwner, _ := (&State{Window: b.s}).AppendBinaryFrom(nil, 2)
	leasedEnc, _ := leased.AppendBinaryFrom(nil, 3)
	plainEnc, _ := plain.AppendBinary(nil)
	empty, _ := (&State{}).AppendBinary(nil)
	var scratch State
	for i, enc := range [][]byte{withPeerRing, plainEnc, leasedEnc, withPeerRing, fromOwner, empty, leasedEnc, withPeerRing} {
		var want State
		if err := want.UnmarshalBinary(enc); err != nil {
			t.Fatalf("%d: UnmarshalBinary() error = %v", i, err)
		}
		if err := scratch.UnmarshalBinaryReuse(enc); err != nil {
			t.Fatalf("%d: UnmarshalBinaryReuse() error = %v", i, err)
		}
		got, _ := scratch.AppendBinary(nil)
		if wantEnc, _ := want.AppendBinary(nil); !bytes.Equal(got, wantEnc) || scratch.Window.total != want.Window.total ||
			scratch.Window.Unadopted() != want.Window.Unadopted() || scratch.Window.Peers() != want.Window.Peers() {
			t.Fatalf("%d: UnmarshalBinaryReuse() = %+v, UnmarshalBinary() = %+v", i, scratch, want)
		}
		var merged State
		merged.MergeFrom(&r, &scratch, false, 9)
		before, _ := merged.AppendBinaryFrom(nil, 9)
		if err := scratch.UnmarshalBinaryReuse(leasedEnc); err != nil { // overwrite the scratch
			t.Fatal(err)
		}
		if after, _ := merged.AppendBinaryFrom(nil, 9); !bytes.Equal(before, after) {
			t.Fatalf("%d: decoding into the scratch changed a state merged from it", i)
		}
	}
	if err := scratch.UnmarshalBinaryReuse(withPeerRing[:len(withPeerRing)-3]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("UnmarshalBinaryReuse(truncated) error = %v, want ErrCorrupt", err)
	}
}
