package window

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"time"
)

// Decision is the outcome of one call against a Sliding window. Going over
// the limit is a normal result (Allowed false), not an error.
type Decision struct {
	// Allowed reports whether the hits fit in the window.
	Allowed bool
	// Limit is the Rate's limit.
	Limit int64
	// Remaining is what is left of the limit after this call (never below 0).
	Remaining int64
	// RetryAfter is zero when allowed; when denied, the earliest wait after
	// which the same call is allowed if nothing else happens. When the hits
	// exceed the limit itself no wait helps, and RetryAfter is the window.
	RetryAfter time.Duration
	// ResetAfter is the wait until no counted hit is left in the window.
	ResetAfter time.Duration
}

// Sliding counts the hits of one key in steps of a Rate. The zero value is an
// empty window, ready to use. A Sliding is not safe for concurrent use.
type Sliding struct {
	last   int64     // newest time seen, Unix nanoseconds
	step   int64     // the step counts were made with, ns; 0 before first use
	total  int64     // sum of counts
	counts []uint32  // ring of buckets+1 steps; step b lives at b mod len
	ext    *deciders // other nodes' share of counts; nil for most keys
}

// Peek returns the decision for hits at now without counting anything.
// hits must not be negative; zero asks about the current state. Given a Rate
// with another step or bucket count than s was used with, Peek (like every
// method) first rebases s onto it, conservatively.
func (s *Sliding) Peek(r *Rate, now time.Time, hits int64) Decision {
	v := s.view(r, now)
	return v.decide(r, hits)
}

// Allow decides hits at now and counts them when they fit.
func (s *Sliding) Allow(r *Rate, now time.Time, hits int64) Decision {
	d := s.Peek(r, now, hits)
	if d.Allowed && hits > 0 {
		s.Add(r, now, hits)
	}
	return d
}

// Add counts hits at now unconditionally; callers use it to commit a decision
// made by Peek together with other checks.
func (s *Sliding) Add(r *Rate, now time.Time, hits int64) {
	s.advance(r, now)
	if hits <= 0 {
		return
	}
	s.addAt(mod(floorDiv(s.last, s.step), int64(len(s.counts))), hits)
}

// Count returns the hits counted in the window at now.
func (s *Sliding) Count(r *Rate, now time.Time) int64 {
	v := s.view(r, now)
	return v.count
}

// Empty reports whether no hit is remembered at now, so the key's state can be
// forgotten.
func (s *Sliding) Empty(r *Rate, now time.Time) bool { return s.Count(r, now) == 0 }

// view is a read-only look at a Sliding at one instant.
type view struct {
	s     *Sliding
	now   int64 // effective now (never before s.last)
	cur   int64 // step index of now
	count int64 // hits within the window at now
}

func (s *Sliding) view(r *Rate, now time.Time) view {
	if s.step != 0 && s.step != r.step || s.counts != nil && len(s.counts) != r.buckets+1 {
		s.rebase(r)
	}
	ns := now.UnixNano()
	if s.counts != nil && ns < s.last { // a Sliding that never counted has seen no time
		ns = s.last
	}
	v := view{s: s, now: ns, cur: floorDiv(ns, r.step)}
	if s.counts == nil || s.total == 0 {
		return v
	}
	head := floorDiv(s.last, r.step)
	n := int64(len(s.counts))
	if v.cur-head >= n {
		return v
	}
	v.count = s.total
	for b := head - n + 1; b <= v.cur-n; b++ { // steps that have left the window
		v.count -= int64(s.counts[mod(b, n)])
	}
	return v
}

// at returns the count of step b, which must be within the window of v.
func (v *view) at(b int64) int64 {
	s := v.s
	if s.counts == nil || b > floorDiv(s.last, s.step) {
		return 0
	}
	return int64(s.counts[mod(b, int64(len(s.counts)))])
}

func (v *view) decide(r *Rate, hits int64) Decision {
	n := int64(r.buckets)
	d := Decision{Limit: r.limit}
	if hits <= r.limit-v.count {
		d.Allowed = true
		d.Remaining = r.limit - v.count - hits
		newest := int64(-1) << 62
		if hits > 0 {
			newest = v.cur
		} else {
			newest = v.newest(n)
		}
		if newest > -1<<62 {
			d.ResetAfter = time.Duration((newest+n+1)*r.step - v.now)
		}
		return d
	}
	d.Remaining = max(r.limit-v.count, 0)
	if nb := v.newest(n); nb > -1<<62 {
		d.ResetAfter = time.Duration((nb+n+1)*r.step - v.now)
	}
	if hits > r.limit {
		d.RetryAfter = r.window
		return d
	}
	need := v.count + hits - r.limit
	var freed int64
	for b := v.cur - n; b <= v.cur; b++ {
		freed += v.at(b)
		if freed >= need {
			d.RetryAfter = time.Duration((b+n+1)*r.step - v.now)
			break
		}
	}
	return d
}

// newest returns the newest step in the window with hits, or -1<<62.
func (v *view) newest(n int64) int64 {
	if v.count == 0 {
		return -1 << 62
	}
	for b := v.cur; b >= v.cur-n; b-- {
		if v.at(b) > 0 {
			return b
		}
	}
	return -1 << 62
}

// advance moves the ring to now, dropping steps that left the window.
func (s *Sliding) advance(r *Rate, now time.Time) {
	if s.step != 0 && s.step != r.step || s.counts != nil && len(s.counts) != r.buckets+1 {
		s.rebase(r)
	}
	ns := now.UnixNano()
	if s.counts == nil {
		s.counts = make([]uint32, r.buckets+1)
		s.step = r.step
		s.last = ns
		return
	}
	if ns <= s.last {
		return
	}
	head, cur := floorDiv(s.last, r.step), floorDiv(ns, r.step)
	n := int64(len(s.counts))
	if cur-head >= n {
		clear(s.counts)
		s.total = 0
		if s.ext != nil {
			s.ext.peers = nil
		}
	} else {
		for b := head + 1; b <= cur; b++ {
			i := mod(b, n)
			s.total -= int64(s.counts[i])
			s.counts[i] = 0
			if s.ext != nil {
				s.clearPeersAt(i)
			}
		}
	}
	s.last = ns
	if s.ext != nil && cur > head {
		s.dropEmptyPeers()
	}
}

// rebase moves counts made with another step or bucket count onto r,
// conservatively: the hits of each old step are placed in the step of r that
// holds the end of that old step (or s.last, if sooner), so no hit is
// forgotten before r would forget it. Hits that r has already forgotten at
// s.last are dropped. s.last, the newest time seen, is kept. Peer rings
// are dropped: their hits stay counted, as this node's own (a later merge of
// the same peer's copy may count them twice: conservative).
func (s *Sliding) rebase(r *Rate) {
	if s.ext != nil {
		s.ext.peers = nil
		if s.ext.from == 0 {
			s.ext = nil
		}
	}
	if s.counts == nil {
		s.step, s.total = 0, 0
		return
	}
	old, oldStep := s.counts, s.step
	oldN, n := int64(len(old)), int64(r.buckets+1)
	oldHead, head := floorDiv(s.last, oldStep), floorDiv(s.last, r.step)
	s.counts = make([]uint32, n)
	s.step, s.total = r.step, 0
	for b := oldHead - oldN + 1; b <= oldHead; b++ {
		c := int64(old[mod(b, oldN)])
		if c == 0 {
			continue
		}
		end := s.last
		if b < oldHead {
			end = (b+1)*oldStep - 1
		}
		nb := floorDiv(end, r.step)
		if head-nb >= n { // already forgotten under r
			continue
		}
		i := mod(nb, n)
		c = min(int64(s.counts[i])+c, MaxLimit)
		s.total += c - int64(s.counts[i])
		s.counts[i] = uint32(c)
	}
}

// encoding version of Sliding.MarshalBinary.
const slidingVersion = 1

// AppendBinary appends the encoding of s to b.
// Peer rings and the decider of a copy not yet adopted are kept; who
// decided the own hits is not named: see AppendBinaryFrom.
func (s *Sliding) AppendBinary(b []byte) ([]byte, error) { return s.AppendBinaryFrom(b, 0) }

// appendV1 appends the encoding without deciders.
func (s *Sliding) appendV1(b []byte) []byte {
	b = append(b, slidingVersion)
	return s.appendRing(b)
}

// appendRing appends the time, step and counts of s.
func (s *Sliding) appendRing(b []byte) []byte {
	b = binary.AppendVarint(b, s.last)
	b = binary.AppendUvarint(b, uint64(s.step))
	b = binary.AppendUvarint(b, uint64(len(s.counts)))
	if len(s.counts) == 0 {
		return b
	}
	// Oldest step first, so the encoding does not depend on ring rotation.
	// Most counts take one byte.
	b = slices.Grow(b, len(s.counts))
	n := len(s.counts)
	for i, k := oldest(s.last, s.step, n), 0; k < n; k++ {
		b = binary.AppendUvarint(b, uint64(s.counts[i]))
		if i++; i == n {
			i = 0
		}
	}
	return b
}

// oldest returns the ring position of the oldest step of a ring of n steps
// whose newest time is last: the one after the newest step's.
func oldest(last, step int64, n int) int {
	return int(mod(floorDiv(last, step)+1, int64(n)))
}

// MarshalBinary encodes s; UnmarshalBinary restores it.
func (s *Sliding) MarshalBinary() ([]byte, error) { return s.AppendBinary(nil) }

// UnmarshalBinary restores s from MarshalBinary's output. It rejects input
// that is not such output with ErrCorrupt and leaves s unchanged then.
func (s *Sliding) UnmarshalBinary(data []byte) error {
	var out Sliding
	n, err := out.decode(data)
	if err != nil {
		return err
	}
	if n != len(data) {
		return fmt.Errorf("%w: sliding: %d trailing bytes", ErrCorrupt, len(data)-n)
	}
	*s = out
	return nil
}

// decode is UnmarshalBinary that reports how many bytes it read.
func (s *Sliding) decode(data []byte) (int, error) {
	if len(data) < 1 || data[0] != slidingVersion && data[0] != slidingVersionDeciders {
		return 0, fmt.Errorf("%w: sliding: bad version", ErrCorrupt)
	}
	p := 1
	last, k := binary.Varint(data[p:])
	if k <= 0 {
		return 0, fmt.Errorf("%w: sliding: bad time", ErrCorrupt)
	}
	p += k
	step, k := binary.Uvarint(data[p:])
	if k <= 0 || step > uint64(MaxWindow) {
		return 0, fmt.Errorf("%w: sliding: bad step", ErrCorrupt)
	}
	p += k
	n, k := binary.Uvarint(data[p:])
	if k <= 0 || n > MaxBuckets+1 || n == 1 || (n == 0) != (step == 0) {
		return 0, fmt.Errorf("%w: sliding: bad bucket count", ErrCorrupt)
	}
	p += k
	// s's memory is reused: ring, deciders and their peer rings.
	out := Sliding{last: last, step: int64(step)}
	if n > 0 {
		head := floorDiv(last, int64(step))
		if head < math.MinInt64+int64(n) { // the ring's oldest step would overflow
			return 0, fmt.Errorf("%w: sliding: bad time", ErrCorrupt)
		}
		if cap(s.counts) >= int(n) {
			out.counts = s.counts[:n]
		} else {
			out.counts = make([]uint32, n)
		}
		for i, j := oldest(last, int64(step), int(n)), uint64(0); j < n; j++ {
			c, k := binary.Uvarint(data[p:])
			if k <= 0 || c > MaxLimit {
				return 0, fmt.Errorf("%w: sliding: bad count", ErrCorrupt)
			}
			p += k
			out.counts[i] = uint32(c)
			out.total += int64(c)
			if i++; i == int(n) {
				i = 0
			}
		}
	}
	if data[0] == slidingVersionDeciders {
		out.ext = s.ext
		k, err := out.decodeDeciders(data[p:])
		if err != nil {
			return 0, err
		}
		p += k
	}
	*s = out
	return p, nil
}

func timeUnix(ns int64) time.Time { return time.Unix(0, ns) }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func mod(a, n int64) int64 {
	m := a % n
	if m < 0 {
		m += n
	}
	return m
}
