package limiter

import (
	"context"
	"fmt"
	"sort"

	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/store"
)

// Policy returns the policy named name ("" means default).
func (l *Limiter) Policy(name string) (policy.Policy, bool) {
	t := l.table(name)
	if t == nil {
		return policy.Policy{}, false
	}
	return t.cfg.Load().p, true
}

// Policies returns every policy, sorted by name.
func (l *Limiter) Policies() []policy.Policy {
	tables := *l.tables.Load()
	out := make([]policy.Policy, 0, len(tables))
	for _, t := range tables {
		out = append(out, t.cfg.Load().p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PolicyRecords returns the versioned record of every policy changed at run
// time (by the Admin API or a peer), tombstones included, sorted by name.
func (l *Limiter) PolicyRecords() []policy.Record {
	l.polMu.Lock()
	defer l.polMu.Unlock()
	out := make([]policy.Record, 0, len(l.records))
	for _, r := range l.records {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Policy.Name < out[j].Policy.Name })
	return out
}

// CreatePolicy adds p (ErrPolicyExists when the name exists) and returns its
// record for spreading to peers.
func (l *Limiter) CreatePolicy(ctx context.Context, p policy.Policy) (policy.Record, error) {
	return l.change(ctx, p, func(exists bool) error {
		if exists {
			return fmt.Errorf("%w: %q", ErrPolicyExists, p.Name)
		}
		return nil
	}, false)
}

// UpdatePolicy replaces the policy of p's name (ErrUnknownPolicy when there
// is none). Keys keep their counted hits across a change of limit or window.
func (l *Limiter) UpdatePolicy(ctx context.Context, p policy.Policy) (policy.Record, error) {
	return l.change(ctx, p, func(exists bool) error {
		if !exists {
			return fmt.Errorf("%w: %q", ErrUnknownPolicy, p.Name)
		}
		return nil
	}, false)
}

// DeletePolicy removes the policy and its keys' state (ErrUnknownPolicy when
// there is none; the default policy cannot be deleted).
func (l *Limiter) DeletePolicy(ctx context.Context, name string) (policy.Record, error) {
	if name == policy.DefaultName {
		return policy.Record{}, fmt.Errorf("%w: name: the default policy cannot be deleted", policy.ErrInvalid)
	}
	return l.change(ctx, policy.Policy{Name: name}, func(exists bool) error {
		if !exists {
			return fmt.Errorf("%w: %q", ErrUnknownPolicy, name)
		}
		return nil
	}, true)
}

// change validates p, checks the precondition under the policy lock, then
// applies and persists a record with a version above every one seen.
func (l *Limiter) change(ctx context.Context, p policy.Policy, pre func(exists bool) error, del bool) (policy.Record, error) {
	if !del {
		p = p.WithDefaults()
		if err := p.Validate(); err != nil {
			return policy.Record{}, err
		}
	}
	l.polMu.Lock()
	defer l.polMu.Unlock()
	if err := pre((*l.tables.Load())[p.Name] != nil); err != nil {
		return policy.Record{}, err
	}
	v := uint64(l.cfg.Now().UnixNano())
	if old, ok := l.records[p.Name]; ok && old.Version >= v {
		v = old.Version + 1
	}
	rec := policy.Record{Policy: p, Version: v, Deleted: del}
	if err := l.applyLocked(ctx, rec); err != nil {
		return policy.Record{}, err
	}
	return rec, nil
}

// ApplyPolicyRecord applies a record from a peer or the store when its
// version is above the one held, and reports whether it did.
func (l *Limiter) ApplyPolicyRecord(ctx context.Context, rec policy.Record) (bool, error) {
	l.polMu.Lock()
	defer l.polMu.Unlock()
	if old, ok := l.records[rec.Policy.Name]; ok && old.Version >= rec.Version {
		return false, nil
	}
	if rec.Deleted && rec.Policy.Name == policy.DefaultName {
		return false, fmt.Errorf("%w: name: the default policy cannot be deleted", policy.ErrInvalid)
	}
	return true, l.applyLocked(ctx, rec)
}

// applyLocked persists rec, then changes the tables. polMu is held.
func (l *Limiter) applyLocked(ctx context.Context, rec policy.Record) error {
	if l.cfg.Store != nil {
		b, err := rec.MarshalBinary()
		if err != nil {
			return err
		}
		op := store.Op{Key: []byte(rec.Policy.Name), Value: b}
		if err := l.cfg.Store.Write(ctx, store.KindPolicies, []store.Op{op}); err != nil {
			return fmt.Errorf("persist policy %q: %w", rec.Policy.Name, err)
		}
	}
	l.records[rec.Policy.Name] = rec
	if rec.Deleted {
		l.dropTableLocked(rec.Policy.Name)
		return nil
	}
	return l.putTableLocked(rec.Policy)
}

func (l *Limiter) putTableLocked(p policy.Policy) error {
	r, err := p.Rate()
	if err != nil {
		return err
	}
	old := *l.tables.Load()
	if t := old[p.Name]; t != nil {
		t.cfg.Store(&compiled{p: p, rate: r})
		return nil
	}
	t, err := l.newTable(p)
	if err != nil {
		return err
	}
	next := make(map[string]*table, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[p.Name] = t
	l.tables.Store(&next)
	return nil
}

func (l *Limiter) dropTableLocked(name string) {
	old := *l.tables.Load()
	t := old[name]
	if t == nil {
		return
	}
	next := make(map[string]*table, len(old))
	for k, v := range old {
		if k != name {
			next[k] = v
		}
	}
	l.tables.Store(&next)
	// Its records go from the store with the next flush.
	var ops []store.Op
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			e.gone = true
			ops = append(ops, store.Op{Key: storeKey(name, k), Delete: true})
		}
		sh.m = map[string]*entry{}
		sh.mu.Unlock()
	}
	if l.cfg.Store != nil && len(ops) > 0 {
		l.flushMu.Lock()
		l.pending = append(l.pending, ops...)
		l.flushMu.Unlock()
		l.wake(l.dirty)
	}
}

// loadPolicies applies the policy records saved by earlier runs on top of
// the config file's policies.
func (l *Limiter) loadPolicies() error {
	var recs []policy.Record
	err := l.cfg.Store.ForEach(store.KindPolicies, func(k, v []byte) error {
		var r policy.Record
		if err := r.UnmarshalBinary(v); err != nil {
			return fmt.Errorf("policy record %q: %w: %v", k, store.ErrCorrupt, err)
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return fmt.Errorf("load policies from %s: %w", l.cfg.Store.Path(), err)
	}
	l.polMu.Lock()
	defer l.polMu.Unlock()
	for _, r := range recs {
		l.records[r.Policy.Name] = r
		if r.Deleted {
			l.dropTableLocked(r.Policy.Name)
		} else if err := l.putTableLocked(r.Policy); err != nil {
			return err
		}
	}
	return nil
}
