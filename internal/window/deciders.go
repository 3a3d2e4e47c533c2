package window

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Deciders: which node counted which hits.
//
// A key has one owner, but around a failure two nodes can decide it at the
// same time: a replica that took over while the owner was unreachable, and
// the owner once it is back. Merging their copies by taking the larger count
// per step would then keep only one side's hits. So a Sliding can also keep,
// per other node, the counts that node decided (a G-counter per step):
// counts holds the sum over all deciders, each peer ring the counts of one
// other node, and this node's own counts are counts minus the peers'. Merging
// takes the larger count per node and step, which is idempotent and
// commutative and adds up the hits of concurrent deciders instead of keeping
// the larger.
//
// Nodes are told apart by an id that is new for every process (an
// incarnation): a node that restarts after losing its last unflushed hits
// must not take its older, larger counts from a peer for its own and count
// new hits on top of them as if they were the same.
//
// Most keys are only ever decided by their owner: then there are no peer
// rings and Allow does exactly what it did without them.

// maxPeers bounds the peer rings one key keeps (and that a decoder accepts).
const maxPeers = 64

// slidingVersionDeciders is the encoding that carries deciders.
const slidingVersionDeciders = 2

// deciders is the per-node breakdown of a Sliding's counts.
type deciders struct {
	// from is the node whose own counts these are when s was decoded from
	// another node's (or an earlier process's) encoding; 0 once adopted by
	// the node that counts in it.
	from  uint64
	peers []peerRing
}

// peerRing holds the counts one other node decided, laid out like
// Sliding.counts (the same steps at the same positions).
type peerRing struct {
	id     uint64
	counts []uint32
}

// Adopt makes s the state this node, self, counts in: when s was encoded
// by another node or process, the hits that one counted as its own become
// its peer ring, so that hits counted here from now on are told apart from
// them. Call it on state read back from a store or another node before
// counting in it. self 0 is a no-op.
func (s *Sliding) Adopt(self uint64) {
	if s.ext == nil || self == 0 {
		return
	}
	from := s.ext.from
	s.ext.from = 0
	if from != 0 && from != self && s.counts != nil {
		// Those hits are in counts already: they only get their owner.
		if own := s.own(); !allZero(own) && len(s.ext.peers) < maxPeers {
			s.ext.peers = append(s.ext.peers, peerRing{id: from, counts: own})
		}
	}
	if i := s.peerIndex(self); i >= 0 { // counted here after all: own again
		s.ext.peers = slices.Delete(s.ext.peers, i, i+1)
	}
	s.dropEmptyPeers()
}

// Absorb makes every hit of s this node's own, forgetting who decided
// them: for a node that never merges with another (no cluster), where
// telling deciders apart would only cost memory. Counts are unchanged.
func (s *Sliding) Absorb() { s.ext = nil }

// Unadopted reports whether s still holds another node's copy as that
// node's own (see Adopt): the caller must Adopt it before counting in it.
func (s *Sliding) Unadopted() bool { return s.ext != nil && s.ext.from != 0 }

// own returns the counts of the node that holds s (counts minus the
// peers'), as a new ring.
func (s *Sliding) own() []uint32 {
	own := slices.Clone(s.counts)
	if s.ext == nil {
		return own
	}
	for _, p := range s.ext.peers {
		for i, c := range p.counts {
			own[i] -= min(own[i], c)
		}
	}
	return own
}

// ownView is own for reading only: with no peer rings it is s.counts
// itself, not a copy.
func (s *Sliding) ownView() []uint32 {
	if s.ext == nil || len(s.ext.peers) == 0 {
		return s.counts
	}
	return s.own()
}

func (s *Sliding) peerIndex(id uint64) int {
	if s.ext == nil {
		return -1
	}
	return slices.IndexFunc(s.ext.peers, func(p peerRing) bool { return p.id == id })
}

// mergeRing folds in, the counts node id decided (laid out like s.counts),
// into s for the steps lo..hi: per step the larger of what s knows of id and
// in, the difference added to the total. For id == ownID, the node whose
// own counts s holds, in is compared with those.
func (s *Sliding) mergeRing(ownID, id uint64, in []uint32, lo, hi int64) {
	n := int64(len(s.counts))
	if id == ownID && ownID != 0 {
		own := s.ownView()
		for i, k := mod(lo, n), lo; k <= hi; k++ {
			if in[i] > own[i] {
				s.addAt(i, int64(in[i]-own[i]))
			}
			if i++; i == n {
				i = 0
			}
		}
		return
	}
	k := s.peerIndex(id)
	if k < 0 {
		if allZeroIn(in, lo, hi, n) {
			return
		}
		if s.ext == nil {
			s.ext = &deciders{}
		}
		if len(s.ext.peers) >= maxPeers {
			// Too many deciders to tell apart: take the larger total per
			// step for this one, which may undercount it but never holds
			// unbounded state.
			s.maxAt(in, lo, hi)
			return
		}
		s.ext.peers = append(s.ext.peers, peerRing{id: id, counts: make([]uint32, n)})
		k = len(s.ext.peers) - 1
	}
	pc := s.ext.peers[k].counts
	for i, k := mod(lo, n), lo; k <= hi; k++ {
		if in[i] > pc[i] {
			s.addAt(i, int64(in[i]-pc[i]))
			pc[i] = in[i]
		}
		if i++; i == n {
			i = 0
		}
	}
}

// maxAt raises each count of s for the steps lo..hi to in's, where in is
// laid out like s.counts, adding the difference to the total.
func (s *Sliding) maxAt(in []uint32, lo, hi int64) {
	n := int64(len(s.counts))
	for i, k := mod(lo, n), lo; k <= hi; k++ {
		if in[i] > s.counts[i] {
			s.addAt(i, int64(in[i]-s.counts[i]))
		}
		if i++; i == n {
			i = 0
		}
	}
}

// addAt adds c hits to the step at ring position i, saturating.
func (s *Sliding) addAt(i int64, c int64) {
	v := min(int64(s.counts[i])+c, MaxLimit)
	s.total += v - int64(s.counts[i])
	s.counts[i] = uint32(v)
}

// clearPeersAt zeroes ring position i in every peer ring.
func (s *Sliding) clearPeersAt(i int64) {
	for _, p := range s.ext.peers {
		p.counts[i] = 0
	}
}

// dropEmptyPeers forgets peer rings with no hits left in them.
func (s *Sliding) dropEmptyPeers() {
	if s.ext == nil {
		return
	}
	s.ext.peers = slices.DeleteFunc(s.ext.peers, func(p peerRing) bool { return allZero(p.counts) })
	if len(s.ext.peers) == 0 && s.ext.from == 0 {
		s.ext = nil
	}
}

// Peers reports how many other nodes' counts s tells apart.
func (s *Sliding) Peers() int {
	if s.ext == nil {
		return 0
	}
	return len(s.ext.peers)
}

func allZero(c []uint32) bool {
	for _, v := range c {
		if v != 0 {
			return false
		}
	}
	return true
}

func allZeroIn(c []uint32, lo, hi, n int64) bool {
	for i, k := mod(lo, n), lo; k <= hi; k++ {
		if c[i] != 0 {
			return false
		}
		if i++; i == n {
			i = 0
		}
	}
	return true
}

// MergeFrom folds o, another node's copy of the key, into s, which node
// self counts in. When o carries who decided its hits (an encoding from
// AppendBinaryFrom), hits are merged per deciding node, so hits decided
// concurrently on two nodes add up; otherwise (self 0, or an older
// encoding) it is Merge, the larger count per step. o is not modified.
func (s *Sliding) MergeFrom(r *Rate, o *Sliding, self uint64) {
	if o.counts == nil {
		return
	}
	if o.ext == nil || o.ext.from == 0 || self == 0 {
		s.Merge(r, o)
		return
	}
	// oc is o on r's steps. o is only read, so it is copied only when it
	// must be rebased: a replica merging its owner's copies allocates
	// nothing.
	oc := *o
	if oc.step != r.step || len(oc.counts) != r.buckets+1 {
		oc.counts = slices.Clone(o.counts)
		oc.ext = &deciders{from: o.ext.from, peers: o.ext.peers}
		oc.rebase(r) // drops oc's peers: their hits count as the sender's
	}
	n := int64(len(oc.counts))
	if s.counts == nil {
		// A first copy (a replica's, usually) is kept as its sender's own:
		// no ring of its own until this node counts in it (Adopt).
		s.counts, s.step, s.last, s.total = slices.Clone(oc.counts), oc.step, oc.last, oc.total
		s.ext = &deciders{from: oc.ext.from}
		for _, p := range oc.ext.peers {
			s.ext.peers = append(s.ext.peers, peerRing{id: p.id, counts: slices.Clone(p.counts)})
		}
		s.dropEmptyPeers()
		return
	}
	ownID := self
	if s.Unadopted() {
		ownID = s.ext.from
	}
	if oc.last > s.last {
		s.advance(r, timeUnix(oc.last))
	} else {
		s.advance(r, timeUnix(s.last))
	}
	head, oHead := floorDiv(s.last, r.step), floorDiv(oc.last, r.step)
	lo, hi := max(head-n+1, oHead-n+1), min(head, oHead)
	if lo > hi {
		return
	}
	s.mergeRing(ownID, oc.ext.from, oc.ownView(), lo, hi)
	for _, p := range oc.ext.peers {
		s.mergeRing(ownID, p.id, p.counts, lo, hi)
	}
	s.dropEmptyPeers()
}

// AppendBinaryFrom appends the encoding of s, kept by node self, to b,
// naming self as the decider of s's own hits and carrying the peer rings
// (see MergeFrom). With self 0 and no peer rings it is AppendBinary.
func (s *Sliding) AppendBinaryFrom(b []byte, self uint64) ([]byte, error) {
	from := self
	if s.ext != nil && s.ext.from != 0 {
		from = s.ext.from // not adopted: its own hits are still from's
	}
	if from == 0 && s.Peers() == 0 || len(s.counts) == 0 {
		return s.appendV1(b), nil
	}
	b = append(b, slidingVersionDeciders)
	b = s.appendRing(b)
	b = binary.AppendUvarint(b, from)
	b = binary.AppendUvarint(b, uint64(s.Peers()))
	if s.ext != nil {
		n := len(s.counts)
		for _, p := range s.ext.peers {
			b = binary.AppendUvarint(b, p.id)
			for i, k := oldest(s.last, s.step, n), 0; k < n; k++ {
				b = binary.AppendUvarint(b, uint64(p.counts[i]))
				if i++; i == n {
					i = 0
				}
			}
		}
	}
	return b, nil
}

// decodeDeciders reads what AppendBinaryFrom writes after the ring.
func (s *Sliding) decodeDeciders(data []byte) (int, error) {
	if len(s.counts) == 0 {
		return 0, fmt.Errorf("%w: sliding: deciders of an empty window", ErrCorrupt)
	}
	p := 0
	from, k := binary.Uvarint(data[p:])
	if k <= 0 {
		return 0, fmt.Errorf("%w: sliding: bad decider", ErrCorrupt)
	}
	p += k
	np, k := binary.Uvarint(data[p:])
	if k <= 0 || np > maxPeers {
		return 0, fmt.Errorf("%w: sliding: bad peer count", ErrCorrupt)
	}
	p += k
	// s.ext, when set, is memory to reuse (see decode).
	ext := s.ext
	if ext == nil {
		ext = &deciders{}
	}
	spare := ext.peers
	ext.from, ext.peers = from, ext.peers[:0]
	n := len(s.counts)
	for range np {
		id, k := binary.Uvarint(data[p:])
		if k <= 0 || id == 0 || id == from || slices.ContainsFunc(ext.peers, func(q peerRing) bool { return q.id == id }) {
			return 0, fmt.Errorf("%w: sliding: bad peer id", ErrCorrupt)
		}
		p += k
		pr := peerRing{id: id}
		if j := len(ext.peers); j < len(spare) && cap(spare[j].counts) >= n {
			pr.counts = spare[j].counts[:n] // every position is written below
		} else {
			pr.counts = make([]uint32, n)
		}
		for i, j := oldest(s.last, s.step, n), 0; j < n; j++ {
			c, k := binary.Uvarint(data[p:])
			if k <= 0 || c > MaxLimit || uint32(c) > s.counts[i] {
				return 0, fmt.Errorf("%w: sliding: bad peer count", ErrCorrupt)
			}
			p += k
			pr.counts[i] = uint32(c)
			if i++; i == n {
				i = 0
			}
		}
		ext.peers = append(ext.peers, pr)
	}
	s.ext = nil
	if from != 0 || len(ext.peers) > 0 {
		s.ext = ext
	}
	return p, nil
}
