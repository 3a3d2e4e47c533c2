package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Kind names a bbolt bucket: one bucket per kind of record.
type Kind string

// The kinds of record a store holds. Every method rejects any other Kind
// with ErrBadKind.
const (
	// KindState holds per-key window and lease state; the key is
	// policy + "\x00" + key.
	KindState Kind = "state"
	// KindPolicies holds policies created at run time through the Admin API.
	KindPolicies Kind = "policies"
	// KindMeta holds the format version and other bookkeeping.
	KindMeta Kind = "meta"
)

// layout lists every bucket Open creates: one per Kind, and the journal.
var layout = []Kind{KindState, KindPolicies, KindMeta, Kind(journalBucket)}

// valid reports whether k is one of the declared kinds.
func (k Kind) valid() bool {
	switch k {
	case KindState, KindPolicies, KindMeta:
		return true
	}
	return false
}

// Op is one change to a record: a put of Value, or a delete when Delete is
// true. Key must not be empty. A nil Value with Delete false stores an empty
// value. Deleting a key that does not exist is not an error.
type Op struct {
	Key, Value []byte
	Delete     bool
}

// Config tunes a DB.
type Config struct {
	// Path of the bbolt file. Required. The parent directory is created
	// with mode 0o750 if missing.
	Path string
	// OpenTimeout bounds waiting for the file lock held by another process
	// (or another DB in this process). Default 1s; zero means the default.
	OpenTimeout time.Duration
	// MaxBatchSize is the most WriteSync calls that share one commit; a full
	// batch commits at once. Default 1000; zero means the default.
	MaxBatchSize int
	// MaxBatchDelay is the longest a WriteSync call waits for others to join
	// its batch before the commit starts. Default 1ms (bbolt's own default,
	// 10ms, is too long for a rate limiter answering in-line); zero means
	// the default.
	MaxBatchDelay time.Duration
	// NoSync disables fsync, so a crash can lose or corrupt recent writes.
	// Tests and benchmarks only. Default false.
	NoSync bool
	// JournalBytes is how many bytes of Write's ops the journal holds
	// before the next Write folds it into the buckets (see journal.go).
	// The overlay that mirrors the journal holds about as much memory.
	// Default DefaultJournalBytes (4 MiB); zero means the default, and a
	// negative value turns the journal off, so every Write updates the
	// buckets in place.
	JournalBytes int
}

// DefaultConfig returns a Config with every field but Path set.
func DefaultConfig() Config {
	return Config{
		OpenTimeout:   time.Second,
		MaxBatchSize:  1000,
		MaxBatchDelay: time.Millisecond,
		JournalBytes:  DefaultJournalBytes,
	}
}

// Validate reports the first problem with c, or nil. Zero durations and
// sizes are valid and mean the default.
func (c Config) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("store: config: Path is required")
	case c.OpenTimeout < 0:
		return fmt.Errorf("store: config: OpenTimeout %v is negative", c.OpenTimeout)
	case c.MaxBatchSize < 0:
		return fmt.Errorf("store: config: MaxBatchSize %d is negative", c.MaxBatchSize)
	case c.MaxBatchDelay < 0:
		return fmt.Errorf("store: config: MaxBatchDelay %v is negative", c.MaxBatchDelay)
	}
	return nil
}

// withDefaults returns c with zero fields replaced by their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.OpenTimeout == 0 {
		c.OpenTimeout = d.OpenTimeout
	}
	if c.MaxBatchSize == 0 {
		c.MaxBatchSize = d.MaxBatchSize
	}
	if c.MaxBatchDelay == 0 {
		c.MaxBatchDelay = d.MaxBatchDelay
	}
	if c.JournalBytes == 0 {
		c.JournalBytes = d.JournalBytes
	}
	return c
}

// DB is an open store file. It is safe for concurrent use by multiple
// goroutines. Reads (Get, ForEach, Len) run concurrently with each other and
// with one writer; writes (Write, WriteSync) are serialized by bbolt.
type DB struct {
	path string
	bolt *bolt.DB

	journalMax int        // Config.JournalBytes; negative: no journal
	wmu        sync.Mutex // held by Write and DeleteUnchanged across commit and overlay update
	ov         overlay

	mu     sync.Mutex  // serializes Close
	closed atomic.Bool // set by Close; never blocks readers
}

// Path returns the file path the DB was opened with. It never blocks and is
// valid after Close.
func (db *DB) Path() string { return db.path }

// Write applies ops to kind in one read-write transaction, so they are
// written all or nothing, with one fsync. It is the periodic flush.
//
// Ops are checked before the transaction begins: an empty key fails the whole
// call with ErrEmptyKey and nothing is written. Write blocks while another
// write transaction runs. ctx is checked before and once the write lock is
// held; a canceled ctx writes nothing. Once applying has started the
// transaction runs to completion. Writing no ops is a no-op (no fsync).
// Write keeps no reference to ops or their slices once it returns, so the
// caller may reuse them. Write is safe for concurrent use.
func (db *DB) Write(ctx context.Context, kind Kind, ops []Op) error {
	if err := db.checkWrite(ctx, kind, ops); err != nil {
		return fmt.Errorf("store: write %d ops to %s: %w", len(ops), kind, err)
	}
	if len(ops) == 0 {
		return nil
	}
	if db.journalMax < 0 {
		err := db.bolt.Update(func(tx *bolt.Tx) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			return apply(tx, kind, ops)
		})
		if err != nil {
			return fmt.Errorf("store: write %d ops to %s in %s: %w", len(ops), kind, db.path, db.mapErr(err))
		}
		return nil
	}
	enc, own := encodeEntryOps(kind, ops, true)
	db.wmu.Lock()
	defer db.wmu.Unlock()
	direct := db.ov.size()+len(enc) > db.journalMax
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !direct {
			return appendEntry(tx, enc)
		}
		if _, err := fold(tx); err != nil {
			return err
		}
		return apply(tx, kind, ops)
	})
	if err != nil {
		return fmt.Errorf("store: write %d ops to %s in %s: %w", len(ops), kind, db.path, db.mapErr(err))
	}
	if direct {
		db.ov.reset()
		return nil
	}
	// The overlay keeps slices of enc, which nothing else holds or changes.
	db.ov.add(kind, own, len(enc))
	return nil
}

// DeleteUnchanged deletes, in one transaction, each op.Key of kind whose
// stored value still equals op.Value, and returns how many it deleted. A
// record written again since the caller read it is kept: a background
// clean-up can never delete what a concurrent writer just stored.
func (db *DB) DeleteUnchanged(ctx context.Context, kind Kind, ops []Op) (int, error) {
	if err := db.checkWrite(ctx, kind, ops); err != nil {
		return 0, fmt.Errorf("store: delete %d records of %s: %w", len(ops), kind, err)
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	n := 0
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		n = 0
		if db.journalMax >= 0 {
			if _, err := fold(tx); err != nil {
				return err
			}
		}
		b := tx.Bucket([]byte(kind))
		if b == nil {
			return fmt.Errorf("%w: %q", ErrBadKind, kind)
		}
		for _, op := range ops {
			if v := b.Get(op.Key); v != nil && bytes.Equal(v, op.Value) {
				if err := b.Delete(op.Key); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: delete %d records of %s in %s: %w", len(ops), kind, db.path, db.mapErr(err))
	}
	db.ov.reset()
	return n, nil
}

// WriteSync applies ops to kind through bbolt's DB.Batch, so concurrent
// callers share one commit and one fsync (group commit). It returns after
// the commit, when the ops are durable (unless Config.NoSync is set).
//
// The ops of one call are applied all or nothing. Ops are checked first,
// as in Write, so a bad call never fails a batch it would have shared. A
// call waits up to Config.MaxBatchDelay for others to join, then for the
// commit; ctx is checked before joining and when the batch applies this
// call's ops, but the wait for a started commit is not cut short by ctx.
// bbolt may apply a call's ops more than once when a batch is retried, which
// is harmless because puts and deletes are idempotent. WriteSync is safe for
// concurrent use.
func (db *DB) WriteSync(ctx context.Context, kind Kind, ops []Op) error {
	if err := db.checkWrite(ctx, kind, ops); err != nil {
		return fmt.Errorf("store: sync write %d ops to %s: %w", len(ops), kind, err)
	}
	if len(ops) == 0 {
		return nil
	}
	// A journaled record is newer than the bucket's, so these ops, which
	// go straight to the bucket, first fold the journal: otherwise an older
	// journaled value of the same key would win over them.
	err := db.bolt.Batch(func(tx *bolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if db.journalMax >= 0 {
			if _, err := fold(tx); err != nil {
				return err
			}
		}
		return apply(tx, kind, ops)
	})
	if err != nil {
		return fmt.Errorf("store: sync write %d ops to %s in %s: %w", len(ops), kind, db.path, db.mapErr(err))
	}
	if db.journalMax >= 0 && db.ov.size() > 0 {
		// The batch ran outside db.wmu, so a Write may have journaled more
		// since its fold: the overlay is rebuilt from the bucket, not just
		// emptied. Until then Get may return the older value of a key these
		// ops wrote.
		return db.reloadOverlay(false)
	}
	return nil
}

// checkWrite validates a write before any transaction starts.
func (db *DB) checkWrite(ctx context.Context, kind Kind, ops []Op) error {
	if db.isClosed() {
		return ErrClosed
	}
	if !kind.valid() {
		return fmt.Errorf("%w %q", ErrBadKind, kind)
	}
	for i := range ops {
		switch {
		case len(ops[i].Key) == 0:
			return fmt.Errorf("op %d: %w", i, ErrEmptyKey)
		// bbolt would refuse these inside the transaction; a journaled op
		// must be refused before it is journaled, or every fold would fail.
		case len(ops[i].Key) > bolt.MaxKeySize:
			return fmt.Errorf("op %d: key of %d bytes: %w", i, len(ops[i].Key), ErrTooLarge)
		case len(ops[i].Value) > bolt.MaxValueSize:
			return fmt.Errorf("op %d: value of %d bytes: %w", i, len(ops[i].Value), ErrTooLarge)
		}
	}
	return ctx.Err()
}

// apply runs ops against kind's bucket in tx.
func apply(tx *bolt.Tx, kind Kind, ops []Op) error {
	b := tx.Bucket([]byte(kind))
	if b == nil {
		return fmt.Errorf("bucket %q missing", kind)
	}
	for i, op := range ops {
		var err error
		if op.Delete {
			err = b.Delete(op.Key)
		} else {
			err = b.Put(op.Key, op.Value)
		}
		if err != nil {
			return fmt.Errorf("op %d (key %q): %w", i, op.Key, err)
		}
	}
	return nil
}

// Get returns a copy of the value stored under key in kind, or an error
// wrapping ErrNotFound. A record stored with an empty value returns a
// non-nil empty slice. Get does not block on writers and is safe for
// concurrent use.
func (db *DB) Get(kind Kind, key []byte) ([]byte, error) {
	if err := db.checkRead(kind); err != nil {
		return nil, fmt.Errorf("store: get %q from %s: %w", key, kind, err)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("store: get from %s: %w", kind, ErrEmptyKey)
	}
	ov, ok, indexed := db.ov.get(kind, key)
	if !indexed {
		// The first read since Open that the journal could answer: index
		// it from now on.
		if err := db.reloadOverlay(true); err != nil {
			return nil, fmt.Errorf("store: get %q from %s: %w", key, kind, err)
		}
		ov, ok, _ = db.ov.get(kind, key)
	}
	if ok {
		if ov.deleted {
			return nil, fmt.Errorf("store: get %q from %s: %w", key, kind, ErrNotFound)
		}
		return append([]byte{}, ov.value...), nil
	}
	var v []byte
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(kind))
		if b == nil {
			return fmt.Errorf("bucket %q missing", kind)
		}
		if got := b.Get(key); got != nil {
			v = bytes.Clone(got)
			if v == nil {
				v = []byte{}
			}
			return nil
		}
		return ErrNotFound
	})
	if err != nil {
		return nil, fmt.Errorf("store: get %q from %s: %w", key, kind, db.mapErr(err))
	}
	return v, nil
}

// ForEach calls fn for each record of kind in key order, inside one read
// transaction, so fn sees a consistent snapshot. k and v are only valid
// during the call and must not be modified; copy them to keep them. An error
// from fn stops the iteration and is returned unwrapped. fn must not call
// Write or WriteSync on the same DB while a commit needs to grow the file,
// or it may deadlock (bbolt remaps the file under a lock readers hold).
// ForEach is safe for concurrent use.
func (db *DB) ForEach(kind Kind, fn func(k, v []byte) error) error {
	if err := db.checkRead(kind); err != nil {
		return fmt.Errorf("store: for each in %s: %w", kind, err)
	}
	if err := db.foldJournal(); err != nil {
		return fmt.Errorf("store: for each in %s: %w", kind, err)
	}
	var fnErr error
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(kind))
		if b == nil {
			return fmt.Errorf("bucket %q missing", kind)
		}
		return b.ForEach(func(k, v []byte) error {
			if err := fn(k, v); err != nil {
				fnErr = err
				return err
			}
			return nil
		})
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("store: for each in %s: %w", kind, db.mapErr(err))
	}
	return nil
}

// Len returns the number of records in kind. It walks the bucket's pages, so
// it costs time proportional to the bucket's size. It is safe for
// concurrent use.
func (db *DB) Len(kind Kind) (int, error) {
	if err := db.checkRead(kind); err != nil {
		return 0, fmt.Errorf("store: len of %s: %w", kind, err)
	}
	if err := db.foldJournal(); err != nil {
		return 0, fmt.Errorf("store: len of %s: %w", kind, err)
	}
	var n int
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(kind))
		if b == nil {
			return fmt.Errorf("bucket %q missing", kind)
		}
		n = b.Stats().KeyN
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: len of %s: %w", kind, db.mapErr(err))
	}
	return n, nil
}

// Size returns the current size of the file in bytes. bbolt grows the file
// in steps (doubling, then 16 MiB at a time) and never shrinks it; freed
// pages are reused. Size is safe for concurrent use.
func (db *DB) Size() (int64, error) {
	if db.isClosed() {
		return 0, fmt.Errorf("store: size of %s: %w", db.path, ErrClosed)
	}
	fi, err := os.Stat(db.path)
	if err != nil {
		return 0, fmt.Errorf("store: size of %s: %w", db.path, err)
	}
	return fi.Size(), nil
}

// Close waits for running transactions to finish, then closes the file and
// releases its lock. Calling Close again returns nil. Every other method
// returns ErrClosed afterwards, except Path.
func (db *DB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed.Swap(true) {
		return nil
	}
	if err := db.bolt.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", db.path, err)
	}
	return nil
}

// checkRead validates a read before its transaction starts.
func (db *DB) checkRead(kind Kind) error {
	if db.isClosed() {
		return ErrClosed
	}
	if !kind.valid() {
		return fmt.Errorf("%w %q", ErrBadKind, kind)
	}
	return nil
}

func (db *DB) isClosed() bool { return db.closed.Load() }

// mapErr turns bbolt's "not open" error, seen when Close races a call, into
// ErrClosed.
func (db *DB) mapErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}
