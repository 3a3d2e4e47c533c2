package envoy

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/limiterd/limiterd/internal/policy"
)

const exampleYAML = `
policies:
  - name: uploads
    limit: 100
    window: 1m
envoy:
  domains:
    - domain: edge
      descriptors:
        - key: remote_address
          policy: default
        - key: path
          value: /upload
          policy: uploads
        - key: path
          value: /api/*
          policy: default
        - key: path
          value: /healthz
          unlimited: true
        - key: tenant
          descriptors:
            - key: plan
              value: free
              policy: free-tier
    - domain: internal
`

func TestParseConfig(t *testing.T) {
	want := Config{Domains: []Domain{
		{Name: "edge", Descriptors: []Descriptor{
			{Key: "remote_address", Policy: "default"},
			{Key: "path", Value: "/upload", Policy: "uploads"},
			{Key: "path", Value: "/api/*", Policy: "default"},
			{Key: "path", Value: "/healthz", Unlimited: true},
			{Key: "tenant", Descriptors: []Descriptor{{Key: "plan", Value: "free", Policy: "free-tier"}}},
		}},
		{Name: "internal"},
	}}
	got, err := ParseConfig([]byte(exampleYAML))
	if err != nil {
		t.Fatalf("ParseConfig() error = %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseConfig() = %+v, want %+v", got, want)
	}
	if got, want := got.Policies(), []string{"default", "uploads", "free-tier"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Policies() = %q, want %q", got, want)
	}
}

func TestParseConfigEmpty(t *testing.T) {
	for _, in := range []string{"", "# nothing\n", "~", "policies: []\nother: {a: 1}\n", "envoy:\n", "envoy: {}\n", "envoy:\n  domains: []\n"} {
		got, err := ParseConfig([]byte(in))
		if err != nil || len(got.Domains) != 0 {
			t.Errorf("ParseConfig(%q) = %+v, %v, want zero Config", in, got, err)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	deep := "envoy:\n  domains:\n    - domain: d\n      descriptors:\n"
	indent := "        "
	for i := 0; i <= MaxDepth; i++ {
		deep += indent + "- key: k\n" + indent + "  policy: p\n" + indent + "  descriptors:\n"
		indent += "    "
	}
	deep += indent + "- key: last\n" + indent + "  policy: p\n"

	tests := []struct {
		name string
		in   string
		want string // in the error message
	}{
		{"not yaml", "envoy: [", "envoy: invalid config"},
		{"top not a mapping", "- a\n- b\n", "file: is not a YAML mapping"},
		{"envoy twice", "envoy: {}\nenvoy: {}\n", "envoy"},
		{"envoy not a mapping", "envoy: [1]\n", "envoy: want a mapping"},
		{"unknown envoy field", "envoy:\n  domain: x\n", `envoy: unknown field "domain"`},
		{"domains not a list", "envoy:\n  domains: x\n", "envoy.domains: want a list"},
		{"missing domain", "envoy:\n  domains:\n    - descriptors: []\n", "envoy.domains[0].domain: missing"},
		{"domain not a string", "envoy:\n  domains:\n    - domain: [a]\n", "envoy.domains[0].domain: want a string"},
		{"duplicate domain", "envoy:\n  domains:\n    - domain: a\n    - domain: a\n", `envoy.domains[1].domain: "a" is also envoy.domains[0]`},
		{"missing key", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - policy: p\n", "envoy.domains[0](a).descriptors[0].key: missing"},
		{"unknown descriptor field", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          rate_limit: {}\n", `envoy.domains[0](a).descriptors[0]: unknown field "rate_limit"`},
		{"field twice", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          key: j\n", "envoy.domains[0](a).descriptors[0].key: defined twice"},
		{"nothing to do", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n", "envoy.domains[0](a).descriptors[0](k): needs a policy"},
		{"unlimited and policy", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          policy: p\n          unlimited: true\n", "descriptors[0](k).unlimited: excludes policy"},
		{"unlimited not bool", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          unlimited: yes please\n", "descriptors[0](k).unlimited: want true or false"},
		{"duplicate entry", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          value: v\n          policy: p\n        - key: k\n          value: v\n          policy: q\n", "descriptors[1](k=v): same key and value as envoy.domains[0](a).descriptors[0]"},
		{"nested error names the path", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: tenant\n          descriptors:\n            - key: plan\n              value: [x]\n", "envoy.domains[0](a).descriptors[0](tenant).descriptors[0].value: want a string"},
		{"too deep", deep, "nested deeper than 16"},
		{"value too long", "envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          value: " + strings.Repeat("v", MaxNameLen+1) + "\n          policy: p\n", "value: 257 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tt.in))
			if err == nil {
				t.Fatalf("ParseConfig() = %+v, want an error containing %q", got, tt.want)
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseConfig() error = %v, want ErrInvalidConfig containing %q", err, tt.want)
			}
		})
	}
}

func TestParseConfigAliasBomb(t *testing.T) {
	// Each level doubles the entries; aliases must not blow up the parse.
	in := "a0: &a0 {key: k, policy: p}\n"
	prev := "a0"
	for i := 1; i < 20; i++ {
		name := "a" + strings.Repeat("x", i)
		in += name + ": &" + name + " {key: k" + name + ", descriptors: [*" + prev + ", *" + prev + "]}\n"
		prev = name
	}
	in += "envoy:\n  domains:\n    - domain: d\n      descriptors: [*" + prev + "]\n"
	if _, err := ParseConfig([]byte(in)); err == nil {
		t.Fatal("ParseConfig(alias bomb) error = nil, want an error")
	}
}

func TestValidate(t *testing.T) {
	cfg, err := ParseConfig([]byte(exampleYAML))
	if err != nil {
		t.Fatalf("ParseConfig() error = %v", err)
	}
	ps := map[string]policy.Policy{
		"default":   policy.Default(),
		"uploads":   {Name: "uploads", Limit: 100, Window: 60e9},
		"free-tier": {Name: "free-tier", Limit: 10, Window: 60e9},
	}
	lookup := func(n string) (policy.Policy, bool) { p, ok := ps[n]; return p, ok }
	exists := func(n string) bool { _, ok := ps[n]; return ok }
	if err := cfg.Validate(exists); err != nil {
		t.Errorf("Validate() error = %v", err)
	}
	if err := cfg.ValidatePolicies(lookup); err != nil {
		t.Errorf("ValidatePolicies() error = %v", err)
	}

	delete(ps, "free-tier")
	for name, err := range map[string]error{"Validate": cfg.Validate(exists), "ValidatePolicies": cfg.ValidatePolicies(lookup)} {
		want := `envoy.domains[0](edge).descriptors[4](tenant).descriptors[0](plan=free): policy: "free-tier" does not exist`
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(fmtErr(err), want) {
			t.Errorf("%s() error = %v, want %q", name, err, want)
		}
	}

	ps["free-tier"] = policy.Policy{Name: "free-tier", Limit: 10, Window: 60e9, MaxConcurrent: 2}
	err = cfg.ValidatePolicies(lookup)
	if !errors.Is(err, ErrConcurrencyPolicy) || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(fmtErr(err), "max_concurrent 2") {
		t.Errorf("ValidatePolicies() error = %v, want ErrConcurrencyPolicy naming max_concurrent", err)
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		exampleYAML,
		"",
		"envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          value: v*\n          policy: p\n",
		"envoy:\n  domains:\n    - domain: a\n      descriptors:\n        - key: k\n          unlimited: true\n",
		"envoy: &x {domains: [{domain: *x}]}\n",
		"envoy:\n  domains:\n    - {domain: a, descriptors: [{key: k, descriptors: [{key: j, policy: p}]}]}\n",
		"envoy: [\n",
		"envoy:\n  domains:\n    - domain: 5\n      descriptors:\n        - key: true\n          value: 1.5\n          policy: ~\n          unlimited: false\n          descriptors: [{key: x, policy: y}]\n",
		"- [a, b]\n",
		"envoy: !!binary aGVsbG8=\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("ParseConfig() error = %v, want ErrInvalidConfig", err)
			}
			return
		}
		// What parses keeps the invariants the service relies on.
		seen := map[string]bool{}
		for _, d := range cfg.Domains {
			if d.Name == "" || seen[d.Name] {
				t.Fatalf("ParseConfig() domain %q empty or repeated", d.Name)
			}
			seen[d.Name] = true
		}
		_ = cfg.walk(func(path string, d Descriptor) error {
			if d.Key == "" || (d.Unlimited && d.Policy != "") || (d.Policy == "" && !d.Unlimited && len(d.Descriptors) == 0) {
				t.Fatalf("ParseConfig() %s = %+v breaks an invariant", path, d)
			}
			return nil
		})
		_ = cfg.Validate(func(string) bool { return false })
		compile(cfg)
	})
}
