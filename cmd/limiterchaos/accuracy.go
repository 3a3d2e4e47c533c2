package main

// The interval analysis is the conservative count of cmd/limiterbench's
// accuracy.go (its Analyze, without the by-end figure and hit counts),
// copied because both commands are package main.

import (
	"cmp"
	"slices"
	"time"
)

// Decision is one admitted Allow call as the client saw it: the server
// decided somewhere in [Start, End], client times from the start of the run.
type Decision struct {
	Start, End time.Duration
	// Key indexes the scenario's keys.
	Key int32
}

// KeyAccuracy is the worst window of one key.
type KeyAccuracy struct {
	Key int32 `json:"key"`
	// Admitted is every hit admitted for the key.
	Admitted int64 `json:"admitted"`
	// MaxInWindow is the most calls certainly admitted within one interval
	// [From, From+window): calls whose whole [Start, End] lies inside it.
	MaxInWindow int64         `json:"max_in_window"`
	From        time.Duration `json:"from_ns"`
	// Over is max(0, MaxInWindow-limit).
	Over int64 `json:"over"`
}

// Accuracy summarises over-admission across the keys of a scenario.
type Accuracy struct {
	Limit  int64         `json:"limit"`
	Window time.Duration `json:"window_ns"`
	// Keys is how many keys admitted at least one call; KeysAtLimit how
	// many of them reached the limit within one window (a key that never
	// did could not show over-admission); KeysOver how many went beyond.
	Keys        int `json:"keys"`
	KeysAtLimit int `json:"keys_at_limit"`
	KeysOver    int `json:"keys_over"`
	// MaxOver is the largest Over of any key; SumOver adds them up.
	MaxOver int64 `json:"max_over"`
	SumOver int64 `json:"sum_over"`
	// PerKey has every key with an admitted call, by key.
	PerKey []KeyAccuracy `json:"per_key"`
}

// Analyze finds, for every key, the most calls admitted within any interval
// of length window and compares it with limit. A call is in an interval
// [a, a+window) only if its whole [Start, End] is, so a reported
// over-admission certainly happened. Analyze reorders ds.
func Analyze(ds []Decision, limit int64, window time.Duration) Accuracy {
	acc := Accuracy{Limit: limit, Window: window}
	slices.SortFunc(ds, func(a, b Decision) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Start, b.Start), cmp.Compare(a.End, b.End))
	})
	var byEnd []int
	var tree fenwick
	for i := 0; i < len(ds); {
		j := i
		for j < len(ds) && ds[j].Key == ds[i].Key {
			j++
		}
		k := analyzeKey(ds[i:j], window, &byEnd, &tree)
		i = j
		k.Over = max(0, k.MaxInWindow-limit)
		acc.Keys++
		if k.MaxInWindow >= limit {
			acc.KeysAtLimit++
		}
		if k.Over > 0 {
			acc.KeysOver++
			acc.SumOver += k.Over
		}
		acc.MaxOver = max(acc.MaxOver, k.Over)
		acc.PerKey = append(acc.PerKey, k)
	}
	return acc
}

// analyzeKey handles the admitted calls of one key, sorted by Start.
//
// For an interval [a, a+w) the certain count is the calls with Start >= a
// and End < a+w, and the best a is some call's Start. Sweep a over the
// Starts in increasing order: the calls with End < a+w only grow, so add
// them to a Fenwick tree indexed by Start order and sum the positions at or
// after a's first index.
func analyzeKey(adm []Decision, window time.Duration, byEnd *[]int, tree *fenwick) KeyAccuracy {
	k := KeyAccuracy{Key: adm[0].Key, Admitted: int64(len(adm))}
	*byEnd = (*byEnd)[:0]
	for i := range adm {
		*byEnd = append(*byEnd, i)
	}
	order := *byEnd
	slices.SortFunc(order, func(x, y int) int { return cmp.Compare(adm[x].End, adm[y].End) })
	tree.reset(len(adm))
	next := 0
	for i := range adm {
		if i > 0 && adm[i].Start == adm[i-1].Start {
			continue // same anchor as i-1, which counted from its first index
		}
		a := adm[i].Start
		for next < len(order) && adm[order[next]].End < a+window {
			tree.add(order[next], 1)
			next++
		}
		if n := tree.suffix(i); n > k.MaxInWindow {
			k.MaxInWindow, k.From = n, a
		}
	}
	return k
}

// fenwick is a binary indexed tree of sums over positions 0..n-1.
type fenwick struct {
	t     []int64
	total int64
}

func (f *fenwick) reset(n int) {
	f.t = slices.Grow(f.t[:0], n+1)[:n+1]
	clear(f.t)
	f.total = 0
}

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
