package limiter

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/limiterd/limiterd/internal/policy"

	"github.com/limiterd/limiterd/internal/store"
)

// clusterNode is mustNew for a node of a cluster (Config.Replicate).
func clusterNode(t *testing.T, clk *fakeClock, db *store.DB) *Limiter {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Now, cfg.Store, cfg.Replicate = clk.Now, db, true
	l, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// exchange merges a's copy of key into b, as replication or a sync does.
func exchange(t *testing.T, from, to *Limiter, key string) {
	t.Helper()
	st, ok := from.State("default", key)
	if !ok {
		t.Fatalf("State(%q) on the sender: not found", key)
	}
	if err := to.Merge(KeyState{Policy: "default", Key: key, State: st}, false, 0); err != nil {
		t.Fatalf("Merge() error = %v", err)
	}
}

// TestConcurrentDecidersAddUp: an owner back from a restart and the replica
// that stood in for it both admit hits of one key before they hear of each
// other. Once their copies meet, the key has used the hits of both: the
// cluster never admits more than the limit over the episode.
func TestConcurrentDecidersAddUp(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	db := mustOpenStore(t, dir)
	owner := clusterNode(t, clk, db)
	replica := clusterNode(t, clk, nil)
	for range 300 {
		allow(t, owner, Request{Key: "k"})
	}
	exchange(t, owner, replica, "k")
	if err := owner.Close(); err != nil { // flushes: the store has 300
		t.Fatalf("Close() error = %v", err)
	}
	db.Close()
	// The owner is down: the replica stands in for it.
	for range 20 {
		allow(t, replica, Request{Key: "k"})
	}

	// The restarted owner (a new process) reads the store, then merges the
	// replica's copy; then both decide for a while without hearing of
	// each other.
	db2 := mustOpenStore(t, dir)
	restarted := clusterNode(t, clk, db2)
	exchange(t, replica, restarted, "k")
	for range 100 {
		allow(t, restarted, Request{Key: "k"})
		allow(t, replica, Request{Key: "k"})
	}
	exchange(t, replica, restarted, "k")
	exchange(t, restarted, replica, "k")
	// 300 + 20 + 2 x 100 = 520 admitted; 80 left on both.
	for name, l := range map[string]*Limiter{"restarted owner": restarted, "replica": replica} {
		res := allow(t, l, Request{Key: "k", DryRun: true})
		if res.Remaining != 79 {
			t.Errorf("%s: Remaining = %d, want 79 (600 - 520 admitted - 1 asked)", name, res.Remaining)
		}
	}
}

// TestAloneAbsorbsEarlierCounts: a node without a cluster that restarts
// takes its stored hits for its own (no per-node counts kept in memory).
func TestAloneAbsorbsEarlierCounts(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	db := mustOpenStore(t, dir)
	l := mustNew(t, clk, db)
	for range 10 {
		allow(t, l, Request{Key: "k"})
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	db.Close()
	l2 := mustNew(t, clk, mustOpenStore(t, dir))
	if res := allow(t, l2, Request{Key: "k"}); res.Remaining != 589 {
		t.Fatalf("after restart: Remaining = %d, want 589", res.Remaining)
	}
	sh := l2.table("default").shard(l2.seed, "k")
	sh.mu.Lock()
	peers, unadopted := sh.m["k"].st.Window.Peers(), sh.m["k"].st.Window.Unadopted()
	sh.mu.Unlock()
	if peers != 0 || unadopted {
		t.Fatalf("after restart and a hit: %d peer rings, unadopted %v; want 0, false", peers, unadopted)
	}
}

// TestChangesToken: a replicated key's first change since TakeChanged leaves
// one token on Changes, so a replication loop can sleep while nothing
// changes; denied calls and calls on a key already queued add none.
func TestChangesToken(t *testing.T) {
	clk := newClock()
	l := clusterNode(t, clk, nil)
	if _, err := l.CreatePolicy(context.Background(), policy.Policy{Name: "tight", Limit: 1, Window: time.Minute}); err != nil {
		t.Fatalf("CreatePolicy() error = %v", err)
	}
	tokens := func() int {
		n := 0
		for {
			select {
			case <-l.Changes():
				n++
			default:
				return n
			}
		}
	}
	if n := tokens(); n != 0 {
		t.Fatalf("tokens before any call = %d, want 0", n)
	}
	allow(t, l, Request{Key: "a"})
	allow(t, l, Request{Key: "a"})
	allow(t, l, Request{Key: "b"})
	if n := tokens(); n != 1 {
		t.Fatalf("tokens after three changes = %d, want 1", n)
	}
	allow(t, l, Request{Key: "c"}) // a and b are still queued; c is new
	if n := tokens(); n != 1 {
		t.Fatalf("tokens after a new key = %d, want 1", n)
	}
	if got := len(l.TakeChanged(true)); got != 3 {
		t.Fatalf("TakeChanged() = %d keys, want 3", got)
	}
	allow(t, l, Request{Key: "x", Policy: "tight"})
	tokens()
	if res := allow(t, l, Request{Key: "x", Policy: "tight"}); res.Allowed {
		t.Fatalf("second call on a limit of 1 allowed")
	}
	if n := tokens(); n != 0 {
		t.Fatalf("tokens after a denied call = %d, want 0", n)
	}
	allow(t, l, Request{Key: "a"}) // queued again after TakeChanged
	if n := tokens(); n != 1 {
		t.Fatalf("tokens after a change following TakeChanged = %d, want 1", n)
	}
}

// TestRequeue: a key requeued after TakeChanged (its update may be lost) is
// taken again with its state at that time, not the one that was lost; a
// key this node does not hold is not.
func TestRequeue(t *testing.T) {
	clk := newClock()
	l := clusterNode(t, clk, nil)
	allow(t, l, Request{Key: "a"})
	lost := l.TakeChanged(true)
	if len(lost) != 1 {
		t.Fatalf("TakeChanged() = %d keys, want 1", len(lost))
	}
	allow(t, l, Request{Key: "a"})
	l.TakeChanged(true) // the newer update, which arrived
	l.Requeue("default", "a")
	l.Requeue("default", "never-seen")
	l.Requeue("no-such-policy", "a")
	got := l.TakeChanged(true)
	if len(got) != 1 || got[0].Key != "a" {
		t.Fatalf("TakeChanged() after Requeue = %v, want key a only", got)
	}
	now, _ := l.State("default", "a")
	if !bytes.Equal(got[0].State, now) || bytes.Equal(got[0].State, lost[0].State) {
		t.Errorf("requeued state = %x, want the current %x, not the lost %x", got[0].State, now, lost[0].State)
	}
}

// TestTakeChangedConcurrent: rounds taken while other goroutines decide
// miss no change: every key decided is in some round, and once they are
// done a last round holds every key decided after its previous one. A
// dropped policy's keys are not sent.
func TestTakeChangedConcurrent(t *testing.T) {
	clk := newClock()
	l := clusterNode(t, clk, nil)
	if _, err := l.CreatePolicy(context.Background(), policy.Policy{Name: "gone", Limit: 100, Window: time.Minute}); err != nil {
		t.Fatalf("CreatePolicy() error = %v", err)
	}
	allow(t, l, Request{Key: "g", Policy: "gone"})
	if _, err := l.DeletePolicy(context.Background(), "gone"); err != nil {
		t.Fatalf("DeletePolicy() error = %v", err)
	}
	const workers, perWorker = 4, 2000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				if _, err := l.Allow(context.Background(), Request{Key: fmt.Sprintf("w%d-%d", w, i%500)}); err != nil {
					t.Errorf("Allow() error = %v", err)
					return
				}
			}
		}()
	}
	seen := map[string]bool{}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		for _, ks := range l.TakeChanged(true) {
			if ks.Policy != "default" {
				t.Fatalf("TakeChanged() sent %s/%s, a dropped policy's key", ks.Policy, ks.Key)
			}
			seen[ks.Key] = true
		}
	}
	if got := l.TakeChanged(true); len(got) != 0 {
		t.Errorf("a round after the last one = %d keys, want none", len(got))
	}
	for w := range workers {
		for i := range 500 {
			if k := fmt.Sprintf("w%d-%d", w, i); !seen[k] {
				t.Fatalf("key %s was decided but no round sent it", k)
			}
		}
	}
	allow(t, l, Request{Key: "w0-0"})
	if got := l.TakeChanged(true); len(got) != 1 || got[0].Key != "w0-0" {
		t.Errorf("TakeChanged() after one more decision = %v, want w0-0 only", got)
	}
}

// TestMergeKeepsOwnKey: a replica keeps a key it has not seen under a
// string of its own, not the caller's, which may be part of a whole
// frame's keys (cluster's decodeKeyStates) that it would pin in memory.
func TestMergeKeepsOwnKey(t *testing.T) {
	clk := newClock()
	owner := clusterNode(t, clk, nil)
	replica := clusterNode(t, clk, nil)
	allow(t, owner, Request{Key: "k1"})
	st, _ := owner.State("default", "k1")
	frame := "k1k2k3" // the keys of a frame, in one string
	if err := replica.Merge(KeyState{Policy: "default", Key: frame[:2], State: st}, true, 0); err != nil {
		t.Fatalf("Merge() error = %v", err)
	}
	sh := replica.table("default").shard(replica.seed, "k1")
	sh.mu.Lock()
	e := sh.m["k1"]
	sh.mu.Unlock()
	if e == nil {
		t.Fatal("the replica holds no entry for k1")
	}
	if unsafe.StringData(e.key) == unsafe.StringData(frame) {
		t.Error("the entry's key shares the caller's string")
	}
	for k := range sh.m {
		if unsafe.StringData(k) == unsafe.StringData(frame) {
			t.Error("the map's key shares the caller's string")
		}
	}
}
