package window

import (
	"encoding/binary"
	"fmt"
	"time"
)

// MaxLeases bounds the leases one key may hold, whatever its cap.
const MaxLeases = 1 << 20

// Lease is one concurrency slot held by a key.
type Lease struct {
	// ID identifies the lease within its key.
	ID uint64
	// Expires is when the slot frees itself if not released, Unix nanoseconds.
	Expires int64
}

// Leases holds the concurrency leases of one key. The zero value holds none.
// Leases is not safe for concurrent use.
type Leases struct {
	held []Lease
}

// Expire drops the leases that expired at or before now and returns how many
// it dropped.
func (l *Leases) Expire(now time.Time) int {
	ns := now.UnixNano()
	kept := l.held[:0]
	for _, x := range l.held {
		if x.Expires > ns {
			kept = append(kept, x)
		}
	}
	n := len(l.held) - len(kept)
	clear(l.held[len(kept):])
	l.held = kept
	if len(l.held) == 0 {
		l.held = nil
	}
	return n
}

// InFlight returns the leases held at now, counting none that has expired.
func (l *Leases) InFlight(now time.Time) int64 {
	ns := now.UnixNano()
	var n int64
	for _, x := range l.held {
		if x.Expires > ns {
			n++
		}
	}
	return n
}

// Len returns the leases stored, expired or not.
func (l *Leases) Len() int { return len(l.held) }

// Acquire adds lease id, expiring ttl after now. The caller checks the cap
// first (InFlight < cap) and picks an id not in use.
func (l *Leases) Acquire(id uint64, now time.Time, ttl time.Duration) {
	l.held = append(l.held, Lease{ID: id, Expires: now.Add(ttl).UnixNano()})
}

// Release drops lease id and reports whether it was held and unexpired at
// now. An expired lease is dropped too, but reported as not held.
func (l *Leases) Release(id uint64, now time.Time) bool {
	for i, x := range l.held {
		if x.ID == id {
			l.held[i] = l.held[len(l.held)-1]
			l.held[len(l.held)-1] = Lease{}
			l.held = l.held[:len(l.held)-1]
			if len(l.held) == 0 {
				l.held = nil
			}
			return x.Expires > now.UnixNano()
		}
	}
	return false
}

// Next returns the earliest expiry among the leases, or 0 when none is held.
func (l *Leases) Next() int64 {
	if len(l.held) == 0 {
		return 0
	}
	next := l.held[0].Expires
	for _, x := range l.held[1:] {
		next = min(next, x.Expires)
	}
	return next
}

const leasesVersion = 1

// AppendBinary appends the encoding of l to b.
func (l *Leases) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, leasesVersion)
	b = binary.AppendUvarint(b, uint64(len(l.held)))
	for _, x := range l.held {
		b = binary.AppendUvarint(b, x.ID)
		b = binary.AppendVarint(b, x.Expires)
	}
	return b, nil
}

// MarshalBinary encodes l; UnmarshalBinary restores it.
func (l *Leases) MarshalBinary() ([]byte, error) { return l.AppendBinary(nil) }

// UnmarshalBinary restores l from MarshalBinary's output. It rejects input
// that is not such output with ErrCorrupt and leaves l unchanged then.
func (l *Leases) UnmarshalBinary(data []byte) error {
	var out Leases
	n, err := out.decode(data)
	if err != nil {
		return err
	}
	if n != len(data) {
		return fmt.Errorf("%w: leases: %d trailing bytes", ErrCorrupt, len(data)-n)
	}
	*l = out
	return nil
}

func (l *Leases) decode(data []byte) (int, error) {
	if len(data) < 1 || data[0] != leasesVersion {
		return 0, fmt.Errorf("%w: leases: bad version", ErrCorrupt)
	}
	p := 1
	n, k := binary.Uvarint(data[p:])
	if k <= 0 || n > MaxLeases || n > uint64(len(data)) {
		return 0, fmt.Errorf("%w: leases: bad count", ErrCorrupt)
	}
	p += k
	var held []Lease // l's memory is reused
	if n > 0 {
		held = l.held[:0]
		if uint64(cap(held)) < n {
			held = make([]Lease, 0, n)
		}
	}
	for range n {
		id, k := binary.Uvarint(data[p:])
		if k <= 0 {
			return 0, fmt.Errorf("%w: leases: bad id", ErrCorrupt)
		}
		p += k
		exp, k := binary.Varint(data[p:])
		if k <= 0 {
			return 0, fmt.Errorf("%w: leases: bad expiry", ErrCorrupt)
		}
		p += k
		held = append(held, Lease{ID: id, Expires: exp})
	}
	l.held = held
	return p, nil
}

// State is everything stored for one key: its window and its leases.
type State struct {
	Window Sliding
	Leases Leases
}

// AppendBinary appends the encoding of st to b.
func (st *State) AppendBinary(b []byte) ([]byte, error) { return st.AppendBinaryFrom(b, 0) }

// AppendBinaryFrom appends the encoding of st, kept by node self, to b,
// with who decided its hits (Sliding.AppendBinaryFrom).
func (st *State) AppendBinaryFrom(b []byte, self uint64) ([]byte, error) {
	b, _ = st.Window.AppendBinaryFrom(b, self)
	return st.Leases.AppendBinary(b)
}

// MergeFrom is Merge for node self: the windows are merged per deciding
// node (Sliding.MergeFrom).
func (st *State) MergeFrom(r *Rate, o *State, replaceLeases bool, self uint64) {
	st.Window.MergeFrom(r, &o.Window, self)
	if replaceLeases {
		st.Leases.Replace(&o.Leases)
	} else {
		st.Leases.Merge(&o.Leases)
	}
}

// MarshalBinary encodes st; UnmarshalBinary restores it.
func (st *State) MarshalBinary() ([]byte, error) { return st.AppendBinary(nil) }

// UnmarshalBinary restores st from MarshalBinary's output, or returns an
// error wrapping ErrCorrupt and leaves st unchanged.
func (st *State) UnmarshalBinary(data []byte) error {
	var w Sliding
	n, err := w.decode(data)
	if err != nil {
		return err
	}
	var l Leases
	m, err := l.decode(data[n:])
	if err != nil {
		return err
	}
	if n+m != len(data) {
		return fmt.Errorf("%w: state: %d trailing bytes", ErrCorrupt, len(data)-n-m)
	}
	st.Window, st.Leases = w, l
	return nil
}

// UnmarshalBinaryReuse is UnmarshalBinary that reuses st's memory (its
// ring, peer rings and leases), for a caller that decodes one copy after
// another into the same scratch State. On error st holds garbage.
func (st *State) UnmarshalBinaryReuse(data []byte) error {
	n, err := st.Window.decode(data)
	if err != nil {
		return err
	}
	m, err := st.Leases.decode(data[n:])
	if err != nil {
		return err
	}
	if n+m != len(data) {
		return fmt.Errorf("%w: state: %d trailing bytes", ErrCorrupt, len(data)-n-m)
	}
	return nil
}
