package metrics

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// value returns the value of the counter series of family name whose
// labels are labels (name, value pairs), and how many series the family has.
func value(t *testing.T, m *Metrics, name string, labels ...string) (float64, int) {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range s.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for i := 0; i < len(labels); i += 2 {
				if got[labels[i]] != labels[i+1] {
					continue series
				}
			}
			if c := s.GetCounter(); c != nil {
				return c.GetValue(), len(f.GetMetric())
			}
			return float64(s.GetHistogram().GetSampleCount()), len(f.GetMetric())
		}
		return 0, len(f.GetMetric())
	}
	return 0, 0
}

// TestRecordsByLabels checks that calls land on the children of their
// label values, including from many goroutines at once while the cached
// children are being added.
func TestRecordsByLabels(t *testing.T) {
	m := New(nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				m.Decision("default", 0, false)
				m.Decision("uploads", 122, g%2 == 0)
				m.Forwarded("allow", nil)
				if i%4 == 0 {
					m.Forwarded("allow", errors.New("unreachable"))
				}
				m.Latency("/limiter.v1.Limiter/Allow", time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"limiterd_decisions_total", []string{"policy", "default", "code", "0", "shadow", "false"}, 800},
		{"limiterd_decisions_total", []string{"policy", "uploads", "code", "122", "shadow", "true"}, 400},
		{"limiterd_decisions_total", []string{"policy", "uploads", "code", "122", "shadow", "false"}, 400},
		{"limiterd_forwarded_total", []string{"kind", "allow", "result", "ok"}, 800},
		{"limiterd_forwarded_total", []string{"kind", "allow", "result", "error"}, 200},
		{"limiterd_request_duration_seconds", []string{"method", "/limiter.v1.Limiter/Allow"}, 800},
	} {
		if got, _ := value(t, m, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, n := value(t, m, "limiterd_decisions_total"); n != 3 {
		t.Errorf("decision series = %d, want 3", n)
	}
}

// BenchmarkRecordCall is what a forwarded Allow records: a decision (on
// the owner), a forward and a latency.
func BenchmarkRecordCall(b *testing.B) {
	m := New(nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Decision("default", 0, false)
			m.Forwarded("allow", nil)
			m.Latency("/limiter.v1.Limiter/Allow", 300*time.Microsecond)
		}
	})
}
