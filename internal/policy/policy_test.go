package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    []Policy
		wantErr string
	}{
		{name: "empty file gives default", yaml: "", want: []Policy{Default()}},
		{
			name: "contract example",
			yaml: "policies:\n  - name: default\n    limit: 600\n    window: 5m\n  - name: uploads\n    limit: 100\n    window: 1m\n    max_concurrent: 5\n    lease_ttl: 30s\n",
			want: []Policy{Default(), {Name: "uploads", Limit: 100, Window: time.Minute, Buckets: 60, MaxConcurrent: 5, LeaseTTL: 30 * time.Second}},
		},
		{name: "default added", yaml: "policies:\n  - {name: a, limit: 1, window: 1s, shadow: true, fail_open: true}\n",
			want: []Policy{Default(), {Name: "a", Limit: 1, Window: time.Second, Buckets: 60, LeaseTTL: DefaultLeaseTTL, Shadow: true, FailOpen: true}}},
		{name: "unknown field", yaml: "policies:\n  - {name: a, limit: 1, window: 1s, burst: 3}\n", wantErr: "burst"},
		{name: "bad window", yaml: "policies:\n  - {name: a, limit: 1, window: 5 minutes}\n", wantErr: "window"},
		{name: "missing window", yaml: "policies:\n  - {name: a, limit: 1}\n", wantErr: "window"},
		{name: "window too long", yaml: "policies:\n  - {name: a, limit: 1, window: 25h}\n", wantErr: "window"},
		{name: "zero limit", yaml: "policies:\n  - {name: a, limit: 0, window: 1m}\n", wantErr: "limit"},
		{name: "negative cap", yaml: "policies:\n  - {name: a, limit: 1, window: 1m, max_concurrent: -1}\n", wantErr: "max_concurrent"},
		{name: "bad ttl", yaml: "policies:\n  - {name: a, limit: 1, window: 1m, lease_ttl: soon}\n", wantErr: "lease_ttl"},
		{name: "bad name", yaml: "policies:\n  - {name: 'a b', limit: 1, window: 1m}\n", wantErr: "name"},
		{name: "duplicate", yaml: "policies:\n  - {name: a, limit: 1, window: 1m}\n  - {name: a, limit: 2, window: 1m}\n", wantErr: "twice"},
		{name: "not yaml", yaml: "policies: [", wantErr: "yaml"},
		{name: "wrong type", yaml: "policies:\n  - {name: a, limit: lots, window: 1m}\n", wantErr: "lots"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse() error = %v, want ErrInvalid mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Parse() = %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("Parse()[%d] = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("policies:\n  - {name: a, limit: 1, window: 1s}\n"))
	f.Add([]byte("policies:\n  - name: uploads\n    limit: 100\n    window: 1m\n    max_concurrent: 5\n    lease_ttl: 30s\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Parse(data)
		if err != nil {
			return
		}
		for _, p := range ps {
			if err := p.Validate(); err != nil {
				t.Fatalf("Parse() returned invalid policy %+v: %v", p, err)
			}
			if _, err := p.Rate(); err != nil {
				t.Fatalf("Rate() of parsed policy %+v: %v", p, err)
			}
		}
	})
}

func FuzzRecordDecode(f *testing.F) {
	for _, r := range []Record{{Policy: Default(), Version: 3}, {Policy: Policy{Name: "gone"}, Version: 9, Deleted: true}} {
		b, _ := r.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte(`{"name":"x","limit":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Record
		if err := r.UnmarshalBinary(data); err != nil {
			return
		}
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var again Record
		if err := again.UnmarshalBinary(b); err != nil || again != r {
			t.Fatalf("round trip = %+v, %v, want %+v", again, err, r)
		}
	})
}
