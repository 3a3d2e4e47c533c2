package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// fullCheckLimit is the largest file whose every branch and leaf page Open
// reads while validating. Reading them costs about as much as reading the
// file; larger files get only the cheap checks. See the package doc.
const fullCheckLimit = 64 << 20

// Open opens the store file at cfg.Path, creating it (and its parent
// directory, mode 0o750) if missing, and creates the buckets and the format
// record on first use. It blocks up to cfg.OpenTimeout while another
// process (or another DB in this process) holds the file.
//
// An existing file that is not a usable store (not a bbolt file, truncated,
// both meta pages bad, pages that cannot be read, a missing or unsupported
// format record, a directory) yields an error wrapping ErrCorrupt whose
// message names the path and the problem. Errors from the file system, such
// as permission denied, are wrapped as they are (check with errors.Is and
// fs.ErrPermission). An existing file is first opened read-only and
// validated, so Open never writes to, truncates or deletes a file that fails
// to open. Panics and memory faults raised by bbolt while opening or
// validating become ErrCorrupt errors.
//
// A zero-length file holds no data; bbolt treats it as new and Open
// initializes it.
func Open(cfg Config) (*DB, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	path := cfg.Path

	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("store: open %s: create parent directory: %w", path, err)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// A new file; bbolt creates it.
	case err != nil:
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("store: open %s: %w: not a regular file (mode %v)", path, ErrCorrupt, fi.Mode().Type())
	case fi.Size() > 0:
		if err := checkReadOnly(path, cfg.OpenTimeout); err != nil {
			return nil, err
		}
	}

	bdb, err := openBolt(path, &bolt.Options{
		Timeout:      cfg.OpenTimeout,
		NoSync:       cfg.NoSync,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return nil, openErr(path, err)
	}
	bdb.MaxBatchSize = cfg.MaxBatchSize
	bdb.MaxBatchDelay = cfg.MaxBatchDelay
	if err := initLayout(bdb); err != nil {
		_ = bdb.Close()
		return nil, openErr(path, err)
	}
	// What a previous process journaled goes into the buckets now, so the
	// overlay starts empty (and a DB without a journal finds none).
	// checkReadOnly decoded every entry already.
	err = bdb.Update(func(tx *bolt.Tx) error {
		_, err := fold(tx)
		return err
	})
	if err != nil {
		_ = bdb.Close()
		return nil, openErr(path, fmt.Errorf("fold journal: %w", err))
	}
	return &DB{path: path, bolt: bdb, journalMax: cfg.JournalBytes}, nil
}

// checkReadOnly opens an existing file read-only and validates it, so that
// nothing is written to a file that turns out to be corrupt.
func checkReadOnly(path string, timeout time.Duration) error {
	bdb, err := openBolt(path, &bolt.Options{
		ReadOnly: true,
		Timeout:  timeout,
		// The freelist page is read by the read-write open that follows,
		// which also recovers panics and writes nothing before reading it.
		// Not reading it here lets validate report a truncated file as such.
		PreLoadFreelist: false,
	})
	if err != nil {
		return openErr(path, err)
	}
	defer func() { _ = bdb.Close() }()
	if _, err := validate(bdb, true); err != nil {
		return openErr(path, err)
	}
	return nil
}

// initLayout creates missing buckets and the format record. It runs on the
// read-write handle after checkReadOnly passed (or on a new file).
func initLayout(bdb *bolt.DB) error {
	complete, err := validate(bdb, false)
	if err != nil || complete {
		return err
	}
	return bdb.Update(func(tx *bolt.Tx) error {
		for _, k := range layout {
			if _, err := tx.CreateBucketIfNotExists([]byte(k)); err != nil {
				return fmt.Errorf("create bucket %q: %w", k, err)
			}
		}
		// A new file, or an older layout validate accepted: either way it
		// now has every bucket of this version.
		return tx.Bucket([]byte(KindMeta)).Put(formatKey, encodeFormat(formatVersion))
	})
}

// openBolt calls bolt.Open, turning a panic or memory fault inside it into
// an ErrCorrupt error. On a panic the file descriptor is closed, which
// releases the file lock; bbolt's mapping of the file cannot be reached and
// is leaked.
func openBolt(path string, opts *bolt.Options) (bdb *bolt.DB, err error) {
	var f *os.File
	opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		var err error
		f, err = os.OpenFile(name, flag, perm)
		return f, err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if f != nil {
				_ = f.Close()
			}
			bdb, err = nil, fmt.Errorf("%w: bbolt panicked while opening: %v", ErrCorrupt, r)
		}
	}()
	return bolt.Open(path, 0o600, opts)
}

// validate checks that bdb looks like a store this build can use. It reports
// complete=false with a nil error for a bbolt file holding no buckets at all
// (a new file, or one whose first transaction never committed); that file
// still needs its buckets. With full set it reads every branch and leaf page
// of the known buckets if the file is at most fullCheckLimit bytes. Panics
// and memory faults become ErrCorrupt errors.
func validate(bdb *bolt.DB, full bool) (complete bool, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			complete, err = false, fmt.Errorf("%w: bbolt panicked while reading: %v", ErrCorrupt, r)
		}
	}()
	err = bdb.View(func(tx *bolt.Tx) error {
		fi, err := os.Stat(bdb.Path())
		if err != nil {
			return err
		}
		if tx.Size() > fi.Size() {
			return fmt.Errorf("%w: truncated: file is %d bytes, its meta page says %d", ErrCorrupt, fi.Size(), tx.Size())
		}
		full = full && fi.Size() <= fullCheckLimit

		m := tx.Bucket([]byte(KindMeta))
		if m == nil {
			if k, _ := tx.Cursor().First(); k != nil {
				return fmt.Errorf("%w: not a limiterd store: no %q bucket, but a bucket named %q", ErrCorrupt, KindMeta, k)
			}
			return nil // empty bbolt file
		}
		raw := m.Get(formatKey)
		if raw == nil {
			return fmt.Errorf("%w: no format record in the %q bucket", ErrCorrupt, KindMeta)
		}
		v, err := decodeFormat(raw)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if v < oldestFormatVersion || v > formatVersion {
			return fmt.Errorf("%w: unsupported format version %d (this build reads %d to %d)", ErrCorrupt, v, oldestFormatVersion, formatVersion)
		}

		complete = v == formatVersion
		for _, k := range layout {
			b := tx.Bucket([]byte(k))
			if b == nil {
				complete = false
				continue
			}
			if err := walk(b, full); err != nil {
				return fmt.Errorf("%w: bucket %q: %w", ErrCorrupt, k, err)
			}
		}
		if err := checkJournal(tx); err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return nil
	})
	return complete, err
}

// walk reads b's pages: all of them when full is set, else the first and
// last leaf and the branch pages above them. bbolt checks each page's id and
// type as it reads it and panics on a mismatch.
func walk(b *bolt.Bucket, full bool) error {
	c := b.Cursor()
	if !full {
		c.First()
		c.Last()
		return nil
	}
	var prev []byte
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if prev != nil && bytes.Compare(prev, k) >= 0 {
			return fmt.Errorf("keys out of order: %q then %q", prev, k)
		}
		prev = k
	}
	return nil
}

// openErr wraps an error from opening path. Errors from the operating
// system (permission denied, out of memory) and lock timeouts keep their
// identity; everything else bbolt reports about an existing file (bad magic,
// version or checksum, "file size too small", which it returns as a plain
// string) means the file is not usable and wraps ErrCorrupt.
func openErr(path string, err error) error {
	var pathErr *fs.PathError
	var errno syscall.Errno
	switch {
	case errors.Is(err, ErrCorrupt):
		return fmt.Errorf("store: open %s: %w", path, err)
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("store: open %s: file is locked by another process: %w", path, err)
	case errors.As(err, &pathErr), errors.As(err, &errno):
		return fmt.Errorf("store: open %s: %w", path, err)
	}
	return fmt.Errorf("store: open %s: %w: %w", path, ErrCorrupt, err)
}
