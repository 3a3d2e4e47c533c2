package main

import (
	"math/bits"
	"time"
)

// hist is a log-linear latency histogram: exact below 2^subBits ns, then
// 2^subBits buckets per power of two, so a quantile is within 1/2^subBits
// (0.8%) of the true value. Values of 2^maxExp ns (about 18 minutes) and
// more land in the last bucket. Max is exact. Not safe for concurrent use:
// each worker fills its own and they are merged at the end.
type hist struct {
	counts [(maxExp - subBits + 1) << subBits]uint64
	n      uint64
	max    time.Duration
}

const (
	subBits = 7
	maxExp  = 40
)

func bucketOf(v time.Duration) int {
	u := uint64(max(v, 0))
	if u < 1<<subBits {
		return int(u)
	}
	e := bits.Len64(u) - 1 // 2^e <= u < 2^(e+1), e >= subBits
	if e >= maxExp {
		return len(hist{}.counts) - 1
	}
	shift := e - subBits
	return (shift+1)<<subBits + int(u>>shift) - 1<<subBits
}

// lowest returns the smallest value that falls in bucket b.
func lowest(b int) time.Duration {
	if b < 1<<subBits {
		return time.Duration(b)
	}
	shift := b>>subBits - 1
	return time.Duration(uint64(b&(1<<subBits-1)+1<<subBits) << shift)
}

func (h *hist) record(v time.Duration) {
	h.counts[bucketOf(v)]++
	h.n++
	h.max = max(h.max, v)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the value below which a fraction q of the values lie
// (the lower edge of its bucket), or 0 when empty.
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(lowest(b), h.max)
		}
	}
	return h.max
}
