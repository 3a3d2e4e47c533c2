// Package policy defines rate-limit policies and reads them from YAML.
//
// A Policy names a limit of hits per window, an optional cap on requests in
// flight, and what to do when a cluster cannot reach a key's owner. The
// built-in policy "default" allows 600 hits per 5 minutes with no cap.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/limiterd/limiterd/internal/window"
)

// DefaultName is the policy used when a request names none.
const DefaultName = "default"

// DefaultLeaseTTL is how long an unreleased lease holds its slot when a
// policy does not say.
const DefaultLeaseTTL = 60 * time.Second

// MaxLeaseTTL bounds a policy's lease_ttl.
const MaxLeaseTTL = 24 * time.Hour

// MaxConcurrent bounds a policy's max_concurrent.
const MaxConcurrent = window.MaxLeases

// ErrInvalid is wrapped by every validation error; the message names the
// field.
var ErrInvalid = errors.New("invalid policy")

// Policy is one named limit. The zero value is not valid; use Default or
// fill the fields and call Validate.
type Policy struct {
	// Name identifies the policy: 1..64 of [A-Za-z0-9_.:-].
	Name string
	// Limit is the hits allowed in any interval of length Window.
	Limit int64
	// Window is the sliding window, 1s..24h.
	Window time.Duration
	// Buckets is the number of resolution steps per window; 0 means 60.
	Buckets int
	// MaxConcurrent caps the leases held at once per key; 0 means no cap.
	MaxConcurrent int64
	// LeaseTTL is how long an unreleased lease holds its slot; 0 means 60s.
	LeaseTTL time.Duration
	// FailOpen allows calls (marked degraded) when a cluster cannot reach the
	// key's owner; false denies them with UNAVAILABLE.
	FailOpen bool
	// Shadow counts and reports but always allows.
	Shadow bool
}

// Default returns the built-in default policy: 600 per 5 minutes.
func Default() Policy {
	return Policy{Name: DefaultName, Limit: 600, Window: 5 * time.Minute, Buckets: window.DefaultBuckets, LeaseTTL: DefaultLeaseTTL}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// WithDefaults returns p with zero Buckets and LeaseTTL filled in.
func (p Policy) WithDefaults() Policy {
	if p.Buckets == 0 {
		p.Buckets = window.DefaultBuckets
	}
	if p.LeaseTTL == 0 {
		p.LeaseTTL = DefaultLeaseTTL
	}
	return p
}

// Validate reports the first invalid field, wrapping ErrInvalid.
func (p Policy) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w %q: %s: %s", ErrInvalid, p.Name, field, fmt.Sprintf(format, args...))
	}
	if !nameRE.MatchString(p.Name) {
		return bad("name", "must be 1..64 of A-Z a-z 0-9 _ . : -")
	}
	if p.Limit < 1 || p.Limit > window.MaxLimit {
		return bad("limit", "%d is out of range 1..%d", p.Limit, int64(window.MaxLimit))
	}
	if p.Window < window.MinWindow || p.Window > window.MaxWindow {
		return bad("window", "%v is out of range %v..%v", p.Window, window.MinWindow, window.MaxWindow)
	}
	if p.Buckets != 0 && (p.Buckets < 60 || p.Buckets > window.MaxBuckets) {
		return bad("buckets", "%d is out of range 60..%d", p.Buckets, window.MaxBuckets)
	}
	if p.MaxConcurrent < 0 || p.MaxConcurrent > MaxConcurrent {
		return bad("max_concurrent", "%d is out of range 0..%d", p.MaxConcurrent, MaxConcurrent)
	}
	if p.LeaseTTL < 0 || p.LeaseTTL > MaxLeaseTTL || (p.LeaseTTL != 0 && p.LeaseTTL < time.Millisecond) {
		return bad("lease_ttl", "%v is out of range 1ms..%v", p.LeaseTTL, MaxLeaseTTL)
	}
	return nil
}

// Rate returns the window arithmetic of p. p must be valid.
func (p Policy) Rate() (window.Rate, error) {
	return window.NewRate(p.Limit, p.Window, p.WithDefaults().Buckets)
}

// yamlPolicy is the YAML form of a Policy.
type yamlPolicy struct {
	Name          string `yaml:"name"`
	Limit         int64  `yaml:"limit"`
	Window        string `yaml:"window"`
	Buckets       int    `yaml:"buckets"`
	MaxConcurrent int64  `yaml:"max_concurrent"`
	LeaseTTL      string `yaml:"lease_ttl"`
	FailOpen      bool   `yaml:"fail_open"`
	Shadow        bool   `yaml:"shadow"`
}

type yamlFile struct {
	Policies []yamlPolicy `yaml:"policies"`
	// Envoy maps Envoy rate limit descriptors to policies; package envoy
	// reads it from the same file.
	Envoy yaml.Node `yaml:"envoy"`
}

// Parse reads policies from YAML (see the contract for the format). Unknown
// fields, duplicate names and invalid values are errors that name the
// policy and field. The result always contains "default": the built-in one
// unless the file redefines it.
func Parse(data []byte) ([]Policy, error) {
	var f yamlFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	seen := map[string]bool{}
	var out []Policy
	for i, y := range f.Policies {
		p := Policy{Name: y.Name, Limit: y.Limit, Buckets: y.Buckets, MaxConcurrent: y.MaxConcurrent, FailOpen: y.FailOpen, Shadow: y.Shadow}
		var err error
		if y.Window == "" {
			return nil, fmt.Errorf("%w: policies[%d] %q: window: missing", ErrInvalid, i, y.Name)
		}
		if p.Window, err = time.ParseDuration(y.Window); err != nil {
			return nil, fmt.Errorf("%w: policies[%d] %q: window: %v", ErrInvalid, i, y.Name, err)
		}
		if y.LeaseTTL != "" {
			if p.LeaseTTL, err = time.ParseDuration(y.LeaseTTL); err != nil {
				return nil, fmt.Errorf("%w: policies[%d] %q: lease_ttl: %v", ErrInvalid, i, y.Name, err)
			}
		}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("policies[%d]: %w", i, err)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("%w: policies[%d]: name: %q defined twice", ErrInvalid, i, p.Name)
		}
		seen[p.Name] = true
		out = append(out, p.WithDefaults())
	}
	if !seen[DefaultName] {
		out = append([]Policy{Default()}, out...)
	}
	return out, nil
}

// Load reads policies from the YAML file at path.
func Load(path string) ([]Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	ps, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ps, nil
}
