package accuracy

import (
	"cmp"
	"slices"
	"time"
)

// Decision is one answered Allow call as the client saw it. Start and End
// are client times measured from the start of the run (monotonic clock); the
// server made its decision somewhere in [Start, End].
type Decision struct {
	Start, End time.Duration
	// Key identifies the key; callers number their key names.
	Key int32
	// Hits is what the call counted; at least 1.
	Hits int32
	// Allowed is the decision.
	Allowed bool
}

// KeyAccuracy is the worst window of one key.
type KeyAccuracy struct {
	Key int32 `json:"key"`
	// Admitted is the total hits admitted for the key over the run.
	Admitted int64 `json:"admitted"`
	// MaxInWindow is the most hits that were certainly admitted within one
	// interval of length window: calls whose whole [Start, End] lies inside
	// [From, From+window).
	MaxInWindow int64 `json:"max_in_window"`
	// From is where that interval starts, from the start of the run.
	From time.Duration `json:"from_ns"`
	// MaxInWindowByEnd is the same count taking each call's End as its
	// time. It can exceed MaxInWindow by calls whose latency straddles the
	// window's edge, so it may report over-admission that did not happen;
	// it is informative only.
	MaxInWindowByEnd int64 `json:"max_in_window_by_end"`
	// Over is max(0, MaxInWindow-limit).
	Over int64 `json:"over"`
}

// Accuracy summarises over-admission across keys.
type Accuracy struct {
	Limit  int64         `json:"limit"`
	Window time.Duration `json:"window_ns"`
	// Keys is how many keys had at least one admitted call.
	Keys int `json:"keys"`
	// KeysOver is how many keys had Over > 0.
	KeysOver int `json:"keys_over"`
	// MaxOver is the largest Over of any key; SumOver adds them up.
	MaxOver int64 `json:"max_over"`
	SumOver int64 `json:"sum_over"`
	// MaxInWindow is the largest MaxInWindow of any key.
	MaxInWindow int64 `json:"max_in_window"`
	// Worst lists up to the requested number of keys, most over first
	// (then highest MaxInWindow, then lowest key). It is empty, not nil,
	// when no key had an admitted call.
	Worst []KeyAccuracy `json:"worst"`
}

// Analyze finds, for every key, the most hits admitted within any interval
// of length window and compares it with limit. Only allowed decisions count;
// calls that failed are unknown to the client and are left out, which can
// only hide over-admission, never invent it. The count is conservative: a
// call is in an interval [a, a+window) only if its whole [Start, End] is, so
// a reported over-admission certainly happened. worst bounds the keys kept in
// Accuracy.Worst; zero or less keeps none, len(ds) keeps every key. Analyze
// reorders ds; it is safe for concurrent use on distinct slices.
func Analyze(ds []Decision, limit int64, window time.Duration, worst int) Accuracy {
	acc := Accuracy{Limit: limit, Window: window}
	slices.SortFunc(ds, func(a, b Decision) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Start, b.Start), cmp.Compare(a.End, b.End))
	})
	var keys []KeyAccuracy
	var scratch scratch
	for i := 0; i < len(ds); {
		j := i
		for j < len(ds) && ds[j].Key == ds[i].Key {
			j++
		}
		k, ok := analyzeKey(ds[i:j], window, &scratch)
		i = j
		if !ok {
			continue
		}
		k.Over = max(0, k.MaxInWindow-limit)
		acc.Keys++
		if k.Over > 0 {
			acc.KeysOver++
			acc.SumOver += k.Over
		}
		acc.MaxOver = max(acc.MaxOver, k.Over)
		acc.MaxInWindow = max(acc.MaxInWindow, k.MaxInWindow)
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b KeyAccuracy) int {
		return cmp.Or(cmp.Compare(b.Over, a.Over), cmp.Compare(b.MaxInWindow, a.MaxInWindow), cmp.Compare(a.Key, b.Key))
	})
	acc.Worst = append([]KeyAccuracy{}, keys[:min(len(keys), max(worst, 0))]...)
	return acc
}

// scratch holds buffers reused across keys.
type scratch struct {
	adm   []Decision
	byEnd []int
	tree  fenwick
}

// analyzeKey handles the decisions of one key, sorted by Start. It reports
// false when none was allowed.
func analyzeKey(ds []Decision, window time.Duration, s *scratch) (KeyAccuracy, bool) {
	adm := s.adm[:0]
	var k KeyAccuracy
	for _, d := range ds {
		if d.Allowed {
			adm = append(adm, d)
			k.Admitted += int64(d.Hits)
		}
	}
	s.adm = adm
	if len(adm) == 0 {
		return k, false
	}
	k.Key = adm[0].Key

	// Certain count: for an interval [a, a+w), the calls with Start >= a
	// and End < a+w. The best a is some call's Start. Sweep a over the
	// Starts in increasing order: the calls with End < a+w only grow, so
	// add them to a Fenwick tree indexed by Start order and sum the
	// positions at or after a's first index.
	byEnd := s.byEnd[:0]
	for i := range adm {
		byEnd = append(byEnd, i)
	}
	slices.SortFunc(byEnd, func(x, y int) int { return cmp.Compare(adm[x].End, adm[y].End) })
	s.byEnd = byEnd
	s.tree.reset(len(adm))
	next := 0
	for i := range adm {
		if i > 0 && adm[i].Start == adm[i-1].Start {
			continue // same anchor as i-1, which counted from its first index
		}
		a := adm[i].Start
		for next < len(byEnd) && adm[byEnd[next]].End < a+window {
			s.tree.add(byEnd[next], int64(adm[byEnd[next]].Hits))
			next++
		}
		if n := s.tree.suffix(i); n > k.MaxInWindow {
			k.MaxInWindow, k.From = n, a
		}
	}

	// By end time: a plain sliding window over the sorted Ends.
	var sum int64
	lo := 0
	for hi := range byEnd {
		sum += int64(adm[byEnd[hi]].Hits)
		for adm[byEnd[hi]].End-adm[byEnd[lo]].End >= window {
			sum -= int64(adm[byEnd[lo]].Hits)
			lo++
		}
		k.MaxInWindowByEnd = max(k.MaxInWindowByEnd, sum)
	}
	return k, true
}
