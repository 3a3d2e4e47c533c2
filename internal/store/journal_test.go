package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// journalLen counts the entries in the journal bucket.
func journalLen(t testing.TB, db *DB) int {
	t.Helper()
	n := 0
	if err := db.bolt.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(journalBucket).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatalf("count journal entries: %v", err)
	}
	return n
}

// TestJournalModel runs random Write, WriteSync, DeleteUnchanged and reads,
// with reopens, against a map, with the journal off, folding after every few
// writes, and at its default size.
func TestJournalModel(t *testing.T) {
	for _, jb := range []int{-1, 300, DefaultJournalBytes} {
		t.Run(fmt.Sprintf("journal=%d", jb), func(t *testing.T) {
			r := rand.New(rand.NewPCG(7, uint64(jb+2)))
			cfg := testConfig(t)
			cfg.JournalBytes = jb
			cfg.NoSync = true
			db := mustOpenConfig(t, cfg)
			model := map[string]string{}
			ctx := context.Background()
			key := func() string { return fmt.Sprintf("k%02d", r.IntN(40)) }
			check := func(when string) {
				t.Helper()
				for i := range 40 {
					k := fmt.Sprintf("k%02d", i)
					v, err := db.Get(KindState, []byte(k))
					want, ok := model[k]
					switch {
					case ok && (err != nil || string(v) != want):
						t.Fatalf("%s: Get(%s) = %q, %v; want %q", when, k, v, err, want)
					case !ok && !errors.Is(err, ErrNotFound):
						t.Fatalf("%s: Get(%s) = %q, %v; want ErrNotFound", when, k, v, err)
					}
				}
			}
			for step := range 600 {
				switch x := r.IntN(100); {
				case x < 55: // a flush
					var ops []Op
					for range 1 + r.IntN(6) {
						k := key()
						if r.IntN(4) == 0 {
							ops = append(ops, del(k))
							delete(model, k)
						} else {
							v := fmt.Sprintf("v%d-%s", step, strings.Repeat("x", r.IntN(20)))
							ops = append(ops, put(k, v))
							model[k] = v
						}
					}
					if err := db.Write(ctx, KindState, ops); err != nil {
						t.Fatalf("step %d: Write() = %v", step, err)
					}
				case x < 70:
					k, v := key(), fmt.Sprintf("sync%d", step)
					if err := db.WriteSync(ctx, KindState, []Op{put(k, v)}); err != nil {
						t.Fatalf("step %d: WriteSync() = %v", step, err)
					}
					model[k] = v
				case x < 80:
					// Half the time with the value the key holds now.
					k := key()
					v, ok := model[k]
					if !ok || r.IntN(2) == 0 {
						v = "stale"
					}
					n, err := db.DeleteUnchanged(ctx, KindState, []Op{{Key: []byte(k), Value: []byte(v)}})
					want := 0
					if ok && v == model[k] {
						want = 1
						delete(model, k)
					}
					if err != nil || n != want {
						t.Fatalf("step %d: DeleteUnchanged(%s=%s) = %d, %v; want %d", step, k, v, n, err, want)
					}
				case x < 90:
					check(fmt.Sprintf("step %d", step))
				case x < 95:
					if got := dump(t, db, KindState); !reflect.DeepEqual(got, model) && (len(got) != 0 || len(model) != 0) {
						t.Fatalf("step %d: ForEach = %v, want %v", step, got, model)
					}
					if n, err := db.Len(KindState); err != nil || n != len(model) {
						t.Fatalf("step %d: Len() = %d, %v; want %d", step, n, err, len(model))
					}
				default:
					if err := db.Close(); err != nil {
						t.Fatalf("step %d: Close() = %v", step, err)
					}
					db = mustOpenConfig(t, cfg)
					if n := journalLen(t, db); n != 0 {
						t.Fatalf("step %d: %d journal entries after Open, want them folded", step, n)
					}
					check(fmt.Sprintf("step %d, reopened", step))
				}
				if jb > 0 && db.ov.size() > jb {
					t.Fatalf("step %d: journal holds %d bytes, more than %d", step, db.ov.size(), jb)
				}
			}
			check("end")
		})
	}
}

// TestJournalWritesAppend checks that a flush lands in the journal and not
// in the bucket, that a write over the limit folds it, and that another
// process sees journaled records after a crash (no Close).
func TestJournalWritesAppend(t *testing.T) {
	cfg := testConfig(t)
	cfg.JournalBytes = 4096
	db := mustOpenConfig(t, cfg)
	ctx := context.Background()
	must(t, db.Write(ctx, KindState, []Op{put("a", "1"), put("b", "2")}))
	must(t, db.Write(ctx, KindState, []Op{del("a"), put("c", "")}))
	if n := journalLen(t, db); n != 2 {
		t.Fatalf("journal has %d entries, want 2", n)
	}
	if b, folds := db.JournalStats(); b == 0 || folds != 0 {
		t.Errorf("JournalStats() = %d bytes, %d folds; want some bytes, no fold", b, folds)
	}
	var inBucket int
	must(t, db.bolt.View(func(tx *bolt.Tx) error {
		inBucket = tx.Bucket([]byte(KindState)).Stats().KeyN
		return nil
	}))
	if inBucket != 0 {
		t.Errorf("state bucket has %d records before a fold, want 0", inBucket)
	}
	if v, err := db.Get(KindState, []byte("c")); err != nil || v == nil || len(v) != 0 {
		t.Errorf("Get(c) = %q (nil %t), %v; want an empty value", v, v == nil, err)
	}
	if _, err := db.Get(KindState, []byte("a")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(a) = %v, want ErrNotFound: its delete is journaled", err)
	}
	if _, err := db.Get(KindPolicies, []byte("b")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(policies, b) = %v, want ErrNotFound: kinds stay apart", err)
	}

	// A write that would take the journal past 4 KiB folds it.
	must(t, db.Write(ctx, KindState, []Op{put("d", strings.Repeat("x", 5000))}))
	if n := journalLen(t, db); n != 0 {
		t.Errorf("journal has %d entries after a write past its limit, want 0", n)
	}
	if b, folds := db.JournalStats(); b != 0 || folds != 1 {
		t.Errorf("JournalStats() after a fold = %d bytes, %d folds; want 0, 1", b, folds)
	}
	if got := dump(t, db, KindState); len(got) != 3 || got["b"] != "2" || got["c"] != "" || len(got["d"]) != 5000 {
		t.Errorf("records = %v, want b, c and d", got)
	}

	// A crash: the file is copied while the DB is open, with two entries
	// journaled, and opened as the next process would.
	must(t, db.Write(ctx, KindState, []Op{put("e", "5")}))
	must(t, db.Write(ctx, KindState, []Op{del("b")}))
	crashed := cfg.Path + ".crashed"
	must(t, db.bolt.View(func(tx *bolt.Tx) error { return tx.CopyFile(crashed, 0o600) }))
	cfg2 := cfg
	cfg2.Path = crashed
	db2 := mustOpenConfig(t, cfg2)
	got := dump(t, db2, KindState)
	if _, ok := got["c"]; len(got) != 3 || got["e"] != "5" || !ok || len(got["d"]) != 5000 {
		t.Errorf("records after a crash = %v, want c, d and e", got)
	}
}

// TestJournalSyncWins checks that a WriteSync after a journaled Write of the
// same key wins, now and after a reopen.
func TestJournalSyncWins(t *testing.T) {
	db := mustOpen(t)
	ctx := context.Background()
	must(t, db.Write(ctx, KindState, []Op{put("k", "flushed"), put("j", "other")}))
	must(t, db.WriteSync(ctx, KindState, []Op{put("k", "synced")}))
	must(t, db.Write(ctx, KindState, []Op{put("j", "later")}))
	for _, when := range []string{"open", "reopened"} {
		if when == "reopened" {
			db = reopen(t, db)
		}
		if v, err := db.Get(KindState, []byte("k")); err != nil || string(v) != "synced" {
			t.Errorf("%s: Get(k) = %q, %v; want synced", when, v, err)
		}
		if v, err := db.Get(KindState, []byte("j")); err != nil || string(v) != "later" {
			t.Errorf("%s: Get(j) = %q, %v; want later", when, v, err)
		}
	}
}

// TestJournalBadOpRefused checks that an op bbolt would refuse never reaches
// the journal, where it would fail every later fold.
func TestJournalBadOpRefused(t *testing.T) {
	db := mustOpen(t)
	ctx := context.Background()
	err := db.Write(ctx, KindState, []Op{put("a", "1"), {Key: make([]byte, bolt.MaxKeySize+1), Value: []byte("x")}})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Write(huge key) = %v, want ErrTooLarge", err)
	}
	must(t, db.Write(ctx, KindState, []Op{put("b", "2")}))
	if got := dump(t, db, KindState); len(got) != 1 || got["b"] != "2" {
		t.Errorf("records = %v, want only b=2", got)
	}
}

// TestOpenCorruptJournal checks that a journal entry that does not decode
// fails Open with ErrCorrupt and leaves the file as it was.
func TestOpenCorruptJournal(t *testing.T) {
	for name, entry := range map[string][]byte{
		"garbage":       []byte("not an entry"),
		"unknown kind":  encodeEntry("limits", []Op{put("a", "1")}),
		"truncated":     encodeEntry(KindState, []Op{put("a", "1")})[:6],
		"empty":         {},
		"trailing byte": append(encodeEntry(KindState, []Op{put("a", "1")}), 0),
	} {
		t.Run(name, func(t *testing.T) {
			path := validFile(t, 10)
			b, err := bolt.Open(path, 0o600, nil)
			must(t, err)
			must(t, b.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(journalBucket).Put([]byte{0, 0, 0, 0, 0, 0, 0, 9}, entry)
			}))
			must(t, b.Close())
			before := fileSum(t, path)
			cfg := testConfig(t)
			cfg.Path = path
			db, err := Open(cfg)
			if err == nil {
				_ = db.Close()
				t.Fatal("Open() = nil, want ErrCorrupt")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "journal entry") {
				t.Errorf("Open() = %v, want ErrCorrupt naming the journal entry", err)
			}
			if fileSum(t, path) != before {
				t.Error("a failed Open changed the file")
			}
		})
	}
}

// TestOpenUpgradesVersion1 checks that a file of format version 1 (no
// journal bucket) opens, keeps its records and is marked version 2.
func TestOpenUpgradesVersion1(t *testing.T) {
	path := validFile(t, 0)
	b, err := bolt.Open(path, 0o600, nil)
	must(t, err)
	must(t, b.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(journalBucket); err != nil {
			return err
		}
		for i := range 10 {
			if err := tx.Bucket([]byte(KindState)).Put(fmt.Appendf(nil, "default\x00k%d", i), []byte("v")); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte(KindMeta)).Put(formatKey, encodeFormat(1))
	}))
	must(t, b.Close())
	cfg := testConfig(t)
	cfg.Path = path
	db := mustOpenConfig(t, cfg)
	if n, err := db.Len(KindState); err != nil || n != 10 {
		t.Errorf("Len() = %d, %v; want 10", n, err)
	}
	raw, err := db.Get(KindMeta, formatKey)
	must(t, err)
	if v, err := decodeFormat(raw); err != nil || v != formatVersion {
		t.Errorf("format after Open = %d, %v; want %d", v, err, formatVersion)
	}
	must(t, db.Write(context.Background(), KindState, []Op{put("new", "1")}))
	if n := journalLen(t, db); n != 1 {
		t.Errorf("journal has %d entries, want 1", n)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	ops := []Op{put("a", "1"), del("b"), put("c", ""), {Key: bytes.Repeat([]byte("k"), 300), Value: bytes.Repeat([]byte("v"), 70000)}}
	kind, got, err := decodeEntry(encodeEntry(KindPolicies, ops))
	if err != nil || kind != KindPolicies || len(got) != len(ops) {
		t.Fatalf("decodeEntry(encodeEntry()) = %q, %d ops, %v", kind, len(got), err)
	}
	for i := range ops {
		if !bytes.Equal(got[i].Key, ops[i].Key) || !bytes.Equal(got[i].Value, ops[i].Value) || got[i].Delete != ops[i].Delete {
			t.Errorf("op %d = %+v, want %+v", i, got[i], ops[i])
		}
	}
	// The ops Write keeps for the overlay are the entry's own, decoded.
	enc, own := encodeEntryOps(KindPolicies, ops, true)
	_, dec, _ := decodeEntry(enc)
	if !reflect.DeepEqual(own, dec) {
		t.Errorf("encodeEntryOps ops = %+v, want the decoded %+v", own, dec)
	}
}

// FuzzDecodeEntry feeds decodeEntry arbitrary bytes: it must not panic or
// allocate by a lying count, and whatever it accepts must encode to an
// entry that decodes to the same ops.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry(KindState, []Op{put("default\x00k", "state"), del("default\x00gone")}))
	f.Add(encodeEntry(KindMeta, nil))
	f.Add([]byte{1, 5, 's', 't', 'a', 't', 'e', 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, ops, err := decodeEntry(b)
		if err != nil {
			if !errors.Is(err, errEntry) {
				t.Fatalf("decodeEntry() = %v, want it to wrap errEntry", err)
			}
			return
		}
		kind2, ops2, err := decodeEntry(encodeEntry(kind, ops))
		if err != nil || kind2 != kind || len(ops2) != len(ops) {
			t.Fatalf("re-encoded entry = %q, %d ops, %v; want %q, %d ops", kind2, len(ops2), err, kind, len(ops))
		}
		for i := range ops {
			if !bytes.Equal(ops[i].Key, ops2[i].Key) || !bytes.Equal(ops[i].Value, ops2[i].Value) || ops[i].Delete != ops2[i].Delete || len(ops[i].Key) == 0 {
				t.Fatalf("op %d = %+v after re-encoding, was %+v", i, ops2[i], ops[i])
			}
		}
	})
}

// BenchmarkFlush is the limiter's write-behind as one node of the load test
// sees it: 370 random keys of a 6700-key bucket, about 100 bytes each, per
// Write, without the journal and with two sizes of it. Bytes written per
// flush come from the process's write counter.
func BenchmarkFlush(b *testing.B) {
	for _, jb := range []int{-1, 1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("journal=%dKiB", max(jb, 0)>>10), func(b *testing.B) {
			cfg := testConfig(b)
			cfg.JournalBytes = jb
			db := mustOpenConfig(b, cfg)
			const keys, perFlush = 6700, 370
			value := bytes.Repeat([]byte("s"), 100)
			ctx := context.Background()
			var all []Op
			for i := range keys {
				all = append(all, Op{Key: fmt.Appendf(nil, "default\x00key-%d", i*7919%keys), Value: value})
			}
			if err := db.Write(ctx, KindState, all); err != nil {
				b.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 1))
			ops := make([]Op, perFlush)
			w0, cpu0 := writtenBytes(b), cpuTime(b)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				for i := range ops {
					ops[i] = all[r.IntN(keys)]
				}
				if err := db.Write(ctx, KindState, ops); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(writtenBytes(b)-w0)/float64(b.N)/1024, "KiB/flush")
			b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/flush")
		})
	}
}

// cpuTime is the CPU time (user and system) this process has used so far:
// a flush waits for fsync, so its wall time says little about its cost.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Skipf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writtenBytes is what this process has passed to write system calls so
// far (wchar of /proc/self/io): the flushes' pages, as nothing else writes.
func writtenBytes(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skipf("no /proc/self/io: %v", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatalf("/proc/self/io: %q: %v", line, err)
			}
			return n
		}
	}
	b.Fatal("/proc/self/io has no wchar line")
	return 0
}

// TestGetIndexesJournalLazily checks the overlay's index, which is only
// built once a Get needs it: the first Get still sees journaled values,
// and every Write after it is indexed.
func TestGetIndexesJournalLazily(t *testing.T) {
	db := mustOpen(t)
	ctx := context.Background()
	get := func(key string) string {
		t.Helper()
		v, err := db.Get(KindState, []byte(key))
		if errors.Is(err, ErrNotFound) {
			return "<none>"
		}
		if err != nil {
			t.Fatalf("Get(%s): %v", key, err)
		}
		return string(v)
	}
	put := func(key, value string) {
		t.Helper()
		if err := db.Write(ctx, KindState, []Op{{Key: []byte(key), Value: []byte(value)}}); err != nil {
			t.Fatal(err)
		}
	}
	put("a", "1")
	put("b", "1")
	put("a", "2")
	db.ov.mu.RLock()
	indexed, keys := db.ov.indexed, len(db.ov.kinds)
	db.ov.mu.RUnlock()
	if indexed || keys != 0 {
		t.Fatalf("overlay indexed %v with %d kinds before any Get", indexed, keys)
	}
	if bytes, _ := db.JournalStats(); bytes == 0 {
		t.Fatal("nothing journaled")
	}
	if got := get("a"); got != "2" {
		t.Fatalf("first Get(a) = %s, want 2 (the newest journaled)", got)
	}
	put("a", "3")
	if err := db.Write(ctx, KindState, []Op{{Key: []byte("b"), Delete: true}}); err != nil {
		t.Fatal(err)
	}
	if got, gotB := get("a"), get("b"); got != "3" || gotB != "<none>" {
		t.Fatalf("after more writes Get(a), Get(b) = %s, %s; want 3, <none>", got, gotB)
	}
	if err := db.WriteSync(ctx, KindState, []Op{{Key: []byte("c"), Value: []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	put("c", "2")
	if got, gotA := get("c"), get("a"); got != "2" || gotA != "3" {
		t.Fatalf("after WriteSync Get(c), Get(a) = %s, %s; want 2, 3", got, gotA)
	}
}

// TestWriteKeepsNoOps: the limiter reuses one buffer for the keys and
// values of every flush, which Write's contract allows. Whatever the
// caller writes into its buffers after Write returns must not change what
// was stored: journaled, folded, or with no journal at all.
func TestWriteKeepsNoOps(t *testing.T) {
	for _, jb := range []int{-1, 1 << 10, 4 << 20} {
		t.Run(fmt.Sprintf("journal=%d", jb), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.JournalBytes = jb
			db := mustOpenConfig(t, cfg)
			ctx := context.Background()
			buf := make([]byte, 0, 4096)
			want := map[string]string{}
			for round := range 20 {
				buf = buf[:0]
				var ops []Op
				for i := range 10 {
					start := len(buf)
					buf = fmt.Appendf(buf, "default\x00key-%d", (round*7+i)%30)
					mid := len(buf)
					buf = fmt.Appendf(buf, "value %d of round %d", i, round)
					ops = append(ops, Op{Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]})
					want[string(buf[start:mid])] = string(buf[mid:])
				}
				if err := db.Write(ctx, KindState, ops); err != nil {
					t.Fatal(err)
				}
				for i := range buf {
					buf[i] = 'x' // the next flush's keys and values
				}
			}
			for k, v := range want {
				got, err := db.Get(KindState, []byte(k))
				if err != nil || string(got) != v {
					t.Fatalf("Get(%q) = %q, %v; want %q", k, got, err, v)
				}
			}
		})
	}
}
