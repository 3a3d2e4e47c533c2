package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// The journal makes the periodic flush cheap. Records are keyed by policy
// and key, so the records of one flush land on pages all over a bucket's
// b-tree, and bbolt rewrites every page it touches: a flush of a few hundred
// records in a bucket of a few thousand rewrote most of the file, ten times
// a second. Write instead appends its ops, encoded as one value, to the
// journal bucket, whose keys only grow, so a flush writes about as many
// bytes as its records hold. Once the journal holds more than
// Config.JournalBytes, the next Write folds it into the kinds' buckets in
// the same transaction as its own ops: each touched page is then written
// once for many flushes.
//
// The journal bucket is the truth; an in-memory overlay mirrors it for
// reads. Get looks in the overlay first. ForEach, Len and DeleteUnchanged
// fold the journal first, so they read the buckets alone. Open folds what a
// previous process left in the journal, after validating every entry.

// journalBucket names the bucket of journal entries. It is not a Kind:
// callers cannot read or write it.
var journalBucket = []byte("journal")

// DefaultJournalBytes is the default for Config.JournalBytes. 4 MiB
// writes 15% fewer bytes per flush than 1 MiB and costs 3 MiB more memory
// (BenchmarkFlush).
const DefaultJournalBytes = 4 << 20

// journalEntryVersion starts every journal entry.
const journalEntryVersion = 1

// Op flags in a journal entry.
const (
	entryPut    = 0
	entryDelete = 1
)

// encodeEntry encodes ops of kind as one journal entry: the version byte,
// the kind's length and name, the number of ops, then each op as a flag
// byte, the key's length and the key and, for a put, the value's length and
// the value. Lengths are uvarints.
func encodeEntry(kind Kind, ops []Op) []byte {
	b, _ := encodeEntryOps(kind, ops, false)
	return b
}

// encodeEntryOps is encodeEntry; with own set it also returns ops whose
// keys and values alias the entry, for the overlay, so Write need not
// decode what it just encoded.
func encodeEntryOps(kind Kind, ops []Op, own bool) ([]byte, []Op) {
	n := 1 + binary.MaxVarintLen64*2 + len(kind)
	for i := range ops {
		n += 1 + 2*binary.MaxVarintLen64 + len(ops[i].Key) + len(ops[i].Value)
	}
	// b never grows past n, so slices of it taken below stay valid.
	b := make([]byte, 0, n)
	var out []Op
	if own {
		out = make([]Op, len(ops))
	}
	field := func(v []byte) []byte {
		b = binary.AppendUvarint(b, uint64(len(v)))
		start := len(b)
		b = append(b, v...)
		return b[start:len(b):len(b)]
	}
	b = append(b, journalEntryVersion)
	b = binary.AppendUvarint(b, uint64(len(kind)))
	b = append(b, kind...)
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for i := range ops {
		op := &ops[i]
		if op.Delete {
			b = append(b, entryDelete)
			k := field(op.Key)
			if own {
				out[i] = Op{Key: k, Delete: true}
			}
			continue
		}
		b = append(b, entryPut)
		k := field(op.Key)
		v := field(op.Value)
		if own {
			out[i] = Op{Key: k, Value: v}
		}
	}
	return b, out
}

// errEntry is wrapped by decodeEntry's errors.
var errEntry = errors.New("bad journal entry")

// decodeEntry parses a journal entry. The ops' keys and values alias b. It
// rejects an unknown version or kind, an unknown op flag, an empty key,
// lengths past the end and trailing bytes; a put's value may be empty.
func decodeEntry(b []byte) (Kind, []Op, error) {
	if len(b) == 0 || b[0] != journalEntryVersion {
		return "", nil, fmt.Errorf("%w: no version %d byte", errEntry, journalEntryVersion)
	}
	r := entryReader{b: b[1:]}
	kind := Kind(r.bytes("kind"))
	if r.err == nil && !kind.valid() {
		r.err = fmt.Errorf("%w: kind %q", errEntry, kind)
	}
	n := r.uvarint("op count")
	// Each op takes at least three bytes (flag, key length, one key byte),
	// so a count beyond that is a lie that must not size an allocation.
	if r.err == nil && n > uint64(len(r.b))/3 {
		r.err = fmt.Errorf("%w: %d ops in %d bytes", errEntry, n, len(r.b))
	}
	if r.err != nil {
		return "", nil, r.err
	}
	ops := make([]Op, n)
	for i := range ops {
		flag := r.byte("op flag")
		key := r.bytes("key")
		if r.err == nil && len(key) == 0 {
			r.err = fmt.Errorf("%w: op %d: %w", errEntry, i, ErrEmptyKey)
		}
		switch {
		case r.err != nil:
		case flag == entryPut:
			v := r.bytes("value")
			ops[i] = Op{Key: key, Value: v}
		case flag == entryDelete:
			ops[i] = Op{Key: key, Delete: true}
		default:
			r.err = fmt.Errorf("%w: op %d: flag %d", errEntry, i, flag)
		}
		if r.err != nil {
			return "", nil, r.err
		}
	}
	if len(r.b) != 0 {
		return "", nil, fmt.Errorf("%w: %d trailing bytes", errEntry, len(r.b))
	}
	return kind, ops, nil
}

// entryReader reads the fields of a journal entry; the first error sticks.
type entryReader struct {
	b   []byte
	err error
}

func (r *entryReader) byte(what string) byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = fmt.Errorf("%w: %s: truncated", errEntry, what)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *entryReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("%w: %s: bad length", errEntry, what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// bytes reads a length-prefixed field. The result is never nil, so an
// empty put value stays an empty value.
func (r *entryReader) bytes(what string) []byte {
	n := r.uvarint(what)
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: %s: %d bytes, %d left", errEntry, what, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// overlay mirrors the journal bucket: per kind, the newest journaled value
// of each key, or a delete. Writers change it under DB.wmu after their
// commit; readers take mu. The index of keys is only kept once a Get has
// needed it: until then only the journal's size is, since a limiter with
// every key in memory never reads the store after Open, and building the
// index was a sixth of every Write's CPU.
type overlay struct {
	mu      sync.RWMutex
	indexed bool // kinds is kept
	kinds   map[Kind]map[string]overlayValue
	bytes   int // encoded size of the entries in the journal bucket
	folds   uint64
}

type overlayValue struct {
	value   []byte
	deleted bool
}

// add records the ops of one committed entry; their slices must not change.
func (o *overlay) add(kind Kind, ops []Op, size int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.bytes += size
	if !o.indexed {
		return
	}
	if o.kinds == nil {
		o.kinds = make(map[Kind]map[string]overlayValue)
	}
	m := o.kinds[kind]
	if m == nil {
		m = make(map[string]overlayValue, len(ops))
		o.kinds[kind] = m
	}
	for _, op := range ops {
		m[string(op.Key)] = overlayValue{value: op.Value, deleted: op.Delete}
	}
}

// reset empties the overlay once the journal has been folded.
func (o *overlay) reset() {
	o.mu.Lock()
	if o.bytes > 0 {
		o.folds++
	}
	o.kinds = nil
	o.bytes = 0
	o.mu.Unlock()
}

// JournalStats reports the bytes of ops the journal holds now and how many
// times it was folded into the buckets since Open (for metrics). Both are 0
// without a journal.
func (db *DB) JournalStats() (bytes int, folds uint64) {
	db.ov.mu.RLock()
	defer db.ov.mu.RUnlock()
	return db.ov.bytes, db.ov.folds
}

// get returns the journaled value of key, and whether there is one. Not
// indexed (and the journal not empty), it reports neither but !indexed.
func (o *overlay) get(kind Kind, key []byte) (v overlayValue, ok, indexed bool) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if !o.indexed && o.bytes > 0 {
		return overlayValue{}, false, false
	}
	v, ok = o.kinds[kind][string(key)]
	return v, ok, true
}

func (o *overlay) size() int {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.bytes
}

// appendEntry stores enc as the next journal entry.
func appendEntry(tx *bolt.Tx, enc []byte) error {
	j := tx.Bucket(journalBucket)
	if j == nil {
		return fmt.Errorf("bucket %q missing", journalBucket)
	}
	seq, err := j.NextSequence()
	if err != nil {
		return err
	}
	return j.Put(binary.BigEndian.AppendUint64(nil, seq), enc)
}

// fold applies every journal entry, oldest first, to the kinds' buckets and
// empties the journal, all in tx. It reports whether there was anything to
// fold. An entry that does not decode fails the transaction with
// ErrCorrupt, leaving the file as it was.
func fold(tx *bolt.Tx) (bool, error) {
	j := tx.Bucket(journalBucket)
	if j == nil {
		return false, fmt.Errorf("bucket %q missing", journalBucket)
	}
	c := j.Cursor()
	k, _ := c.First()
	if k == nil {
		return false, nil
	}
	// Only the last op on each key is applied, in key order: a journal
	// holds many flushes of the same hot keys, and sorted puts walk the
	// b-tree once instead of seeking all over it.
	last := map[Kind]map[string]Op{}
	for ; k != nil; k, _ = c.Next() {
		// The entry is copied off the mapped file: the puts below must not
		// alias pages that this transaction frees.
		v := bytes.Clone(j.Get(k))
		kind, ops, err := decodeEntry(v)
		if err != nil {
			return false, fmt.Errorf("%w: journal entry %x: %w", ErrCorrupt, k, err)
		}
		m := last[kind]
		if m == nil {
			m = make(map[string]Op, len(ops))
			last[kind] = m
		}
		for _, op := range ops {
			m[string(op.Key)] = op
		}
	}
	kinds := slices.Sorted(maps.Keys(last))
	for _, kind := range kinds {
		m := last[kind]
		ops := make([]Op, 0, len(m))
		for _, key := range slices.Sorted(maps.Keys(m)) {
			ops = append(ops, m[key])
		}
		if err := apply(tx, kind, ops); err != nil {
			return false, fmt.Errorf("fold journal into %s: %w", kind, err)
		}
	}
	if err := tx.DeleteBucket(journalBucket); err != nil {
		return false, err
	}
	_, err := tx.CreateBucket(journalBucket)
	return true, err
}

// checkJournal decodes every journal entry without applying any, for Open's
// read-only validation.
func checkJournal(tx *bolt.Tx) error {
	j := tx.Bucket(journalBucket)
	if j == nil {
		return nil
	}
	return j.ForEach(func(k, v []byte) error {
		if _, _, err := decodeEntry(v); err != nil {
			return fmt.Errorf("journal entry %x: %w", k, err)
		}
		return nil
	})
}

// foldJournal folds the journal in a transaction of its own, if the overlay
// says it holds anything.
func (db *DB) foldJournal() error {
	if db.journalMax < 0 {
		return nil
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	if db.ov.size() == 0 {
		return nil
	}
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		_, err := fold(tx)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: fold journal of %s: %w", db.path, db.mapErr(err))
	}
	db.ov.reset()
	return nil
}

// reloadOverlay rebuilds the overlay from the journal bucket, with its
// index when index is set or it was kept already. WriteSync calls it after
// its batch may have folded the journal outside db.wmu; Get, to start the
// index.
func (db *DB) reloadOverlay(index bool) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	var entries [][]byte
	err := db.bolt.View(func(tx *bolt.Tx) error {
		j := tx.Bucket(journalBucket)
		if j == nil {
			return fmt.Errorf("bucket %q missing", journalBucket)
		}
		return j.ForEach(func(_, v []byte) error {
			entries = append(entries, bytes.Clone(v))
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("store: read journal of %s: %w", db.path, db.mapErr(err))
	}
	// Built aside and swapped in at once, so that a concurrent Get never
	// sees half an index.
	db.ov.mu.RLock()
	fresh := overlay{indexed: index || db.ov.indexed}
	db.ov.mu.RUnlock()
	for _, e := range entries {
		kind, ops, err := decodeEntry(e)
		if err != nil {
			return fmt.Errorf("store: read journal of %s: %w: %w", db.path, ErrCorrupt, err)
		}
		fresh.add(kind, ops, len(e))
	}
	size := fresh.bytes
	db.ov.mu.Lock()
	if db.ov.bytes > 0 && size < db.ov.bytes {
		db.ov.folds++ // WriteSync folded the journal
	}
	db.ov.kinds, db.ov.bytes, db.ov.indexed = fresh.kinds, fresh.bytes, fresh.indexed
	db.ov.mu.Unlock()
	return nil
}
