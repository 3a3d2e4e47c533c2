package window

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// buildState plays a random trace under r and takes a few leases.
func buildState(rng *rand.Rand, r Rate, n int) (*State, int64) {
	var st State
	var now int64
	for _, o := range randomTrace(rng, r, n) {
		st.Window.Allow(&r, time.Unix(0, o.now), o.hits)
		now = o.now
	}
	for i := range rng.IntN(5) {
		st.Leases.Acquire(uint64(i)+1, time.Unix(0, now), time.Duration(rng.Int64N(int64(time.Minute))))
	}
	return &st, now
}

func TestStateRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		ops   int
		other bool // use the state under another Rate before encoding
	}{
		{"empty", 0, false},
		{"one call", 1, false},
		{"trace", 50, false},
		{"long trace", 400, false},
		{"after rebase", 50, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for seed := range 50 {
				rng := rand.New(rand.NewPCG(uint64(seed), 3))
				r := randomRate(rng)
				st, now := buildState(rng, r, tt.ops)
				if tt.other {
					r = randomRate(rng)
					st.Window.Allow(&r, time.Unix(0, now), 1)
				}
				b := encode(t, st)
				var got State
				if err := got.UnmarshalBinary(b); err != nil {
					t.Fatalf("seed %d: UnmarshalBinary() error = %v", seed, err)
				}
				if !reflect.DeepEqual(got.Leases, st.Leases) {
					t.Fatalf("seed %d: Leases round trip = %+v, want %+v", seed, got.Leases, st.Leases)
				}
				if b2 := encode(t, &got); string(b2) != string(b) {
					t.Fatalf("seed %d: re-encoding = %x, want %x", seed, b2, b)
				}
				// The decoded window decides exactly as the original.
				for _, o := range randomTrace(rng, r, 50) {
					o.now += now
					x := st.Window.Allow(&r, time.Unix(0, o.now), o.hits)
					y := got.Window.Allow(&r, time.Unix(0, o.now), o.hits)
					if x != y {
						t.Fatalf("seed %d: Allow() after round trip = %+v, want %+v", seed, y, x)
					}
				}
				// Both parts decode on their own too.
				var w Sliding
				if err := w.UnmarshalBinary(encode(t, &st.Window)); err != nil {
					t.Fatalf("seed %d: Sliding.UnmarshalBinary() error = %v", seed, err)
				}
				var l Leases
				if err := l.UnmarshalBinary(encode(t, &st.Leases)); err != nil {
					t.Fatalf("seed %d: Leases.UnmarshalBinary() error = %v", seed, err)
				}
			}
		})
	}
}

func TestUnmarshalCorrupt(t *testing.T) {
	r := MustRate(3, time.Minute, 60)
	var st State
	st.Window.Allow(&r, at(0), 2)
	st.Leases.Acquire(7, at(0), time.Minute)
	good := encode(t, &st)
	win := encode(t, &st.Window)
	tests := []struct {
		name string
		data []byte
	}{
		{"nil", nil},
		{"bad version", append([]byte{9}, good[1:]...)},
		{"truncated", good[:len(good)-1]},
		{"trailing byte", append(append([]byte{}, good...), 0)},
		{"window only", win},
		{"one bucket ring", []byte{slidingVersion, 0, 1, 1, 0, leasesVersion, 0}},
		{"step without ring", []byte{slidingVersion, 0, 1, 0, leasesVersion, 0}},
		{"ring too big", []byte{slidingVersion, 0, 1, 0xa2, 0x1c, leasesVersion, 0}},
		{"time overflows ring", []byte{slidingVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 2, 0, 0, leasesVersion, 0}},
		{"count too big", []byte{slidingVersion, 0, 1, 2, 0, 0x80, 0x80, 0x80, 0x80, 0x10, leasesVersion, 0}},
		{"too many leases", []byte{slidingVersion, 0, 0, 0, leasesVersion, 0x80, 0x80, 0x40}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := st
			if err := st.UnmarshalBinary(tt.data); !errors.Is(err, ErrCorrupt) {
				t.Errorf("State.UnmarshalBinary(%x) error = %v, want %v", tt.data, err, ErrCorrupt)
			}
			if !reflect.DeepEqual(st, before) {
				t.Errorf("State.UnmarshalBinary(%x) changed the state to %+v", tt.data, st)
			}
		})
	}
	// Each part rejects trailing bytes on its own.
	var w Sliding
	if err := w.UnmarshalBinary(append(win, 0)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Sliding.UnmarshalBinary(trailing) error = %v, want %v", err, ErrCorrupt)
	}
	var l Leases
	if err := l.UnmarshalBinary([]byte{leasesVersion, 0, 0}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Leases.UnmarshalBinary(trailing) error = %v, want %v", err, ErrCorrupt)
	}
}

// fuzzRates are the Rates a decoded state is used with.
var fuzzRates = []Rate{
	MustRate(1, time.Second, 1),
	MustRate(3, time.Minute, 60),
	MustRate(600, 5*time.Minute, 60),
	MustRate(MaxLimit, MaxWindow, MaxBuckets),
	MustRate(10, time.Second, MaxBuckets),
}

func fuzzSeeds(f *testing.F, part func(*State) []byte) {
	f.Add([]byte{})
	f.Add([]byte{slidingVersion, 0, 0, 0, leasesVersion, 0})
	for seed := range 4 {
		rng := rand.New(rand.NewPCG(uint64(seed), 11))
		st, _ := buildState(rng, fuzzRates[seed], 30)
		f.Add(part(st))
		// The same with hits decided by two other nodes (deciders).
		o1, _ := buildState(rng, fuzzRates[seed], 10)
		o2, _ := buildState(rng, fuzzRates[seed], 10)
		st.Window.MergeFrom(&fuzzRates[seed], decoded(&o1.Window, 100), 1)
		st.Window.MergeFrom(&fuzzRates[seed], decoded(&o2.Window, 200), 1)
		withPeers := *st
		b, _ := st.Window.AppendBinaryFrom(nil, 1)
		_ = withPeers.Window.UnmarshalBinary(b)
		f.Add(part(&withPeers))
	}
}

// decoded returns s as another node, id, would send it.
func decoded(s *Sliding, id uint64) *Sliding {
	b, _ := s.AppendBinaryFrom(nil, id)
	var out Sliding
	if err := out.UnmarshalBinary(b); err != nil {
		panic(err)
	}
	return &out
}

// useWindow exercises a decoded window under every fuzz Rate.
func useWindow(w *Sliding, now int64, hits int64) {
	for _, r := range fuzzRates {
		c := *w
		c.counts = append([]uint32(nil), w.counts...)
		for _, t := range []int64{now, c.last, c.last - 1, c.last + r.step, c.last + int64(r.window)} {
			c.Peek(&r, time.Unix(0, t), hits)
			c.Allow(&r, time.Unix(0, t), hits)
			c.Count(&r, time.Unix(0, t))
		}
		if _, err := c.MarshalBinary(); err != nil {
			panic(err)
		}
		var d Sliding
		d.Add(&r, time.Unix(0, now), 1)
		d.MergeFrom(&r, w, 7)
		d.MergeFrom(&r, w, 7)
		d.Adopt(9)
		if _, err := d.AppendBinaryFrom(nil, 9); err != nil {
			panic(err)
		}
	}
}

func FuzzSlidingDecode(f *testing.F) {
	fuzzSeeds(f, func(st *State) []byte { b, _ := st.Window.MarshalBinary(); return b })
	f.Fuzz(func(t *testing.T, data []byte) {
		var w Sliding
		if err := w.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("UnmarshalBinary() error = %v, want %v", err, ErrCorrupt)
			}
			return
		}
		var w2 Sliding
		if err := w2.UnmarshalBinary(encode(t, &w)); err != nil {
			t.Fatalf("UnmarshalBinary(MarshalBinary()) error = %v", err)
		}
		if !reflect.DeepEqual(w, w2) {
			t.Fatalf("round trip = %+v, want %+v", w2, w)
		}
		useWindow(&w, 1_700_000_000_000_000_000, int64(len(data)%5))
	})
}

func FuzzStateDecode(f *testing.F) {
	fuzzSeeds(f, func(st *State) []byte { b, _ := st.MarshalBinary(); return b })
	var scratch State // reused across inputs, as the limiter's Merge does
	f.Fuzz(func(t *testing.T, data []byte) {
		var st State
		err := st.UnmarshalBinary(data)
		rerr := scratch.UnmarshalBinaryReuse(data)
		if (rerr != nil) != (err != nil) {
			t.Fatalf("UnmarshalBinaryReuse() error = %v, UnmarshalBinary() error = %v", rerr, err)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || !errors.Is(rerr, ErrCorrupt) {
				t.Fatalf("UnmarshalBinary() error = %v and %v, want %v", err, rerr, ErrCorrupt)
			}
			return
		}
		if got, want := encode(t, &scratch), encode(t, &st); !bytes.Equal(got, want) || scratch.Window.total != st.Window.total {
			t.Fatalf("UnmarshalBinaryReuse() = %+v, UnmarshalBinary() = %+v", scratch, st)
		}
		var st2 State
		if err := st2.UnmarshalBinary(encode(t, &st)); err != nil {
			t.Fatalf("UnmarshalBinary(MarshalBinary()) error = %v", err)
		}
		if !reflect.DeepEqual(st, st2) {
			t.Fatalf("round trip = %+v, want %+v", st2, st)
		}
		now := time.Unix(0, 1_700_000_000_000_000_000)
		useWindow(&st.Window, now.UnixNano(), int64(len(data)%5))
		st.Leases.InFlight(now)
		st.Leases.Next()
		st.Leases.Release(1, now)
		st.Leases.Expire(now)
	})
}
