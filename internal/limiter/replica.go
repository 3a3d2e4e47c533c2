package limiter

import (
	"fmt"
	"sync"

	"github.com/limiterd/limiterd/internal/window"
)

// KeyState is the encoded state of one key, as it travels between nodes.
type KeyState struct {
	Policy string
	Key    string
	State  []byte // window.State.MarshalBinary
}

// Changes holds a token once a key has been queued for TakeChanged since
// the token was last taken (Config.Replicate). A replication loop that found
// nothing to send waits on it instead of polling, so an idle node does not
// wake every interval. A token may be stale: its keys were taken already.
func (l *Limiter) Changes() <-chan struct{} { return l.changes }

// TakeChanged returns the keys changed by Allow or Release since the last
// call, with their state now, for replication (Config.Replicate). With
// encode false it only clears the queue (no peer to send to).
func (l *Limiter) TakeChanged(encode bool) []KeyState {
	l.replMu.Lock()
	shards := l.replShards
	l.replShards = l.replSpare[:0]
	l.replSpare = nil
	l.replMu.Unlock()
	tables := *l.tables.Load()
	var out []KeyState
	var buf []byte // the states of a round share one buffer
	for i, sh := range shards {
		shards[i] = nil
		t := sh.t
		current := tables[t.name] == t // not a dropped policy's
		sh.mu.Lock()
		for j, e := range sh.replDirty {
			e.replDirty = false
			sh.replDirty[j] = nil
			if e.gone || !encode || !current {
				continue
			}
			if cap(buf)-len(buf) < maxStateGuess {
				buf = make([]byte, 0, max(4096, 2*cap(buf)))
			}
			start := len(buf)
			buf, _ = e.st.AppendBinaryFrom(buf, l.cfg.NodeID)
			out = append(out, KeyState{Policy: t.name, Key: e.key, State: buf[start:len(buf):len(buf)]})
		}
		sh.replDirty = sh.replDirty[:0]
		sh.mu.Unlock()
	}
	l.replMu.Lock()
	if l.replSpare == nil {
		l.replSpare = shards[:0]
	}
	l.replMu.Unlock()
	return out
}

// maxStateGuess is room for the encoding of most keys' state (a default
// window takes ~70 bytes); a larger one makes its buffer grow, which
// leaves earlier states in the old one, as they should be.
const maxStateGuess = 512

// Requeue queues a key for the next TakeChanged again, as if it had just
// changed: for a replica update that may not have arrived. The next
// TakeChanged encodes the key's state then, never an older one, so that a
// lost update sent again cannot undo a newer one that did arrive. A key
// this node no longer holds is left alone.
func (l *Limiter) Requeue(policyName, key string) {
	t := l.table(policyName)
	if t == nil || !l.cfg.Replicate {
		return
	}
	sh := t.shard(l.seed, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := l.get(t, sh, key, false); e != nil && !e.gone {
		l.markChanged(sh, e)
	}
}

// Export returns the state of every key for which keep returns true (all
// keys when keep is nil), for handing keys to other nodes.
func (l *Limiter) Export(keep func(policy, key string) bool) []KeyState {
	var out []KeyState
	for _, t := range *l.tables.Load() {
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.Lock()
			for k, e := range sh.m {
				if keep == nil || keep(t.name, k) {
					v, _ := e.st.AppendBinaryFrom(nil, l.cfg.NodeID)
					out = append(out, KeyState{Policy: t.name, Key: k, State: v})
				}
			}
			sh.mu.Unlock()
		}
	}
	return out
}

// State returns the encoded state of one key, or false when it holds none.
func (l *Limiter) State(policyName, key string) ([]byte, bool) {
	t := l.table(policyName)
	if t == nil {
		return nil, false
	}
	sh := t.shard(l.seed, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := l.get(t, sh, key, false)
	if e == nil {
		return nil, false
	}
	v, _ := e.st.AppendBinaryFrom(nil, l.cfg.NodeID)
	return v, true
}

// scratchStates holds the States Merge decodes copies into. MergeFrom
// keeps nothing of its argument's memory, so a copy's ring is reused for
// the next (a replica merges one copy per replicated key).
var scratchStates = sync.Pool{New: func() any { return new(window.State) }}

// Merge folds another node's copy of a key into this node's, per deciding
// node (window.State.MergeFrom): hits both decided concurrently add up.
// With replaceLeases the copy's leases replace this node's: a replica takes
// its owner's word on leases.
// The key is marked synced at epoch (see Synced). Merged state is written to
// the store at the next flush but not replicated onwards.
func (l *Limiter) Merge(ks KeyState, replaceLeases bool, epoch uint64) error {
	t := l.table(ks.Policy)
	if t == nil {
		return fmt.Errorf("%w: %q", ErrUnknownPolicy, ks.Policy)
	}
	if err := ValidateKey(ks.Key); err != nil {
		return err
	}
	var in *window.State
	if len(ks.State) > 0 {
		in = scratchStates.Get().(*window.State)
		defer scratchStates.Put(in)
		if err := in.UnmarshalBinaryReuse(ks.State); err != nil {
			return fmt.Errorf("state of %q: %w", ks.Key, err)
		}
	}
	c := t.cfg.Load()
	sh := t.shard(l.seed, ks.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := l.get(t, sh, ks.Key, true)
	if len(ks.State) > 0 {
		e.st.MergeFrom(&c.rate, in, replaceLeases, l.cfg.NodeID)
		l.markDirty(sh, e)
	}
	e.synced = max(e.synced, epoch)
	return nil
}

// Synced reports whether the key was merged with its peers' copies at
// membership epoch or later. A key this node never saw is not synced.
func (l *Limiter) Synced(policyName, key string, epoch uint64) bool {
	t := l.table(policyName)
	if t == nil {
		return true // nothing to sync; Allow reports the unknown policy
	}
	sh := t.shard(l.seed, key)
	sh.mu.Lock()
	e := sh.m[key]
	ok := e != nil && e.synced >= epoch
	sh.mu.Unlock()
	return ok
}
