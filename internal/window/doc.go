// Package window is the arithmetic of rate limiting over time: sliding-window
// counters and concurrency leases for one key. It knows nothing about gRPC,
// storage or clusters; callers hold a lock around each value and persist it
// with MarshalBinary.
//
// # Sliding windows
//
// A Rate is a limit of hits per window, split into Buckets resolution steps
// (step = window / buckets). A Sliding counts hits per step in a ring of
// buckets+1 counters. Deciding at time now, it counts every hit recorded in the
// current step and the previous buckets steps, so every hit that happened less
// than one window ago is counted. Hence, for every key, the hits admitted in
// any interval of length window never exceed the limit: the window never
// admits a burst of two limits across a boundary, as fixed windows do.
//
// The price of bucketing is resolution: a hit may be remembered up to one step
// longer than the window, so a call may be denied up to one step early. With
// the default 60 buckets and a 5-minute window that is 5 seconds.
//
// RetryAfter and ResetAfter are exact in this model: advancing the clock by
// RetryAfter allows the same call (if nothing else happens), and by one step
// less does not.
//
// # Leases
//
// Leases holds the concurrency leases of one key: each has an id and an
// expiry, and a key never holds more than the cap.
//
// # Caveats
//
//   - Time is read by the caller and passed in. A clock that steps back is
//     treated as standing still at the newest time a Sliding has seen, so a
//     step back never forgets hits.
//   - Sliding and Leases are not safe for concurrent use; the caller locks.
//   - Counts are uint32 per step: a step holds at most 4,294,967,295 hits.
package window
