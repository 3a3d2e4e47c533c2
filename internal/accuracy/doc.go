// Package accuracy measures over-admission in a log of Allow decisions as
// clients saw them: for every key, the most hits admitted within any
// interval one window long, compared with the limit. The load generators
// (cmd/limiterbench, cmd/limiterchaos) record the log and call Analyze.
//
// A client only knows that the server decided somewhere between sending a
// call and reading its answer, [Start, End]. The count is conservative: a
// call is in an interval [a, a+window) only if its whole [Start, End] is,
// so a reported over-admission certainly happened. For each key, Analyze
// sweeps the interval's start over the calls' Starts and keeps the calls
// whose End is already inside in a Fenwick tree, O(n log n) per key.
//
// # Caveats
//
// Calls whose answer the client never read (errors, timeouts) are not in
// the log. Leaving them out can only hide over-admission, never invent it.
//
// Latency hides over-admission too: a burst of calls each slower than the
// gap between them straddles the interval's edges. KeyAccuracy's
// MaxInWindowByEnd counts by End time instead and may report
// over-admission that did not happen; it is informative only.
package accuracy
