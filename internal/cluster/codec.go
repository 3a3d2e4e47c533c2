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

// consumeTag is protowire.ConsumeTag that also refuses field numbers over
// protowire.MaxValidNumber, as proto.Unmarshal does.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int, error) {
	num, typ, k := protowire.ConsumeTag(b)
	if k < 0 {
		return 0, 0, k, protowire.ParseError(k)
	}
	if num > protowire.MaxValidNumber {
		return 0, 0, -1, errFieldNumber
	}
	return num, typ, k, nil
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
		num, typ, k, err := consumeTag(rest)
		if err != nil {
			return nil, err
		}
		rest = rest[k:]
		if num == fieldResults && typ == protowire.BytesType {
			n++
		}
		k = protowire.ConsumeFieldValue(num, typ, rest)
		if k < 0 {
			return nil, protowire.ParseError(k)
		}
		rest = rest[k:]
	}
	out := make([]allowAnswer, 0, n)
	decisions := make([]limiterv1.PeerDecision, n)
	for len(b) > 0 {
		num, typ, k, _ := consumeTag(b) // checked above
		b = b[k:]
		if num != fieldResults || typ != protowire.BytesType {
			b = b[protowire.ConsumeFieldValue(num, typ, b):]
			continue
		}
		v, k := protowire.ConsumeBytes(b)
		b = b[k:]
		a, err := decodeAllowResult(v, &decisions[len(out)], policy)
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
		num, typ, k, err := consumeTag(b)
		if err != nil {
			return a, err
		}
		b = b[k:]
		if (num == fieldResultDecision || num == fieldResultStatus) && typ == protowire.BytesType {
			v, k := protowire.ConsumeBytes(b)
			if k < 0 {
				return a, protowire.ParseError(k)
			}
			b = b[k:]
			// A oneof member that appears again merges into the one
			// decoded so far; after the other member it starts afresh.
			if num == fieldResultDecision {
				if a.decision == nil {
					*d = limiterv1.PeerDecision{}
					a.decision, a.status = d, nil
				}
				if err := decodeDecision(v, d, policy); err != nil {
					return a, fmt.Errorf("decision: %w", err)
				}
			} else {
				if a.status == nil {
					a.decision, a.status = nil, &limiterv1.ItemStatus{}
				}
				if err := decodeStatus(v, a.status); err != nil {
					return a, fmt.Errorf("status: %w", err)
				}
			}
			continue
		}
		k = protowire.ConsumeFieldValue(num, typ, b)
		if k < 0 {
			return a, protowire.ParseError(k)
		}
		b = b[k:]
	}
	return a, nil
}

// decodeDecision merges the PeerDecision in b into d.
func decodeDecision(b []byte, d *limiterv1.PeerDecision, policy *atomic.Pointer[string]) error {
	for len(b) > 0 {
		num, typ, k, err := consumeTag(b)
		if err != nil {
			return err
		}
		b = b[k:]
		switch {
		case typ == protowire.VarintType && num >= fieldDecAllowed && num <= fieldDecShadowCode && num != fieldDecPolicy && num != fieldDecLeaseID:
			v, k := protowire.ConsumeVarint(b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
			switch num {
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
		case typ == protowire.BytesType && (num == fieldDecPolicy || num == fieldDecLeaseID):
			v, k := protowire.ConsumeBytes(b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
			if !utf8.Valid(v) {
				return errInvalidUTF8
			}
			if num == fieldDecLeaseID {
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
		default:
			k := protowire.ConsumeFieldValue(num, typ, b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
		}
	}
	return nil
}

// decodeStatus merges the ItemStatus in b into st.
func decodeStatus(b []byte, st *limiterv1.ItemStatus) error {
	for len(b) > 0 {
		num, typ, k, err := consumeTag(b)
		if err != nil {
			return err
		}
		b = b[k:]
		switch {
		case num == fieldStatusCode && typ == protowire.VarintType:
			v, k := protowire.ConsumeVarint(b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
			st.Code = int32(v)
		case num == fieldStatusMessage && typ == protowire.BytesType:
			v, k := protowire.ConsumeBytes(b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
			if !utf8.Valid(v) {
				return errInvalidUTF8
			}
			st.Message = string(v)
		default:
			k := protowire.ConsumeFieldValue(num, typ, b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
		}
	}
	return nil
}
