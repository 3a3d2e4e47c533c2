package limiter

import (
	"context"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/policy"
)

// FuzzMerge merges arbitrary bytes, as a peer might send them, into a key
// that has counted hits: bad state is rejected, nothing panics, and a merge
// never lowers the count.
func FuzzMerge(f *testing.F) {
	clk := newClock()
	l := mustNew(f, clk, nil, policy.Policy{Name: "p", Limit: 1000, Window: time.Minute})
	for i := range 3 {
		allow(f, l, Request{Policy: "p", Key: "seed", Hits: int64(i + 1)})
		st, _ := l.State("p", "seed")
		f.Add(st)
	}
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		key := "k"
		l.Reset(context.Background(), "p", key)
		allow(t, l, Request{Policy: "p", Key: key, Hits: 5})
		before, _ := l.Usage("p", key)
		_ = l.Merge(KeyState{Policy: "p", Key: key, State: b}, false, 0)
		after, err := l.Usage("p", key)
		if err != nil || after.Used < before.Used {
			t.Fatalf("after merging %x: %+v, %v; before %+v", b, after, err, before)
		}
		allow(t, l, Request{Policy: "p", Key: key}) // still usable
	})
}
