package limiter

import (
	"context"
	"fmt"
	"time"
)

// Usage is the current state of one key under one policy.
type Usage struct {
	Policy        string
	Key           string
	Limit         int64
	Used          int64 // hits counted in the window now
	Remaining     int64
	ResetAfter    time.Duration
	MaxConcurrent int64
	InFlight      int64
}

// Usage returns the state of key under policyName, or ErrKeyNotFound when the
// key holds none (never seen, or swept after its window emptied).
func (l *Limiter) Usage(policyName, key string) (Usage, error) {
	t := l.table(policyName)
	if t == nil {
		return Usage{}, fmt.Errorf("%w: %q", ErrUnknownPolicy, policyName)
	}
	if err := ValidateKey(key); err != nil {
		return Usage{}, err
	}
	c := t.cfg.Load()
	now := l.cfg.Now()
	sh := t.shard(l.seed, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := l.get(t, sh, key, false)
	if e == nil {
		return Usage{}, fmt.Errorf("%w: %q under %q", ErrKeyNotFound, key, t.name)
	}
	d := e.st.Window.Peek(&c.rate, now, 0)
	return Usage{
		Policy: t.name, Key: key, Limit: d.Limit, Used: d.Limit - d.Remaining, Remaining: d.Remaining,
		ResetAfter: d.ResetAfter, MaxConcurrent: c.p.MaxConcurrent, InFlight: e.st.Leases.InFlight(now),
	}, nil
}

// Reset forgets key's hits and leases under policyName, in memory now and
// in the store before it returns. ErrKeyNotFound when it holds no state.
func (l *Limiter) Reset(ctx context.Context, policyName, key string) error {
	t := l.table(policyName)
	if t == nil {
		return fmt.Errorf("%w: %q", ErrUnknownPolicy, policyName)
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	sh := t.shard(l.seed, key)
	sh.mu.Lock()
	e := l.get(t, sh, key, false)
	if e != nil {
		delete(sh.m, key)
		e.gone = true
		sh.deleted = append(sh.deleted, key)
	}
	sh.mu.Unlock()
	if e == nil {
		return fmt.Errorf("%w: %q under %q", ErrKeyNotFound, key, t.name)
	}
	// Through the flush path, so the delete is ordered after any put of the
	// key that a flush already took.
	if err := l.Flush(ctx); err != nil {
		return fmt.Errorf("reset %q: %w", key, err)
	}
	return nil
}
