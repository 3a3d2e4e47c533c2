package cluster

import (
	"slices"
	"sort"
)

// HashFunc scores member for key in rendezvous hashing: the member with
// the highest score owns the key, the next highest is the first replica,
// and so on. It must be deterministic and the same on every node.
type HashFunc func(member, key string) uint64

// Ring maps keys to members by rendezvous (highest random weight) hashing.
// A key's owner changes only when its owner leaves or a new member
// outscores it, so a membership change moves about 1/N of the keys, and
// only to or from the member that changed.
//
// A Ring is immutable and safe for concurrent use. The zero Ring has no
// members.
type Ring struct {
	self    string
	members []Member // sorted by Name
	hashes  []uint64 // mix64(hashString(members[i].Name)), for the default hash
	hash    HashFunc // nil means the default
}

// NewRing returns a ring over members (which it copies). self names the
// local member, used for the self result of Owner; it may be empty. A nil
// hash selects the default. Members with an empty name are ignored; of two
// with the same name, the last wins.
func NewRing(self string, members []Member, hash HashFunc) *Ring {
	byName := make(map[string]Member, len(members))
	for _, m := range members {
		if m.Name != "" {
			byName[m.Name] = m
		}
	}
	r := &Ring{self: self, hash: hash, members: make([]Member, 0, len(byName))}
	for _, m := range byName {
		r.members = append(r.members, m)
	}
	sort.Slice(r.members, func(i, j int) bool { return r.members[i].Name < r.members[j].Name })
	if hash == nil {
		r.hashes = make([]uint64, len(r.members))
		for i, m := range r.members {
			r.hashes[i] = mix64(hashString(m.Name))
		}
	}
	return r
}

// Members returns a copy of the ring's members, sorted by name.
func (r *Ring) Members() []Member {
	if r == nil {
		return nil
	}
	return slices.Clone(r.members)
}

// Len returns the number of members.
func (r *Ring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.members)
}

// Self returns the name of the local member given to NewRing.
func (r *Ring) Self() string {
	if r == nil {
		return ""
	}
	return r.self
}

// score returns member i's score for key, whose default hash is kh.
func (r *Ring) score(i int, key string, kh uint64) uint64 {
	if r.hash != nil {
		return r.hash(r.members[i].Name, key)
	}
	return mix64(kh ^ r.hashes[i])
}

// Owner returns the member that owns key, and whether it is the local
// member. With no members it returns the zero Member and false.
func (r *Ring) Owner(key string) (m Member, self bool) {
	if r.Len() == 0 {
		return Member{}, false
	}
	var kh uint64
	if r.hash == nil {
		kh = hashString(key)
	}
	best, bestScore := 0, r.score(0, key, kh)
	for i := 1; i < len(r.members); i++ {
		// Ties go to the lower name (the earlier member), on every node.
		if s := r.score(i, key, kh); s > bestScore {
			best, bestScore = i, s
		}
	}
	m = r.members[best]
	return m, m.Name == r.self
}

// Replicas returns up to n members for key in hash order: the owner first,
// then the members that would own key if those before them were gone.
// n <= 0 returns nil.
func (r *Ring) Replicas(key string, n int) []Member { return r.AppendReplicas(nil, key, n) }

// AppendReplicas appends what Replicas returns to dst, without allocating
// when dst has room: the replication loop asks once per changed key.
func (r *Ring) AppendReplicas(dst []Member, key string, n int) []Member {
	if n <= 0 || r.Len() == 0 {
		return dst
	}
	var kh uint64
	if r.hash == nil {
		kh = hashString(key)
	}
	type scored struct {
		i int
		s uint64
	}
	n = min(n, len(r.members))
	var buf [8]scored
	top := buf[:0]
	if n > len(buf) {
		top = make([]scored, 0, n)
	}
	// Insertion into the n best so far, highest score first; a tie keeps
	// the earlier member first.
	for i := range r.members {
		s := r.score(i, key, kh)
		j := len(top)
		for j > 0 && top[j-1].s < s {
			j--
		}
		if j >= n {
			continue
		}
		if len(top) < n {
			top = append(top, scored{})
		}
		copy(top[j+1:], top[j:len(top)-1])
		top[j] = scored{i, s}
	}
	for _, t := range top {
		dst = append(dst, r.members[t.i])
	}
	return dst
}

// hashString is 64-bit FNV-1a.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the murmur3 64-bit finalizer; it spreads FNV's weak low bits so
// that scores of similar keys are independent.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
