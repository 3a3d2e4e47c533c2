package cluster

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// allowAnswer is one item of a decoded PeerAllowBatchResponse: the
// decision, or the status it failed with, or neither (a result the owner
// left empty).
type allowAnswer struct {
	decision *limiterv1.PeerDecision
	status   *limiterv1.ItemStatus
}

// Field numbers of the messages decodeAllowAnswers reads (peer.proto).
const (
	fieldResults          = 1 // PeerAllowBatchResponse.results
	fieldResultStatus     = 2 // PeerAllowResult.status
	fieldResultDecision   = 3 // PeerAllowResult.decision
	fieldStatusCode       = 1 // ItemStatus.code
	fieldStatusMessage    = 2 // ItemStatus.message
	fieldDecAllowed       = 1
	fieldDecCode          = 2
	fieldDecPolicy        = 3
	fieldDecLimit         = 4
	fieldDecRemaining     = 5
	fieldDecRetryAfterNs  = 6
	fieldDecResetAfterNs  = 7
	fieldDecLeaseID       = 8
	fieldDecMaxConcurrent = 9
	fieldDecInFlight      = 10
	fieldDecDegraded      = 11
	fieldDecShadowCode    = 12
)

var (
	errInvalidUTF8 = errors.New("string field is not valid UTF-8")
	errFieldNumber = errors.New("invalid field number")
)

// field is one field of an encoded message: its number and wire type,
// and its varint or its bytes (for BytesType).
type field struct {
	num    protowire.Number
	typ    protowire.Type
	varint uint64
	bytes  []byte
}

// nextField consumes the field at the start of b and returns it and the
// rest of b. Fields of other wire types than varint and bytes are skipped
// over whole (their value is not returned). Errors are proto.Unmarshal's:
// truncation, a bad tag, a field number over protowire.MaxValidNumber.
func nextField(b []byte) (field, []byte, error) {
	num, typ, k := protowire.ConsumeTag(b)
	if k < 0 {
		return field{}, nil, protowire.ParseError(k)
	}
	if num > protowire.MaxValidNumber {
		return field{}, nil, errFieldNumber
	}
	f := field{num: num, typ: typ}
	b = b[k:]
	switch typ {
	case protowire.VarintType:
		f.varint, k = protowire.ConsumeVarint(b)
	case protowire.BytesType:
		f.bytes, k = protowire.ConsumeBytes(b)
	default:
		k = protowire.ConsumeFieldValue(num, typ, b)
	}
	if k < 0 {
		return field{}, nil, protowire.ParseError(k)
	}
	return f, b[k:], nil
}

// is reports whether f is field num of wire type typ.
func (f field) is(num protowire.Number, typ protowire.Type) bool { return f.num == num && f.typ == typ }

// str returns f's bytes as a string field's, which must be UTF-8.
func (f field) str() ([]byte, error) {
	if !utf8.Valid(f.bytes) {
		return nil, errInvalidUTF8
	}
	return f.bytes, nil
}

// decodeAllowAnswers decodes a PeerAllowBatchResponse as
// proto.UnmarshalOptions{DiscardUnknown: true} does (FuzzDecodeAllowAnswers
// checks it against that), for the forwarding node's connection reader,
// where protobuf-go's generic decoder cost four allocations per item (the
// result, its oneof wrapper, the decision and the policy string). Here the
// decisions of a batch share one allocation, and policy, the same string
// for nearly every decision, is taken from *policy when its bytes match
// (and stored there when they do not), so it costs none.
func decodeAllowAnswers(b []byte, policy *atomic.Pointer[string]) ([]allowAnswer, error) {
	// First count the results, so that they and their decisions can be
	// allocated at once.
	n := 0
	for rest := b; len(rest) > 0; {
		f, next, err := nextField(rest)
		if err != nil {
			return nil, err
		}
		if f.is(fieldResults, protowire.BytesType) {
			n++
		}
		rest = next
	}
	out := make([]allowAnswer, 0, n)
	decisions := make([]limiterv1.PeerDecision, n)
	for len(b) > 0 {
		f, next, _ := nextField(b) // checked above
		b = next
		if !f.is(fieldResults, protowire.BytesType) {
			continue
		}
		a, err := decodeAllowResult(f.bytes, &decisions[len(out)], policy)
		if err != nil {
			return nil, fmt.Errorf("result %d: %w", len(out), err)
		}
		out = append(out, a)
	}
	return out, nil
}

// decodeAllowResult decodes one PeerAllowResult into an allowAnswer; a
// decision goes into d.
func decodeAllowResult(b []byte, d *limiterv1.PeerDecision, policy *atomic.Pointer[string]) (allowAnswer, error) {
	var a allowAnswer
	for len(b) > 0 {
		f, next, err := nextField(b)
		if err != nil {
			return a, err
		}
		b = next
		// A oneof member that appears again merges into the one decoded
		// so far; after the other member it starts afresh.
		switch {
		case f.is(fieldResultDecision, protowire.BytesType):
			if a.decision == nil {
				*d = limiterv1.PeerDecision{}
				a.decision, a.status = d, nil
			}
			if err := decodeDecision(f.bytes, d, policy); err != nil {
				return a, fmt.Errorf("decision: %w", err)
			}
		case f.is(fieldResultStatus, protowire.BytesType):
			if a.status == nil {
				a.decision, a.status = nil, &limiterv1.ItemStatus{}
			}
			if err := decodeStatus(f.bytes, a.status); err != nil {
				return a, fmt.Errorf("status: %w", err)
			}
		}
	}
	return a, nil
}

// decodeDecision merges the PeerDecision in b into d.
func decodeDecision(b []byte, d *limiterv1.PeerDecision, policy *atomic.Pointer[string]) error {
	for len(b) > 0 {
		f, next, err := nextField(b)
		if err != nil {
			return err
		}
		b = next
		if f.typ == protowire.VarintType {
			v := f.varint
			switch f.num {
			case fieldDecAllowed:
				d.Allowed = v != 0
			case fieldDecCode:
				d.Code = int32(v)
			case fieldDecLimit:
				d.Limit = int64(v)
			case fieldDecRemaining:
				d.Remaining = int64(v)
			case fieldDecRetryAfterNs:
				d.RetryAfterNs = int64(v)
			case fieldDecResetAfterNs:
				d.ResetAfterNs = int64(v)
			case fieldDecMaxConcurrent:
				d.MaxConcurrent = int64(v)
			case fieldDecInFlight:
				d.InFlight = int64(v)
			case fieldDecDegraded:
				d.Degraded = v != 0
			case fieldDecShadowCode:
				d.ShadowCode = int32(v)
			}
			continue
		}
		if f.typ != protowire.BytesType || f.num != fieldDecPolicy && f.num != fieldDecLeaseID {
			continue
		}
		v, err := f.str()
		if err != nil {
			return err
		}
		if f.num == fieldDecLeaseID {
			d.LeaseId = string(v)
			continue
		}
		if p := policy.Load(); p != nil && *p == string(v) {
			d.Policy = *p
			continue
		}
		s := string(v)
		policy.Store(&s)
		d.Policy = s
	}
	return nil
}

// decodeStatus merges the ItemStatus in b into st.
func decodeStatus(b []byte, st *limiterv1.ItemStatus) error {
	for len(b) > 0 {
		f, next, err := nextField(b)
		if err != nil {
			return err
		}
		b = next
		switch {
		case f.is(fieldStatusCode, protowire.VarintType):
			st.Code = int32(f.varint)
		case f.is(fieldStatusMessage, protowire.BytesType):
			v, err := f.str()
			if err != nil {
				return err
			}
			st.Message = string(v)
		}
	}
	return nil
}
