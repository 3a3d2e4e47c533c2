package window

import (
	"slices"
	"time"
)

// Merge folds o into s, step by step keeping the larger count, so the result
// never counts fewer hits than either side: merging is idempotent and
// commutative, and merging an older copy of s changes nothing. Used to take
// over a key from another node's copy. o is not modified.
func (s *Sliding) Merge(r *Rate, o *Sliding) {
	if o.counts == nil {
		return
	}
	oc := *o
	oc.ext = nil // who decided what is MergeFrom's business
	if oc.step != r.step || len(oc.counts) != r.buckets+1 {
		oc.counts = slices.Clone(oc.counts)
		oc.rebase(r)
	}
	n := int64(len(oc.counts))
	if s.counts == nil {
		s.counts = slices.Clone(oc.counts)
		s.step, s.last, s.total = oc.step, oc.last, oc.total
		return
	}
	if oc.last > s.last {
		s.advance(r, time.Unix(0, oc.last))
	} else {
		s.advance(r, time.Unix(0, s.last)) // rebase s onto r if needed
	}
	head, oHead := floorDiv(s.last, r.step), floorDiv(oc.last, r.step)
	if lo, hi := max(head-n+1, oHead-n+1), min(head, oHead); lo <= hi {
		s.maxAt(oc.counts, lo, hi)
	}
}

// Merge adds o's leases that l lacks and keeps the later expiry of a lease
// both hold.
func (l *Leases) Merge(o *Leases) {
	for _, x := range o.held {
		i := slices.IndexFunc(l.held, func(y Lease) bool { return y.ID == x.ID })
		if i < 0 {
			l.held = append(l.held, x)
		} else if x.Expires > l.held[i].Expires {
			l.held[i].Expires = x.Expires
		}
	}
}

// Replace makes l hold exactly o's leases.
func (l *Leases) Replace(o *Leases) { l.held = slices.Clone(o.held) }

// Merge folds o into st: the window by Sliding.Merge, and the leases by
// Leases.Merge, or, with replaceLeases, by taking o's (a key's owner is the
// authority on its leases, releases included).
func (st *State) Merge(r *Rate, o *State, replaceLeases bool) { st.MergeFrom(r, o, replaceLeases, 0) }
