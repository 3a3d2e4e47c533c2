package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// testConfig returns a config for a file under t.TempDir().
func testConfig(t testing.TB) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "data", "limiterd.db")
	cfg.OpenTimeout = 100 * time.Millisecond
	return cfg
}

// mustOpen opens a new store under t.TempDir() and closes it at cleanup.
func mustOpen(t testing.TB) *DB {
	t.Helper()
	return mustOpenConfig(t, testConfig(t))
}

func mustOpenConfig(t testing.TB, cfg Config) *DB {
	t.Helper()
	db, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open(%s) = %v", cfg.Path, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return db
}

// reopen closes db and opens its file again.
func reopen(t testing.TB, db *DB) *DB {
	t.Helper()
	if err := db.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	cfg := DefaultConfig()
	cfg.Path = db.Path()
	return mustOpenConfig(t, cfg)
}

func put(k, v string) Op { return Op{Key: []byte(k), Value: []byte(v)} }
func del(k string) Op    { return Op{Key: []byte(k), Delete: true} }

// dump returns kind's records as a map.
func dump(t testing.TB, db *DB, kind Kind) map[string]string {
	t.Helper()
	m := map[string]string{}
	if err := db.ForEach(kind, func(k, v []byte) error {
		m[string(k)] = string(v)
		return nil
	}); err != nil {
		t.Fatalf("ForEach(%s) = %v", kind, err)
	}
	return m
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	db := mustOpen(t)
	if err := db.Write(ctx, KindState, []Op{put("b", "2"), put("a", "1"), put("c", "3"), put("empty", "")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	if err := db.Write(ctx, KindState, []Op{del("b"), put("c", "33"), del("never-existed")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	if err := db.WriteSync(ctx, KindPolicies, []Op{put("uploads", "p")}); err != nil {
		t.Fatalf("WriteSync() = %v", err)
	}

	tests := []struct {
		name    string
		kind    Kind
		key     string
		want    string
		wantErr error
	}{
		{"put", KindState, "a", "1", nil},
		{"overwritten", KindState, "c", "33", nil},
		{"deleted", KindState, "b", "", ErrNotFound},
		{"empty value", KindState, "empty", "", nil},
		{"other kind", KindPolicies, "uploads", "p", nil},
		{"kinds are separate", KindPolicies, "a", "", ErrNotFound},
		{"empty key", KindState, "", "", ErrEmptyKey},
		{"bad kind", Kind("nope"), "a", "", ErrBadKind},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := db.Get(tt.kind, []byte(tt.key))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Get(%s, %q) error = %v, want %v", tt.kind, tt.key, err, tt.wantErr)
			}
			if err == nil && (got == nil || string(got) != tt.want) {
				t.Errorf("Get(%s, %q) = %q (nil %t), want %q", tt.kind, tt.key, got, got == nil, tt.want)
			}
		})
	}

	var keys []string
	if err := db.ForEach(KindState, func(k, _ []byte) error { keys = append(keys, string(k)); return nil }); err != nil {
		t.Fatalf("ForEach() = %v", err)
	}
	if got, want := strings.Join(keys, ","), "a,c,empty"; got != want {
		t.Errorf("ForEach() keys = %s, want %s", got, want)
	}
	if n, err := db.Len(KindState); err != nil || n != 3 {
		t.Errorf("Len(state) = %d, %v, want 3, nil", n, err)
	}
	if n, err := db.Len(KindMeta); err != nil || n != 1 {
		t.Errorf("Len(meta) = %d, %v, want 1 (the format record), nil", n, err)
	}
}

func TestGetReturnsCopy(t *testing.T) {
	db := mustOpen(t)
	if err := db.Write(context.Background(), KindState, []Op{put("k", "value")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	v, _ := db.Get(KindState, []byte("k"))
	v[0] = 'X'
	if v2, _ := db.Get(KindState, []byte("k")); string(v2) != "value" {
		t.Errorf("Get() after changing the returned slice = %q, want %q", v2, "value")
	}
}

func TestForEachStopsOnError(t *testing.T) {
	db := mustOpen(t)
	if err := db.Write(context.Background(), KindState, []Op{put("a", "1"), put("b", "2"), put("c", "3")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	stop := errors.New("stop")
	n := 0
	err := db.ForEach(KindState, func(k, v []byte) error {
		n++
		if string(k) == "b" {
			return stop
		}
		return nil
	})
	if err != stop || n != 2 {
		t.Errorf("ForEach() = %v after %d calls, want %v after 2", err, n, stop)
	}
}

func TestWriteAllOrNothing(t *testing.T) {
	tests := []struct {
		name    string
		ops     []Op
		wantErr error // nil: only check that an error is returned
	}{
		{"empty key", []Op{put("a", "1"), {Key: nil, Value: []byte("x")}, put("c", "3")}, ErrEmptyKey},
		{"empty key on delete", []Op{put("a", "1"), {Key: []byte{}, Delete: true}}, ErrEmptyKey},
		// bbolt's limit, checked before anything is journaled.
		{"key too large", []Op{put("a", "1"), put("b", "2"), {Key: make([]byte, bolt.MaxKeySize+1), Value: []byte("x")}}, ErrTooLarge},
	}
	for _, tt := range tests {
		for _, sync := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sync=%t", tt.name, sync), func(t *testing.T) {
				ctx := context.Background()
				db := mustOpen(t)
				if err := db.Write(ctx, KindState, []Op{put("z", "keep")}); err != nil {
					t.Fatalf("Write() = %v", err)
				}
				write := db.Write
				if sync {
					write = db.WriteSync
				}
				err := write(ctx, KindState, append(tt.ops, del("z")))
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("write() = %v, want %v", err, tt.wantErr)
				}
				if got := dump(t, db, KindState); len(got) != 1 || got["z"] != "keep" {
					t.Errorf("records after failed write = %v, want only z=keep", got)
				}
			})
		}
	}
}

func TestWriteChecks(t *testing.T) {
	db := mustOpen(t)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		kind    Kind
		wantErr error
	}{
		{"bad kind", context.Background(), Kind("limits"), ErrBadKind},
		{"empty kind", context.Background(), Kind(""), ErrBadKind},
		{"canceled", canceled, KindState, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := db.Write(tt.ctx, tt.kind, []Op{put("a", "1")}); !errors.Is(err, tt.wantErr) {
				t.Errorf("Write() = %v, want %v", err, tt.wantErr)
			}
			if err := db.WriteSync(tt.ctx, tt.kind, []Op{put("a", "1")}); !errors.Is(err, tt.wantErr) {
				t.Errorf("WriteSync() = %v, want %v", err, tt.wantErr)
			}
		})
	}
	if n, _ := db.Len(KindState); n != 0 {
		t.Errorf("Len() = %d after rejected writes, want 0", n)
	}
	if err := db.Write(context.Background(), KindState, nil); err != nil {
		t.Errorf("Write(no ops) = %v, want nil", err)
	}
}

func TestWriteSyncConcurrent(t *testing.T) {
	const writers, perWriter = 64, 10
	db := mustOpen(t)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				k := fmt.Sprintf("w%02d/%d", w, i)
				if err := db.WriteSync(context.Background(), KindState, []Op{put(k, k)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("WriteSync() = %v", err)
	}

	db = reopen(t, db)
	got := dump(t, db, KindState)
	if len(got) != writers*perWriter {
		t.Errorf("records after reopen = %d, want %d", len(got), writers*perWriter)
	}
	for k, v := range got {
		if k != v {
			t.Errorf("record %q = %q, want %q", k, v, k)
		}
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	db := mustOpen(t)
	want := map[string]string{}
	var ops []Op
	for i := range 5000 {
		k, v := fmt.Sprintf("default\x00key-%05d", i), fmt.Sprintf("state-%d", i*i)
		want[k] = v
		ops = append(ops, put(k, v))
	}
	if err := db.Write(ctx, KindState, ops); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	if err := db.Write(ctx, KindPolicies, []Op{put("uploads", "100/1m")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	for range 2 {
		db = reopen(t, db)
	}
	if got := dump(t, db, KindState); len(got) != len(want) {
		t.Fatalf("state records after reopen = %d, want %d", len(got), len(want))
	} else {
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("state[%q] = %q, want %q", k, got[k], v)
			}
		}
	}
	if v, err := db.Get(KindPolicies, []byte("uploads")); err != nil || string(v) != "100/1m" {
		t.Errorf("Get(policies, uploads) = %q, %v, want 100/1m, nil", v, err)
	}
}

func TestClosed(t *testing.T) {
	db := mustOpen(t) // the cleanup's second Close must return nil
	if err := db.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	ctx := context.Background()
	checks := map[string]error{
		"Write":     db.Write(ctx, KindState, []Op{put("a", "1")}),
		"WriteSync": db.WriteSync(ctx, KindState, []Op{put("a", "1")}),
		"ForEach":   db.ForEach(KindState, func(k, v []byte) error { return nil }),
	}
	_, checks["Get"] = db.Get(KindState, []byte("a"))
	_, checks["Len"] = db.Len(KindState)
	_, checks["Size"] = db.Size()
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s() after Close = %v, want %v", name, err, ErrClosed)
		}
	}
	if db.Path() == "" {
		t.Errorf("Path() after Close is empty")
	}
}

func TestOpenLocked(t *testing.T) {
	db := mustOpen(t)
	cfg := DefaultConfig()
	cfg.Path = db.Path()
	cfg.OpenTimeout = 50 * time.Millisecond
	db2, err := Open(cfg)
	if err == nil {
		db2.Close()
		t.Fatalf("second Open(%s) = nil, want a lock error", cfg.Path)
	}
	if !strings.Contains(err.Error(), cfg.Path) || errors.Is(err, ErrCorrupt) {
		t.Errorf("second Open() = %v, want a non-corrupt error naming the path", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		ok   bool
	}{
		{"default with path", func(c *Config) { c.Path = "x.db" }, true},
		{"zeros mean defaults", func(c *Config) { *c = Config{Path: "x.db"} }, true},
		{"no path", func(c *Config) {}, false},
		{"negative timeout", func(c *Config) { c.Path = "x.db"; c.OpenTimeout = -1 }, false},
		{"negative batch size", func(c *Config) { c.Path = "x.db"; c.MaxBatchSize = -1 }, false},
		{"negative batch delay", func(c *Config) { c.Path = "x.db"; c.MaxBatchDelay = -1 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.edit(&cfg)
			if err := cfg.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok=%t", err, tt.ok)
			}
		})
	}
	if _, err := Open(Config{}); err == nil {
		t.Errorf("Open(Config{}) = nil error, want one")
	}
}

// validFile writes a closed store with n state records and returns its path.
func validFile(t *testing.T, n int) string {
	t.Helper()
	cfg := testConfig(t)
	db, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	for start := 0; start < n; start += 1000 {
		var ops []Op
		for i := start; i < min(n, start+1000); i++ {
			ops = append(ops, put(fmt.Sprintf("default\x00key-%06d", i), strings.Repeat("v", 100)))
		}
		if err := db.Write(context.Background(), KindState, ops); err != nil {
			t.Fatalf("Write() = %v", err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	return cfg.Path
}

// Offsets into a bbolt meta page: a 16-byte page header, then magic,
// version, page size, flags, root bucket (16), freelist, pgid, txid, checksum.
const (
	metaMagicOff    = 16
	metaPgidOff     = 16 + 40
	metaTxidOff     = 16 + 48
	metaChecksumOff = 16 + 56
)

var pageSize = os.Getpagesize()

func metaField(t *testing.T, b []byte, page, off int) uint64 {
	t.Helper()
	return binary.LittleEndian.Uint64(b[page*pageSize+off:])
}

// writeBoltFile writes a plain bbolt file (not a store) with one bucket.
func writeBoltFile(t *testing.T, path, bucket string) {
	t.Helper()
	b, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("bolt.Open() = %v", err)
	}
	if err := b.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte(bucket))
		return err
	}); err != nil {
		t.Fatalf("Update() = %v", err)
	}
	b.Close()
}

func TestOpenCorrupt(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string) // makes the bad file at path
		want    string                          // in the error message
	}{
		{"random garbage", func(t *testing.T, path string) {
			b := make([]byte, 64<<10)
			for i := range b {
				b[i] = byte(rand.Uint32())
			}
			must(t, os.WriteFile(path, b, 0o600))
		}, "invalid database"},
		{"text file", func(t *testing.T, path string) {
			must(t, os.WriteFile(path, []byte("policies:\n  - name: default\n    limit: 600\n"), 0o600))
		}, "invalid database"},
		{"truncated to half its pages", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 3000), path)
			b := readFile(t, path)
			hwm := metaField(t, b, 0, metaPgidOff)
			must(t, os.Truncate(path, int64(hwm/2)*int64(pageSize)))
		}, "truncated"},
		{"truncated to one page", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 10), path)
			must(t, os.Truncate(path, int64(pageSize)))
		}, "file size too small"},
		{"truncated inside the first page", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 10), path)
			must(t, os.Truncate(path, 100))
		}, "invalid database"},
		{"truncated, meta pages forged to match", func(t *testing.T, path string) {
			// Pages the b-tree needs lie past the end of the file, so
			// reading them faults (SIGBUS) rather than panics.
			copyFile(t, validFile(t, 3000), path)
			b := readFile(t, path)
			keep := metaField(t, b, 0, metaPgidOff) / 4
			for page := range 2 {
				m := b[page*pageSize:]
				binary.LittleEndian.PutUint64(m[metaPgidOff:], keep)
				h := fnv.New64a()
				h.Write(m[metaMagicOff:metaChecksumOff])
				binary.LittleEndian.PutUint64(m[metaChecksumOff:], h.Sum64())
			}
			must(t, os.WriteFile(path, b[:keep*uint64(pageSize)], 0o600))
		}, "panicked"},
		{"both meta pages flipped", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 10), path)
			b := readFile(t, path)
			b[metaTxidOff] ^= 0xff
			b[pageSize+metaTxidOff] ^= 0xff
			must(t, os.WriteFile(path, b, 0o600))
		}, "checksum"},
		{"both meta magics flipped", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 10), path)
			b := readFile(t, path)
			b[metaMagicOff] ^= 0x01
			b[pageSize+metaMagicOff] ^= 0x01
			must(t, os.WriteFile(path, b, 0o600))
		}, "invalid database"},
		{"data pages scrambled", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 3000), path)
			b := readFile(t, path)
			hwm := int(metaField(t, b, 0, metaPgidOff))
			r := rand.New(rand.NewPCG(1, 2))
			for i := 2 * pageSize; i < hwm*pageSize; i++ {
				b[i] = byte(r.Uint32())
			}
			must(t, os.WriteFile(path, b, 0o600))
		}, "panicked"},
		{"bbolt file of another program", func(t *testing.T, path string) {
			writeBoltFile(t, path, "members")
		}, "not a limiterd store"},
		{"future format version", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 10), path)
			b, err := bolt.Open(path, 0o600, nil)
			must(t, err)
			must(t, b.Update(func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(KindMeta)).Put(formatKey, encodeFormat(formatVersion+1))
			}))
			must(t, b.Close())
		}, "unsupported format version 3"},
		{"garbled format record", func(t *testing.T, path string) {
			copyFile(t, validFile(t, 10), path)
			b, err := bolt.Open(path, 0o600, nil)
			must(t, err)
			must(t, b.Update(func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(KindMeta)).Put(formatKey, []byte("v1"))
			}))
			must(t, b.Close())
		}, "format record is 2 bytes"},
		{"directory", func(t *testing.T, path string) {
			must(t, os.Mkdir(path, 0o750))
		}, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "limiterd.db")
			tt.prepare(t, path)
			before := fileSum(t, path)

			cfg := DefaultConfig()
			cfg.Path = path
			cfg.OpenTimeout = 100 * time.Millisecond
			db, err := Open(cfg)
			if err == nil {
				db.Close()
				t.Fatalf("Open() = nil error, want %v", ErrCorrupt)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Open() = %v, want it to wrap %v", err, ErrCorrupt)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open() = %q, want it to name %s and say %q", err, path, tt.want)
			}
			if after := fileSum(t, path); after != before {
				t.Errorf("file changed by a failed Open: sha256 %x, was %x", after, before)
			}
			t.Logf("Open() = %v", err)
		})
	}
}

func TestOpenOneMetaFlippedFallsBack(t *testing.T) {
	ctx := context.Background()
	db := mustOpen(t)
	path := db.Path()
	if err := db.Write(ctx, KindState, []Op{put("k", "old")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	if err := db.Write(ctx, KindState, []Op{put("k", "new")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}

	// Break the newer meta page, as a torn write at a crash would.
	b := readFile(t, path)
	newer := 0
	if metaField(t, b, 1, metaTxidOff) > metaField(t, b, 0, metaTxidOff) {
		newer = 1
	}
	b[newer*pageSize+metaTxidOff+1] ^= 0xff
	must(t, os.WriteFile(path, b, 0o600))

	cfg := DefaultConfig()
	cfg.Path = path
	db = mustOpenConfig(t, cfg)
	if v, err := db.Get(KindState, []byte("k")); err != nil || string(v) != "old" {
		t.Errorf("Get() after losing the newer meta page = %q, %v, want old, nil", v, err)
	}
	if err := db.Write(ctx, KindState, []Op{put("k", "newer")}); err != nil {
		t.Errorf("Write() after fallback = %v", err)
	}
}

func TestOpenEmptyFile(t *testing.T) {
	cfg := testConfig(t)
	must(t, os.MkdirAll(filepath.Dir(cfg.Path), 0o750))
	must(t, os.WriteFile(cfg.Path, nil, 0o600))
	db := mustOpenConfig(t, cfg)
	if err := db.Write(context.Background(), KindState, []Op{put("a", "1")}); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	db = reopen(t, db)
	if v, err := db.Get(KindState, []byte("a")); err != nil || string(v) != "1" {
		t.Errorf("Get() = %q, %v, want 1, nil", v, err)
	}
}

func TestOpenEmptyBoltFile(t *testing.T) {
	// A bbolt file with no buckets: the first transaction never committed.
	cfg := testConfig(t)
	must(t, os.MkdirAll(filepath.Dir(cfg.Path), 0o750))
	b, err := bolt.Open(cfg.Path, 0o600, nil)
	must(t, err)
	must(t, b.Close())
	db := mustOpenConfig(t, cfg)
	if n, err := db.Len(KindMeta); err != nil || n != 1 {
		t.Errorf("Len(meta) = %d, %v, want 1, nil", n, err)
	}
}

func TestOpenPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores file permissions")
	}
	path := validFile(t, 10)
	must(t, os.Chmod(path, 0o000))
	before := fileSum(t, path)
	cfg := DefaultConfig()
	cfg.Path = path
	if db, err := Open(cfg); err == nil {
		db.Close()
		t.Fatalf("Open() = nil error, want permission denied")
	} else if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), path) {
		t.Errorf("Open() = %v, want fs.ErrPermission naming the path", err)
	}
	if after := fileSum(t, path); after != before {
		t.Errorf("file changed by a failed Open")
	}
}

func TestSizeStaysFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 600k keys")
	}
	// Writes of 2,000 ops, about a flush's size. Writes of 20,000 (1.6 MB
	// journal entries, each needing a contiguous run of free pages) made
	// bbolt's hashmap freelist grow the file by one step in some runs.
	const keys, batch = 200_000, 2_000
	cfg := testConfig(t)
	cfg.NoSync = true
	db := mustOpenConfig(t, cfg)
	ctx := context.Background()
	value := bytes.Repeat([]byte("s"), 48)
	var sizes []int64
	for round := range 3 {
		for _, remove := range []bool{false, true} {
			for start := 0; start < keys; start += batch {
				ops := make([]Op, 0, batch)
				for i := start; i < start+batch; i++ {
					ops = append(ops, Op{Key: fmt.Appendf(nil, "default\x00r%d-key-%07d", round, i), Value: value, Delete: remove})
				}
				if err := db.Write(ctx, KindState, ops); err != nil {
					t.Fatalf("Write() = %v", err)
				}
			}
		}
		if n, _ := db.Len(KindState); n != 0 {
			t.Fatalf("Len() after round %d = %d, want 0", round+1, n)
		}
		size, err := db.Size()
		if err != nil {
			t.Fatalf("Size() = %v", err)
		}
		sizes = append(sizes, size)
	}
	t.Logf("file size after rounds 1..3: %v", sizes)
	if sizes[2] > sizes[0]*12/10 {
		t.Errorf("Size() after round 3 = %d, want at most 1.2 x %d (round 1)", sizes[2], sizes[0])
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	must(t, os.WriteFile(to, readFile(t, from), 0o600))
}

// fileSum hashes a file, or names a directory, so a test can tell whether
// Open changed it.
func fileSum(t *testing.T, path string) [sha256.Size]byte {
	t.Helper()
	fi, err := os.Stat(path)
	must(t, err)
	if fi.IsDir() {
		return sha256.Sum256([]byte("dir"))
	}
	return sha256.Sum256(readFile(t, path))
}

func FuzzDecodeFormat(f *testing.F) {
	f.Add(encodeFormat(formatVersion))
	f.Add(encodeFormat(0))
	f.Add([]byte("LMTD"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decodeFormat(b)
		if err != nil {
			return
		}
		if v == 0 {
			t.Fatalf("decodeFormat(%x) = 0, nil; version 0 must be rejected", b)
		}
		if got := encodeFormat(v); !bytes.Equal(got, b) {
			t.Fatalf("encodeFormat(decodeFormat(%x)) = %x", b, got)
		}
	})
}

func BenchmarkWrite(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("ops=%d", n), func(b *testing.B) {
			db := mustOpen(b)
			value := bytes.Repeat([]byte("s"), 64)
			ops := make([]Op, n)
			for i := range ops {
				ops[i] = Op{Key: fmt.Appendf(nil, "default\x00key-%07d", i), Value: value}
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := db.Write(ctx, KindState, ops); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

func BenchmarkWriteSync(b *testing.B) {
	db := mustOpen(b)
	value := bytes.Repeat([]byte("s"), 64)
	ctx := context.Background()
	var next sync.Mutex
	id := 0
	b.ReportAllocs()
	b.SetParallelism(16) // 16 x GOMAXPROCS callers share commits
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		id++
		me := id
		next.Unlock()
		i := 0
		for pb.Next() {
			i++
			op := Op{Key: fmt.Appendf(nil, "default\x00g%d-%d", me, i%10000), Value: value}
			if err := db.WriteSync(ctx, KindState, []Op{op}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestDeleteUnchanged(t *testing.T) {
	db := mustOpen(t)
	ctx := context.Background()
	if err := db.Write(ctx, KindState, []Op{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b"), Value: []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	// b was written again after the caller read "1".
	if err := db.Write(ctx, KindState, []Op{{Key: []byte("b"), Value: []byte("2")}}); err != nil {
		t.Fatal(err)
	}
	n, err := db.DeleteUnchanged(ctx, KindState, []Op{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b"), Value: []byte("1")}, {Key: []byte("c"), Value: []byte("1")}})
	if err != nil || n != 1 {
		t.Fatalf("DeleteUnchanged() = %d, %v, want 1, nil", n, err)
	}
	if _, err := db.Get(KindState, []byte("a")); !errors.Is(err, ErrNotFound) {
		t.Errorf("a survived: %v", err)
	}
	if v, err := db.Get(KindState, []byte("b")); err != nil || string(v) != "2" {
		t.Errorf("b = %q, %v, want the newer value kept", v, err)
	}
}
