package limiter

import (
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

// CreatePolicy adds p, or returns ErrPolicyExists.
func (l *Limiter) CreatePolicy(p policy.Policy) error { return l.putPolicy(p, true) }

// PutPolicy adds p or replaces the policy of that name. Keys keep their
// counted hits across a change of limit or window.
func (l *Limiter) PutPolicy(p policy.Policy) error { return l.putPolicy(p, false) }

func (l *Limiter) putPolicy(p policy.Policy, create bool) error {
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return err
	}
	r, err := p.Rate()
	if err != nil {
		return err
	}
	l.polMu.Lock()
	defer l.polMu.Unlock()
	old := *l.tables.Load()
	if t := old[p.Name]; t != nil {
		if create {
			return fmt.Errorf("%w: %q", ErrPolicyExists, p.Name)
		}
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

// DeletePolicy removes the policy and forgets its keys. The default policy
// cannot be deleted. It returns ErrUnknownPolicy when there is no such policy.
func (l *Limiter) DeletePolicy(name string) error {
	if name == policy.DefaultName {
		return fmt.Errorf("%w: the default policy cannot be deleted", policy.ErrInvalid)
	}
	l.polMu.Lock()
	defer l.polMu.Unlock()
	old := *l.tables.Load()
	t := old[name]
	if t == nil {
		return fmt.Errorf("%w: %q", ErrUnknownPolicy, name)
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
	if l.cfg.Store != nil {
		l.flushMu.Lock()
		l.pending = append(l.pending, ops...)
		l.flushMu.Unlock()
	}
	return nil
}
