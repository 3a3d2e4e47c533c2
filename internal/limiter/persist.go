package limiter

import (
	"context"
	"fmt"
	"time"

	"github.com/limiterd/limiterd/internal/store"
	"github.com/limiterd/limiterd/internal/window"
)

// Run flushes changed state every FlushInterval and sweeps empty keys every
// SweepInterval until ctx is done or Close is called. It blocks; run it in a
// goroutine. Flush errors are logged and the ops retried on the next flush.
// After a flush with nothing to write the flush ticker stops until
// something is queued: an idle process should not wake ten times a second.
func (l *Limiter) Run(ctx context.Context) {
	if !l.running.CompareAndSwap(false, true) {
		return
	}
	defer close(l.done)
	flush := time.NewTicker(l.cfg.FlushInterval)
	defer flush.Stop()
	sweep := time.NewTicker(l.cfg.SweepInterval)
	defer sweep.Stop()
	var idle <-chan struct{} // l.dirty while the flush ticker is stopped
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.stop:
			return
		case <-flush.C:
			n, err := l.flush(ctx)
			if err != nil && ctx.Err() == nil {
				l.cfg.Logger.Error("flush state", "err", err)
			}
			if n == 0 && err == nil {
				flush.Stop()
				idle = l.dirty
				if l.onIdle != nil {
					l.onIdle()
				}
			}
		case <-idle:
			flush.Reset(l.cfg.FlushInterval)
			idle = nil
		case <-sweep.C:
			l.Sweep()
		}
	}
}

// Close stops Run and writes every change not yet flushed. It does not close
// the store. Calls after the first return nil.
func (l *Limiter) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(l.stop)
	if l.running.Load() {
		<-l.done
	}
	return l.Flush(context.Background())
}

// Flush writes every key changed since the last flush, and deletes every key
// swept since then, in one store transaction. Without a store it only clears
// the change lists.
func (l *Limiter) Flush(ctx context.Context) error {
	_, err := l.flush(ctx)
	return err
}

// flush is Flush, also reporting how many records it had to write.
func (l *Limiter) flush(ctx context.Context) (int, error) {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	select {
	case <-l.dirty: // taken below; anything queued from here on leaves a new token
	default:
	}
	ops := l.pending
	l.pending = nil
	// One buffer holds every value of this flush: the store needs them
	// only until Write returns, and one allocation beats one per key.
	buf := l.flushBuf[:0]
	l.flushBuf = nil
	for _, t := range *l.tables.Load() {
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.Lock()
			if len(sh.dirty) == 0 && len(sh.deleted) == 0 {
				sh.mu.Unlock()
				continue
			}
			for j, e := range sh.dirty {
				e.dirty = false
				sh.dirty[j] = nil
				if e.gone || l.cfg.Store == nil {
					continue
				}
				start := len(buf)
				buf = append(buf, t.name...)
				buf = append(buf, 0)
				buf = append(buf, e.key...)
				mid := len(buf)
				buf, _ = e.st.AppendBinaryFrom(buf, l.cfg.NodeID)
				ops = append(ops, store.Op{Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]})
			}
			sh.dirty = sh.dirty[:0]
			if l.cfg.Store != nil {
				for _, k := range sh.deleted {
					if _, back := sh.m[k]; back {
						continue // seen again since: its put (now or later) must win
					}
					ops = append(ops, store.Op{Key: storeKey(t.name, k), Delete: true})
				}
			}
			sh.deleted = nil
			sh.mu.Unlock()
		}
	}
	if len(ops) == 0 || l.cfg.Store == nil {
		return 0, nil
	}
	start := time.Now()
	if err := l.cfg.Store.Write(ctx, store.KindState, ops); err != nil {
		l.pending = ops // a later put of the same key comes after these, so it wins
		return len(ops), fmt.Errorf("flush %d records: %w", len(ops), err)
	}
	if cap(buf) <= maxFlushBuf {
		l.flushBuf = buf
	}
	if l.cfg.OnFlush != nil {
		l.cfg.OnFlush(time.Since(start), len(ops))
	}
	l.evictLocked()
	return len(ops), nil
}

// maxFlushBuf is the largest flush buffer kept for the next flush; a
// rare burst of changes does not pin its buffer.
const maxFlushBuf = 4 << 20

// evictLocked pages keys out of memory down to 90% of MaxKeys. Only keys
// whose state is in the store as it is in memory go: not dirty, no
// SyncAlways write under way, and no lease (a lease's Release must find
// it). Go's map order picks the victims at random. flushMu is held, so no
// flush is between taking a key's state and committing it.
func (l *Limiter) evictLocked() {
	if l.cfg.MaxKeys <= 0 || l.cfg.Store == nil {
		return
	}
	total := l.Keys()
	if total <= l.cfg.MaxKeys {
		return
	}
	excess := total - l.cfg.MaxKeys*9/10
	evicted := 0
	for _, t := range *l.tables.Load() {
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.Lock()
			quota := (excess*len(sh.m) + total - 1) / total
			for k, e := range sh.m {
				if quota <= 0 {
					break
				}
				if e.dirty || e.syncing.Load() > 0 || e.st.Leases.Len() > 0 {
					continue
				}
				l.paged.Store(true) // before the key leaves memory, so a miss looks in the store
				delete(sh.m, k)
				quota--
				evicted++
			}
			sh.mu.Unlock()
		}
	}
	l.cfg.Logger.Debug("paged keys out to the store", "keys", evicted, "budget", l.cfg.MaxKeys)
}

// sweepStore deletes expired records of keys paged out of memory. It reads
// the whole store, so Sweep runs it only every few sweeps, and only once
// keys have been paged out (otherwise memory holds every live key).
func (l *Limiter) sweepStore() {
	now := l.cfg.Now()
	tables := *l.tables.Load()
	var ops []store.Op
	err := l.cfg.Store.ForEach(store.KindState, func(k, v []byte) error {
		pname, key, ok := splitStoreKey(k)
		t := tables[pname]
		if !ok || t == nil {
			return nil
		}
		var st window.State
		if st.UnmarshalBinary(v) != nil {
			return nil
		}
		c := t.cfg.Load()
		if st.Leases.InFlight(now) > 0 || !st.Window.Empty(&c.rate, now) {
			return nil
		}
		sh := t.shard(l.seed, key)
		sh.mu.Lock()
		_, inMemory := sh.m[key]
		sh.mu.Unlock()
		if !inMemory {
			ops = append(ops, store.Op{Key: append([]byte(nil), k...), Value: append([]byte(nil), v...)})
		}
		return nil
	})
	if err == nil && len(ops) > 0 {
		// Only records nobody wrote since: a key used again meanwhile keeps
		// its new record.
		_, err = l.cfg.Store.DeleteUnchanged(context.Background(), store.KindState, ops)
	}
	if err != nil {
		l.cfg.Logger.Error("sweep paged-out keys", "err", err)
	}
}

// Sweep forgets every key whose window is empty and which holds no lease, in
// memory now and in the store at the next flush (keys paged out of memory:
// every sixth sweep). It returns how many keys it forgot from memory.
func (l *Limiter) Sweep() int {
	now := l.cfg.Now()
	l.flushMu.Lock()
	l.sweeps++
	scanStore := l.paged.Load() && l.sweeps%6 == 0
	l.flushMu.Unlock()
	if scanStore {
		l.sweepStore()
	}
	n := 0
	for _, t := range *l.tables.Load() {
		c := t.cfg.Load()
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.Lock()
			for k, e := range sh.m {
				if e.st.Leases.InFlight(now) == 0 && e.st.Window.Empty(&c.rate, now) {
					delete(sh.m, k)
					e.gone = true
					sh.deleted = append(sh.deleted, k)
					n++
				}
			}
			sh.mu.Unlock()
		}
	}
	if n > 0 {
		l.wake(l.dirty) // the deletes go with the next flush
	}
	return n
}

// Paged reports whether some key was paged out to the store.
func (l *Limiter) Paged() bool { return l.paged.Load() }

// Keys returns the number of keys held in memory.
func (l *Limiter) Keys() int {
	n := 0
	for _, t := range *l.tables.Load() {
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.Lock()
			n += len(sh.m)
			sh.mu.Unlock()
		}
	}
	return n
}

// load reads every saved key into memory. Records of policies that no longer
// exist and records whose windows have emptied are deleted from the store.
// A record that does not decode is an error naming the record: the store is
// left as it is.
func (l *Limiter) load() error {
	now := l.cfg.Now()
	tables := *l.tables.Load()
	var stale []store.Op
	loaded, orphans := 0, 0
	err := l.cfg.Store.ForEach(store.KindState, func(k, v []byte) error {
		pname, key, ok := splitStoreKey(k)
		if !ok {
			return fmt.Errorf("state record %q: %w: bad key", k, store.ErrCorrupt)
		}
		var st window.State
		if err := st.UnmarshalBinary(v); err != nil {
			return fmt.Errorf("state record %q: %w: %v", k, store.ErrCorrupt, err)
		}
		t := tables[pname]
		if t == nil {
			orphans++
			stale = append(stale, store.Op{Key: append([]byte(nil), k...), Delete: true})
			return nil
		}
		c := t.cfg.Load()
		if st.Leases.InFlight(now) == 0 && st.Window.Empty(&c.rate, now) {
			stale = append(stale, store.Op{Key: append([]byte(nil), k...), Delete: true})
			return nil
		}
		st.Leases.Expire(now)
		sh := t.shard(l.seed, key)
		sh.m[key] = &entry{key: key, st: st}
		loaded++
		return nil
	})
	if err != nil {
		return fmt.Errorf("load state from %s: %w", l.cfg.Store.Path(), err)
	}
	if len(stale) > 0 {
		if err := l.cfg.Store.Write(context.Background(), store.KindState, stale); err != nil {
			return fmt.Errorf("delete %d stale records from %s: %w", len(stale), l.cfg.Store.Path(), err)
		}
	}
	l.cfg.Logger.Info("state loaded", "file", l.cfg.Store.Path(), "keys", loaded, "expired", len(stale)-orphans, "orphaned", orphans)
	return nil
}
