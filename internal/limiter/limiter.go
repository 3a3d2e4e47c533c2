// Package limiter is the core of limiterd on one node: it keeps the sliding
// windows and leases of every key in sharded memory, decides Allow and
// Release calls, and writes changed state behind to a store.
//
// The hot path takes one shard lock per call and allocates nothing for an
// existing key of a policy without a concurrency cap. Changed keys are queued
// on their shard and written to bbolt in one transaction per flush interval;
// with Config.SyncAlways a call returns only after its state is durable
// (bbolt's group commit). Keys whose windows are empty and hold no lease are
// swept from memory and from the store.
package limiter

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/store"
	"github.com/limiterd/limiterd/internal/window"
)

// MaxKeyLen is the longest key, in bytes.
const MaxKeyLen = 512

// Codes of a denied Result, as in the 429 error body.
const (
	CodeRateLimited = 122 // request rate limit exceeded
	CodeConcurrency = 123 // concurrent requests limit exceeded
)

// Config tunes a Limiter.
type Config struct {
	// Policies are the policies at start. "default" (600 per 5m) is added
	// when missing.
	Policies []policy.Policy
	// Store persists state; nil keeps everything in memory only.
	Store *store.DB
	// FlushInterval is how often changed state is written to Store in one
	// transaction. Default 100ms. Hits of at most one interval are lost when
	// the process is killed.
	FlushInterval time.Duration
	// SyncAlways answers a call only after its state is durable, by group
	// commit. Default false (write-behind).
	SyncAlways bool
	// SweepInterval is how often keys with empty windows are forgotten.
	// Default 10s.
	SweepInterval time.Duration
	// Shards splits each policy's keys over this many locks. Default 256;
	// rounded up to a power of two.
	Shards int
	// Now reports the current time. Default time.Now.
	Now func() time.Time
	// Logger receives flush errors and start-up notes. Default slog.Default().
	Logger *slog.Logger
	// MaxKeys is the in-memory budget, in keys (about 420 bytes each for
	// the default policy). Beyond it, flushed keys holding no lease are
	// paged out to Store and read back when next used: never dropped while
	// their window is live. 0 means no budget. Needs a Store.
	MaxKeys int
	// Replicate queues every key changed by Allow or Release for
	// TakeChanged, so a cluster can send it to the key's replicas.
	Replicate bool
	// OnFlush, when set, is told how long each flush that wrote records took.
	OnFlush func(d time.Duration, records int)
	// NodeID names this process as the decider of the hits it counts, in
	// the state it stores and sends to peers, so that the hits two nodes
	// decide concurrently add up when their copies merge (see
	// window.Sliding.MergeFrom). It must differ between processes and
	// between restarts of one node; 0 picks a random one.
	NodeID uint64
}

// DefaultConfig returns a Config with every field set.
func DefaultConfig() Config {
	return Config{
		Policies:      []policy.Policy{policy.Default()},
		FlushInterval: 100 * time.Millisecond,
		SweepInterval: 10 * time.Second,
		Shards:        256,
		Now:           time.Now,
		Logger:        slog.Default(),
	}
}

// Validate reports a field that cannot work.
func (c Config) Validate() error {
	switch {
	case c.FlushInterval <= 0:
		return fmt.Errorf("limiter: flush interval %v must be positive", c.FlushInterval)
	case c.SweepInterval <= 0:
		return fmt.Errorf("limiter: sweep interval %v must be positive", c.SweepInterval)
	case c.Shards < 1 || c.Shards > 1<<16:
		return fmt.Errorf("limiter: shards %d out of range 1..65536", c.Shards)
	case c.Now == nil:
		return errors.New("limiter: Now is nil")
	case c.Logger == nil:
		return errors.New("limiter: Logger is nil")
	case c.MaxKeys < 0:
		return fmt.Errorf("limiter: MaxKeys %d must not be negative", c.MaxKeys)
	case c.MaxKeys > 0 && c.Store == nil:
		return errors.New("limiter: MaxKeys needs a Store to page keys out to")
	}
	for _, p := range c.Policies {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Request is one Allow call.
type Request struct {
	Policy string // empty means "default"
	Key    string
	Hits   int64 // 0 means 1
	DryRun bool
}

// Result is a decision and the numbers behind it.
type Result struct {
	Allowed bool
	// Code is 0 when allowed, else CodeRateLimited or CodeConcurrency.
	Code   int32
	Policy policy.Policy
	// Limit and Remaining are the window's limit and what is left after the
	// call.
	Limit, Remaining int64
	// RetryAfter is zero when allowed; when denied, the earliest wait after
	// which the same call can be allowed if nothing else happens.
	RetryAfter time.Duration
	// ResetAfter is the wait until the window holds no counted hit.
	ResetAfter time.Duration
	// LeaseID is set when the policy caps concurrency and the call took a
	// lease; the caller must Release it.
	LeaseID       string
	MaxConcurrent int64
	InFlight      int64
	// ShadowCode is the code a shadow policy would have denied with; the
	// Result itself is then allowed.
	ShadowCode int32
	// Degraded is set by a cluster when the decision was made without the
	// key's owner.
	Degraded bool
}

// Limiter decides calls for every key of every policy. It is safe for
// concurrent use.
type Limiter struct {
	cfg     Config
	seed    maphash.Seed
	tables  atomic.Pointer[map[string]*table]
	polMu   sync.Mutex               // serializes policy changes
	records map[string]policy.Record // run-time policy changes, by name

	flushMu sync.Mutex // one flush at a time; guards pending
	pending []store.Op // ops of a failed flush, retried first
	// flushBuf is the last flush's buffer of keys and values, reused by
	// the next: growing a fresh one every flush was a sixth of a flush's
	// CPU, much of it page faults. Dropped when a flush fails, since its
	// ops, kept in pending, point into it.
	flushBuf []byte

	changes chan struct{} // a token when a key is queued for replicas; see Changes
	// replMu guards replShards, the shards whose replDirty is not empty,
	// so that a replication round visits those rather than every shard:
	// the shards' locks and lists are cold in the cache by then.
	replMu     sync.Mutex
	replShards []*shard
	replSpare  []*shard      // the last round's list, reused
	dirty      chan struct{} // a token when something is queued for the store; wakes an idle Run
	onIdle     func()        // tests: Run stopped its flush ticker
	stop       chan struct{}
	done       chan struct{}
	running    atomic.Bool
	closed     atomic.Bool

	paged  atomic.Bool // some key was paged out: misses look in the store
	sweeps int         // Sweep runs, to scan the store every few; under flushMu
}

// table holds the keys of one policy.
type table struct {
	name   string
	cfg    atomic.Pointer[compiled]
	shards []shard
	mask   uint64
}

type compiled struct {
	p    policy.Policy
	rate window.Rate
}

type shard struct {
	t         *table
	mu        sync.Mutex
	m         map[string]*entry
	dirty     []*entry // changed since the last flush
	replDirty []*entry // changed since the last TakeChanged
	deleted   []string // swept since the last flush
	_         [64]byte // keep neighbouring locks off one cache line
}

type entry struct {
	key       string
	st        window.State
	synced    uint64       // cluster membership epoch the key was last merged at
	syncing   atomic.Int32 // SyncAlways writes under way; not evictable meanwhile
	dirty     bool         // queued on the shard's dirty list
	replDirty bool         // queued on the shard's replication list
	gone      bool         // swept; skip when flushing
}

// get returns key's entry, reading it back from the store when keys have
// been paged out, and creating it when create is set. sh.mu is held. A
// new entry keeps a copy of key, which may be part of a larger string (a
// peer frame's keys: cluster's decodeKeyStates) that it must not pin.
func (l *Limiter) get(t *table, sh *shard, key string, create bool) *entry {
	if e := sh.m[key]; e != nil {
		return e
	}
	if l.paged.Load() {
		if v, err := l.cfg.Store.Get(store.KindState, storeKey(t.name, key)); err == nil {
			var st window.State
			if err := st.UnmarshalBinary(v); err == nil {
				key = strings.Clone(key)
				e := &entry{key: key, st: st}
				sh.m[key] = e
				return e
			}
			l.cfg.Logger.Error("paged-out state does not decode; counting from its copy in memory only", "key", key)
		}
	}
	if !create {
		return nil
	}
	key = strings.Clone(key)
	e := &entry{key: key}
	sh.m[key] = e
	return e
}

// New returns a Limiter with cfg's policies and, when cfg.Store is set, the
// state saved in it. Call Run to flush and sweep in the background and Close
// to write the last changes.
func New(cfg Config) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := 1
	for n < cfg.Shards {
		n <<= 1
	}
	cfg.Shards = n
	for cfg.NodeID == 0 {
		cfg.NodeID = rand.Uint64()
	}
	l := &Limiter{cfg: cfg, seed: maphash.MakeSeed(), records: map[string]policy.Record{},
		changes: make(chan struct{}, 1), dirty: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	tables := map[string]*table{}
	ps := cfg.Policies
	if !slices.ContainsFunc(ps, func(p policy.Policy) bool { return p.Name == policy.DefaultName }) {
		ps = append([]policy.Policy{policy.Default()}, ps...)
	}
	for _, p := range ps {
		t, err := l.newTable(p)
		if err != nil {
			return nil, err
		}
		if tables[p.Name] != nil {
			return nil, fmt.Errorf("%w: %q", ErrPolicyExists, p.Name)
		}
		tables[p.Name] = t
	}
	l.tables.Store(&tables)
	if cfg.Store != nil {
		if err := l.loadPolicies(); err != nil {
			return nil, err
		}
		if err := l.load(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *Limiter) newTable(p policy.Policy) (*table, error) {
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	r, err := p.Rate()
	if err != nil {
		return nil, err
	}
	t := &table{name: p.Name, shards: make([]shard, l.cfg.Shards), mask: uint64(l.cfg.Shards - 1)}
	for i := range t.shards {
		t.shards[i].t = t
		t.shards[i].m = map[string]*entry{}
	}
	t.cfg.Store(&compiled{p: p, rate: r})
	return t, nil
}

func (l *Limiter) table(name string) *table {
	if name == "" {
		name = policy.DefaultName
	}
	return (*l.tables.Load())[name]
}

func (t *table) shard(seed maphash.Seed, key string) *shard {
	return &t.shards[maphash.String(seed, key)&t.mask]
}

// ValidateKey reports whether key may be limited: 1..MaxKeyLen bytes of
// valid UTF-8.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrBadKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadKey, len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: not valid UTF-8", ErrBadKey)
	}
	return nil
}

// Waits reports whether Allow waits for the disk before it answers
// (Config.SyncAlways with a store).
func (l *Limiter) Waits() bool { return l.cfg.SyncAlways && l.cfg.Store != nil }

// Allow decides req. Going over a limit is a Result with Allowed false, not
// an error. Errors: ErrUnknownPolicy, ErrBadKey, ErrBadHits, and store errors
// in SyncAlways mode.
func (l *Limiter) Allow(ctx context.Context, req Request) (Result, error) {
	t := l.table(req.Policy)
	if t == nil {
		return Result{}, fmt.Errorf("%w: %q", ErrUnknownPolicy, req.Policy)
	}
	if err := ValidateKey(req.Key); err != nil {
		return Result{}, err
	}
	hits := req.Hits
	switch {
	case hits < 0:
		return Result{}, fmt.Errorf("%w: %d", ErrBadHits, hits)
	case hits == 0:
		hits = 1
	}
	c := t.cfg.Load()
	now := l.cfg.Now()
	sh := t.shard(l.seed, req.Key)

	sh.mu.Lock()
	e := l.get(t, sh, req.Key, !req.DryRun)
	var scratch window.State
	st := &scratch
	if e != nil {
		st = &e.st
	}
	d := st.Window.Peek(&c.rate, now, hits)
	res := Result{
		Allowed: d.Allowed, Policy: c.p, Limit: d.Limit, Remaining: d.Remaining,
		RetryAfter: d.RetryAfter, ResetAfter: d.ResetAfter, MaxConcurrent: c.p.MaxConcurrent,
	}
	capped := c.p.MaxConcurrent > 0
	if capped {
		res.InFlight = st.Leases.InFlight(now)
	}
	switch {
	case !d.Allowed:
		res.Code = CodeRateLimited
	case capped && res.InFlight >= c.p.MaxConcurrent:
		// Denied by the cap: nothing is counted, so report the window as it is.
		d0 := st.Window.Peek(&c.rate, now, 0)
		res.Allowed, res.Code = false, CodeConcurrency
		res.Remaining, res.ResetAfter = d0.Remaining, d0.ResetAfter
		res.RetryAfter = max(time.Duration(st.Leases.Next()-now.UnixNano()), time.Nanosecond)
	case !req.DryRun:
		if st.Window.Unadopted() { // another node's or process's copy
			if l.cfg.Replicate {
				st.Window.Adopt(l.cfg.NodeID) // count apart from its hits
			} else {
				st.Window.Absorb() // alone: nobody to merge with
			}
		}
		st.Window.Add(&c.rate, now, hits)
		if capped {
			st.Leases.Expire(now)
			id := LeaseID{Policy: t.name, Key: req.Key, Nonce: rand.Uint64()}
			st.Leases.Acquire(id.Nonce, now, c.p.LeaseTTL)
			res.InFlight++
			res.LeaseID = id.String()
		}
	}
	changed := res.Allowed && !req.DryRun
	var snapshot []byte
	if changed {
		l.markChanged(sh, e)
		if l.cfg.SyncAlways && l.cfg.Store != nil {
			snapshot, _ = st.AppendBinaryFrom(nil, l.cfg.NodeID)
			e.syncing.Add(1)
			defer e.syncing.Add(-1)
		} else {
			l.markDirty(sh, e)
		}
	}
	sh.mu.Unlock()

	if c.p.Shadow && !res.Allowed {
		res.ShadowCode, res.Code, res.Allowed = res.Code, 0, true
		res.RetryAfter = 0
	}
	if snapshot != nil {
		op := store.Op{Key: storeKey(t.name, req.Key), Value: snapshot}
		if err := l.cfg.Store.WriteSync(ctx, store.KindState, []store.Op{op}); err != nil {
			return Result{}, fmt.Errorf("persist %q: %w", req.Key, err)
		}
	}
	return res, nil
}

// Release ends the lease with id and returns the leases still held for its
// key. Errors: ErrBadLeaseID, ErrLeaseNotFound (unknown, expired or already
// released).
func (l *Limiter) Release(ctx context.Context, id string) (inFlight int64, err error) {
	lid, err := DecodeLeaseID(id)
	if err != nil {
		return 0, err
	}
	return l.ReleaseID(ctx, lid)
}

// ReleaseID is Release with a decoded id.
func (l *Limiter) ReleaseID(ctx context.Context, lid LeaseID) (inFlight int64, err error) {
	t := l.table(lid.Policy)
	if t == nil {
		return 0, fmt.Errorf("%w: policy %q is gone", ErrLeaseNotFound, lid.Policy)
	}
	now := l.cfg.Now()
	sh := t.shard(l.seed, lid.Key)
	sh.mu.Lock()
	e := l.get(t, sh, lid.Key, false)
	if e == nil {
		sh.mu.Unlock()
		return 0, ErrLeaseNotFound
	}
	before := e.st.Leases.Len()
	ok := e.st.Leases.Release(lid.Nonce, now)
	inFlight = e.st.Leases.InFlight(now)
	var snapshot []byte
	if e.st.Leases.Len() != before {
		l.markChanged(sh, e)
		if l.cfg.SyncAlways && l.cfg.Store != nil {
			snapshot, _ = e.st.AppendBinaryFrom(nil, l.cfg.NodeID)
			e.syncing.Add(1)
			defer e.syncing.Add(-1)
		} else {
			l.markDirty(sh, e)
		}
	}
	sh.mu.Unlock()
	if snapshot != nil {
		op := store.Op{Key: storeKey(t.name, lid.Key), Value: snapshot}
		if err := l.cfg.Store.WriteSync(ctx, store.KindState, []store.Op{op}); err != nil {
			return 0, fmt.Errorf("persist %q: %w", lid.Key, err)
		}
	}
	if !ok {
		return inFlight, ErrLeaseNotFound
	}
	return inFlight, nil
}

// markDirty queues e for the next flush; sh.mu must be held.
func (l *Limiter) markDirty(sh *shard, e *entry) {
	if !e.dirty {
		e.dirty = true
		sh.dirty = append(sh.dirty, e)
		l.wake(l.dirty)
	}
}

// wake leaves a token on ch (capacity 1) unless one is waiting already.
func (l *Limiter) wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// markChanged queues e, when replicating, for replicas; sh.mu must be
// held.
func (l *Limiter) markChanged(sh *shard, e *entry) {
	if l.cfg.Replicate && !e.replDirty {
		e.replDirty = true
		if len(sh.replDirty) == 0 {
			l.replMu.Lock()
			l.replShards = append(l.replShards, sh)
			l.replMu.Unlock()
		}
		sh.replDirty = append(sh.replDirty, e)
		l.wake(l.changes)
	}
}

// storeKey is the record key of a key's state: policy NUL key.
func storeKey(policyName, key string) []byte {
	b := make([]byte, 0, len(policyName)+1+len(key))
	b = append(b, policyName...)
	b = append(b, 0)
	return append(b, key...)
}

func splitStoreKey(k []byte) (policyName, key string, ok bool) {
	p, rest, ok := strings.Cut(string(k), "\x00")
	return p, rest, ok && p != "" && rest != ""
}
