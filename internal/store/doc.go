// Package store persists rate-limit state in a single bbolt file. It deals
// in keys and bytes, not limits: callers marshal their own records
// (window types implement encoding.BinaryMarshaler) and store saves the
// bytes, one bbolt bucket per Kind of record.
//
// The limiter keeps its state in memory and persists it write-behind: it
// flushes dirty records with Write, one transaction and one fsync per flush.
// Write appends a flush's ops to a journal bucket as one value and folds the
// journal into the kinds' buckets once it holds Config.JournalBytes (4 MiB),
// so a flush writes a few times the bytes of its records instead of every
// b-tree page they fall on: 235 KiB instead of 1050 KiB for a flush of the
// load test's size, in 0.9 ms instead of 2.5 ms (BenchmarkFlush; the rest
// is the last journal leaf, rewritten with its neighbour, the freelist and
// the amortized fold). Reads see journaled records; Open folds a journal
// left by a crash.
// In a synchronous mode it calls WriteSync, which uses bbolt's group commit
// (DB.Batch) so that many concurrent calls share one fsync and each returns
// only once its records are durable.
//
// Open validates an existing file before using it. The file is first opened
// read-only, and the following are checked: both meta pages (bbolt), the
// freelist page, that the file is not shorter than the meta page says, the
// format record in the KindMeta bucket, and the b-tree pages of every known
// bucket (all of them for files up to 64 MiB, only the first and last leaf
// paths for larger files, to bound start-up time). bbolt's own tx.Check is
// not used: it runs in a goroutine of its own, where a wild page id in a
// corrupt file faults outside any recover and kills the process.
//
// # Caveats
//
//   - bbolt keeps two meta pages and falls back to the older one when the
//     newer fails its checksum (a torn write at a crash). Open then succeeds
//     and the last committed transaction is silently lost; only when both
//     meta pages are bad does Open return ErrCorrupt. For a rate limiter
//     losing one flush is acceptable and refusing to start is not.
//   - bbolt checksums only the meta pages. A flipped bit inside a key or a
//     value is not detected; flipped page headers are, when read.
//   - A zero-length file holds no data and is initialized as a new store.
//   - Open turns bbolt panics and memory faults (SIGBUS on a truncated
//     mapping) into ErrCorrupt errors using debug.SetPanicOnFault. When
//     that happens inside bolt.Open the file descriptor is closed but
//     bbolt's memory mapping of the file is leaked.
//   - After Open has succeeded, corruption that the checks missed can still
//     panic inside bbolt; those panics are not recovered.
//   - The file never shrinks: freed pages are reused by later writes, so a
//     steady working set keeps the size flat. Reclaiming space needs an
//     offline compaction (bbolt compact), which this package does not do.
//   - Only one DB, in any process, can hold the file: a second Open waits
//     up to Config.OpenTimeout and fails.
//   - A read transaction (Get, ForEach) that is open for a long time keeps
//     pages from being reused and can block a commit that must remap a
//     growing file, so ForEach callbacks should be short and must not write.
package store
