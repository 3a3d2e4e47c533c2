package policy

import (
	"encoding/json"
	"fmt"
	"time"
)

// Record is a versioned change to a policy, as stored in bbolt and spread
// through a cluster: for each name the highest Version wins, and a deletion
// is a Record with Deleted set (a tombstone), so a node that missed it still
// converges. Policies from the config file have version 0.
type Record struct {
	Policy  Policy
	Version uint64
	Deleted bool
}

// recordJSON is the stable encoding of a Record.
type recordJSON struct {
	Name          string `json:"name"`
	Limit         int64  `json:"limit,omitempty"`
	WindowNS      int64  `json:"window_ns,omitempty"`
	Buckets       int    `json:"buckets,omitempty"`
	MaxConcurrent int64  `json:"max_concurrent,omitempty"`
	LeaseTTLNS    int64  `json:"lease_ttl_ns,omitempty"`
	FailOpen      bool   `json:"fail_open,omitempty"`
	Shadow        bool   `json:"shadow,omitempty"`
	Version       uint64 `json:"version"`
	Deleted       bool   `json:"deleted,omitempty"`
}

// MarshalBinary encodes r as JSON.
func (r Record) MarshalBinary() ([]byte, error) {
	p := r.Policy
	return json.Marshal(recordJSON{
		Name: p.Name, Limit: p.Limit, WindowNS: int64(p.Window), Buckets: p.Buckets,
		MaxConcurrent: p.MaxConcurrent, LeaseTTLNS: int64(p.LeaseTTL), FailOpen: p.FailOpen,
		Shadow: p.Shadow, Version: r.Version, Deleted: r.Deleted,
	})
}

// UnmarshalBinary decodes MarshalBinary's output and validates the policy
// (a tombstone needs only a valid name).
func (r *Record) UnmarshalBinary(data []byte) error {
	var j recordJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("%w: record: %v", ErrInvalid, err)
	}
	p := Policy{
		Name: j.Name, Limit: j.Limit, Window: time.Duration(j.WindowNS), Buckets: j.Buckets,
		MaxConcurrent: j.MaxConcurrent, LeaseTTL: time.Duration(j.LeaseTTLNS), FailOpen: j.FailOpen, Shadow: j.Shadow,
	}
	if j.Deleted {
		if !nameRE.MatchString(p.Name) {
			return fmt.Errorf("%w: record: name %q", ErrInvalid, p.Name)
		}
		*r = Record{Policy: Policy{Name: p.Name}, Version: j.Version, Deleted: true}
		return nil
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	*r = Record{Policy: p.WithDefaults(), Version: j.Version}
	return nil
}
