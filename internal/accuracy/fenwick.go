package accuracy

import "slices"

// fenwick is a binary indexed tree of sums over positions 0..n-1. The zero
// value is empty; call reset before use.
type fenwick struct {
	t     []int64
	total int64
}

// reset empties the tree and sizes it for n positions, reusing its memory.
func (f *fenwick) reset(n int) {
	f.t = slices.Grow(f.t[:0], n+1)[:n+1]
	clear(f.t)
	f.total = 0
}

// add adds v at position i.
func (f *fenwick) add(i int, v int64) {
	f.total += v
	for i++; i < len(f.t); i += i & -i {
		f.t[i] += v
	}
}

// prefix returns the sum over positions 0..i-1.
func (f *fenwick) prefix(i int) int64 {
	var s int64
	for ; i > 0; i -= i & -i {
		s += f.t[i]
	}
	return s
}

// suffix returns the sum over positions i..n-1.
func (f *fenwick) suffix(i int) int64 { return f.total - f.prefix(i) }
