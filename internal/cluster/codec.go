package cluster

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"

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

// eachField calls fn with each field of the message in b, in order, and
// stops at the first error, of decoding or of fn.
func eachField(b []byte, fn func(field) error) error {
	for len(b) > 0 {
		f, next, err := nextField(b)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			return err
		}
		b = next
	}
	return nil
}

// countMessages checks that every field of the message in b decodes, and
// counts the occurrences of field num as an embedded message (the
// elements of a repeated message field) and their bytes, so that a decoder
// can allocate them at once.
func countMessages(b []byte, num protowire.Number) (n, size int, err error) {
	err = eachField(b, func(f field) error {
		if f.is(num, protowire.BytesType) {
			n++
			size += len(f.bytes)
		}
		return nil
	})
	return n, size, err
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
	n, _, err := countMessages(b, fieldResults)
	if err != nil {
		return nil, err
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
	err := eachField(b, func(f field) error {
		// A oneof member that appears again merges into the one decoded
		// so far; after the other member it starts afresh.
		switch {
		case f.is(fieldResultDecision, protowire.BytesType):
			if a.decision == nil {
				*d = limiterv1.PeerDecision{}
				a.decision, a.status = d, nil
			}
			if err := decodeDecision(f.bytes, d, policy); err != nil {
				return fmt.Errorf("decision: %w", err)
			}
		case f.is(fieldResultStatus, protowire.BytesType):
			if a.status == nil {
				a.decision, a.status = nil, &limiterv1.ItemStatus{}
			}
			if err := decodeStatus(f.bytes, a.status); err != nil {
				return fmt.Errorf("status: %w", err)
			}
		}
		return nil
	})
	return a, err
}

// decodeDecision merges the PeerDecision in b into d.
func decodeDecision(b []byte, d *limiterv1.PeerDecision, policy *atomic.Pointer[string]) error {
	return eachField(b, func(f field) error {
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
			return nil
		}
		if f.typ != protowire.BytesType || f.num != fieldDecPolicy && f.num != fieldDecLeaseID {
			return nil
		}
		v, err := f.str()
		if err != nil {
			return err
		}
		if f.num == fieldDecLeaseID {
			d.LeaseId = string(v)
		} else {
			d.Policy = intern(v, policy)
		}
		return nil
	})
}

// decodeStatus merges the ItemStatus in b into st.
func decodeStatus(b []byte, st *limiterv1.ItemStatus) error {
	return eachField(b, func(f field) error {
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
		return nil
	})
}

// Field numbers of the messages decodeAllowItems reads (peer.proto,
// limiter.proto, google/protobuf/duration.proto).
const (
	fieldItems        = 1 // PeerAllowBatchRequest.items
	fieldItemRequest  = 1 // PeerAllowItem.request
	fieldItemTimeout  = 2 // PeerAllowItem.timeout
	fieldReqKey       = 1 // AllowRequest.key (no UTF-8 check: utf8_validation = NONE)
	fieldReqPolicy    = 2
	fieldReqHits      = 3
	fieldReqDryRun    = 4
	fieldReqRequestID = 5
	fieldReqPath      = 6
	fieldDurSeconds   = 1
	fieldDurNanos     = 2
)

// decodeAllowItems decodes a PeerAllowBatchRequest's items as
// proto.UnmarshalOptions{DiscardUnknown: true} does (FuzzDecodeAllowItems),
// for the owner's connection reader: the items, their requests and their
// timeouts come in three allocations per batch instead of three per item,
// and the policy name, when the request has one, is shared through
// *policy as in decodeAllowAnswers.
func decodeAllowItems(b []byte, policy *atomic.Pointer[string]) ([]*limiterv1.PeerAllowItem, error) {
	n, _, err := countMessages(b, fieldItems)
	if err != nil {
		return nil, err
	}
	out := make([]*limiterv1.PeerAllowItem, 0, n)
	items := make([]limiterv1.PeerAllowItem, n)
	reqs := make([]limiterv1.AllowRequest, n)
	timeouts := make([]durationpb.Duration, n)
	for len(b) > 0 {
		f, next, _ := nextField(b) // checked above
		b = next
		if !f.is(fieldItems, protowire.BytesType) {
			continue
		}
		i := len(out)
		if err := decodeAllowItem(f.bytes, &items[i], &reqs[i], &timeouts[i], policy); err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		out = append(out, &items[i])
	}
	return out, nil
}

// decodeAllowItem decodes one PeerAllowItem into it; its request and
// timeout, if present, go into req and timeout.
func decodeAllowItem(b []byte, it *limiterv1.PeerAllowItem, req *limiterv1.AllowRequest, timeout *durationpb.Duration, policy *atomic.Pointer[string]) error {
	return eachField(b, func(f field) error {
		switch {
		case f.is(fieldItemRequest, protowire.BytesType):
			it.Request = req // a message field that appears again merges
			if err := decodeAllowRequest(f.bytes, req, policy); err != nil {
				return fmt.Errorf("request: %w", err)
			}
		case f.is(fieldItemTimeout, protowire.BytesType):
			it.Timeout = timeout
			if err := decodeDuration(f.bytes, timeout); err != nil {
				return fmt.Errorf("timeout: %w", err)
			}
		}
		return nil
	})
}

// decodeAllowRequest merges the AllowRequest in b into req.
func decodeAllowRequest(b []byte, req *limiterv1.AllowRequest, policy *atomic.Pointer[string]) error {
	return eachField(b, func(f field) error {
		switch {
		case f.is(fieldReqKey, protowire.BytesType):
			req.Key = string(f.bytes)
		case f.is(fieldReqPolicy, protowire.BytesType):
			req.Policy = intern(f.bytes, policy)
		case f.is(fieldReqHits, protowire.VarintType):
			req.Hits = int64(f.varint)
		case f.is(fieldReqDryRun, protowire.VarintType):
			req.DryRun = f.varint != 0
		case f.is(fieldReqRequestID, protowire.BytesType):
			req.RequestId = string(f.bytes)
		case f.is(fieldReqPath, protowire.BytesType):
			req.Path = string(f.bytes)
		}
		return nil
	})
}

// decodeDuration merges the google.protobuf.Duration in b into d.
func decodeDuration(b []byte, d *durationpb.Duration) error {
	return eachField(b, func(f field) error {
		switch {
		case f.is(fieldDurSeconds, protowire.VarintType):
			d.Seconds = int64(f.varint)
		case f.is(fieldDurNanos, protowire.VarintType):
			d.Nanos = int32(f.varint)
		}
		return nil
	})
}

// Field numbers of the messages decodeKeyStates reads (peer.proto).
const (
	fieldReplStates   = 1 // ReplicateRequest.states
	fieldStatePolicy  = 1 // KeyState.policy
	fieldStateKey     = 2 // KeyState.key
	fieldStateState   = 3 // KeyState.state
	fieldStateVersion = 4 // KeyState.version
)

// decodeKeyStates decodes a ReplicateRequest's states as
// proto.UnmarshalOptions{DiscardUnknown: true} does (FuzzDecodeKeyStates),
// for a replica's connection reader, which gets one update per key an owner
// changed. protobuf-go's decoder costs four allocations per state (the
// message, its policy, key and state); here a frame's states share six in
// all, among them one string holding every key and one slice holding
// every state. A key of the result therefore keeps all the frame's keys
// alive: a receiver that keeps a key must keep a copy (the limiter does,
// for keys it has not seen). The policy is shared through *policy as in
// decodeAllowAnswers. The result does not alias b.
func decodeKeyStates(b []byte, policy *atomic.Pointer[string]) ([]*limiterv1.KeyState, error) {
	n, size, err := countMessages(b, fieldReplStates) // size bounds the keys and states
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]*limiterv1.KeyState, n)
	msgs := make([]limiterv1.KeyState, n)
	type span struct{ key, keyEnd, state, stateEnd int }
	spans := make([]span, n)
	keys, states := make([]byte, 0, size), make([]byte, 0, size)
	i := 0
	for len(b) > 0 {
		f, next, _ := nextField(b) // checked above
		b = next
		if !f.is(fieldReplStates, protowire.BytesType) {
			continue
		}
		m, sp := &msgs[i], &spans[i]
		err := eachField(f.bytes, func(f field) error {
			switch {
			case f.is(fieldStatePolicy, protowire.BytesType):
				v, err := f.str()
				if err != nil {
					return fmt.Errorf("policy: %w", err)
				}
				m.Policy = intern(v, policy)
			case f.is(fieldStateKey, protowire.BytesType):
				v, err := f.str()
				if err != nil {
					return fmt.Errorf("key: %w", err)
				}
				sp.key = len(keys)
				keys = append(keys, v...)
				sp.keyEnd = len(keys)
			case f.is(fieldStateState, protowire.BytesType):
				sp.state = len(states)
				states = append(states, f.bytes...)
				sp.stateEnd = len(states)
			case f.is(fieldStateVersion, protowire.VarintType):
				m.Version = int64(f.varint)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("state %d: %w", i, err)
		}
		out[i] = m
		i++
	}
	all := string(keys)
	for i, sp := range spans {
		msgs[i].Key = all[sp.key:sp.keyEnd]
		if sp.stateEnd > sp.state {
			msgs[i].State = states[sp.state:sp.stateEnd:sp.stateEnd]
		}
	}
	return out, nil
}

// intern returns b as a string, the one in *cache when it holds the same
// bytes (then without allocating), and stores a new one there otherwise.
func intern(b []byte, cache *atomic.Pointer[string]) string {
	if p := cache.Load(); p != nil && *p == string(b) {
		return *p
	}
	s := string(b)
	cache.Store(&s)
	return s
}

// appendAllowAnswers appends the encoding of a PeerAllowBatchResponse
// holding results to b: the bytes of deterministic proto.Marshal
// (TestAppendAllowAnswers), without its reflection over every field of
// every decision, which was ~4% of an owner's CPU.
func appendAllowAnswers(b []byte, results []*limiterv1.PeerAllowResult) []byte {
	for _, r := range results {
		b = protowire.AppendTag(b, fieldResults, protowire.BytesType)
		switch {
		case r.GetDecision() != nil:
			d := r.GetDecision()
			n := sizeDecision(d)
			b = protowire.AppendVarint(b, uint64(protowire.SizeTag(fieldResultDecision)+protowire.SizeBytes(n)))
			b = protowire.AppendTag(b, fieldResultDecision, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(n))
			b = appendDecision(b, d)
		case r.GetStatus() != nil:
			st := r.GetStatus()
			n := sizeStatus(st)
			b = protowire.AppendVarint(b, uint64(protowire.SizeTag(fieldResultStatus)+protowire.SizeBytes(n)))
			b = protowire.AppendTag(b, fieldResultStatus, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(n))
			b = appendStatus(b, st)
		default:
			b = protowire.AppendVarint(b, 0)
		}
	}
	return b
}

// decisionFields lists a PeerDecision's fields for sizeDecision and
// appendDecision, in field order: each is a varint, or a string when s is
// set; zero values are left out, as proto3 does.
func decisionFields(d *limiterv1.PeerDecision, fn func(num protowire.Number, v uint64, s string)) {
	fn(fieldDecAllowed, boolVarint(d.GetAllowed()), "")
	fn(fieldDecCode, uint64(int64(d.GetCode())), "")
	fn(fieldDecPolicy, 0, d.GetPolicy())
	fn(fieldDecLimit, uint64(d.GetLimit()), "")
	fn(fieldDecRemaining, uint64(d.GetRemaining()), "")
	fn(fieldDecRetryAfterNs, uint64(d.GetRetryAfterNs()), "")
	fn(fieldDecResetAfterNs, uint64(d.GetResetAfterNs()), "")
	fn(fieldDecLeaseID, 0, d.GetLeaseId())
	fn(fieldDecMaxConcurrent, uint64(d.GetMaxConcurrent()), "")
	fn(fieldDecInFlight, uint64(d.GetInFlight()), "")
	fn(fieldDecDegraded, boolVarint(d.GetDegraded()), "")
	fn(fieldDecShadowCode, uint64(int64(d.GetShadowCode())), "")
}

func sizeDecision(d *limiterv1.PeerDecision) int {
	n := 0
	decisionFields(d, func(num protowire.Number, v uint64, s string) {
		switch {
		case s != "":
			n += protowire.SizeTag(num) + protowire.SizeBytes(len(s))
		case v != 0 && !isString(num):
			n += protowire.SizeTag(num) + protowire.SizeVarint(v)
		}
	})
	return n
}

func appendDecision(b []byte, d *limiterv1.PeerDecision) []byte {
	decisionFields(d, func(num protowire.Number, v uint64, s string) {
		switch {
		case s != "":
			b = protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
		case v != 0 && !isString(num):
			b = protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
		}
	})
	return b
}

// isString reports whether PeerDecision field num is a string.
func isString(num protowire.Number) bool { return num == fieldDecPolicy || num == fieldDecLeaseID }

func boolVarint(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

func sizeStatus(st *limiterv1.ItemStatus) int {
	n := 0
	if c := st.GetCode(); c != 0 {
		n += protowire.SizeTag(fieldStatusCode) + protowire.SizeVarint(uint64(int64(c)))
	}
	if m := st.GetMessage(); m != "" {
		n += protowire.SizeTag(fieldStatusMessage) + protowire.SizeBytes(len(m))
	}
	return n
}

func appendStatus(b []byte, st *limiterv1.ItemStatus) []byte {
	if c := st.GetCode(); c != 0 {
		b = protowire.AppendVarint(protowire.AppendTag(b, fieldStatusCode, protowire.VarintType), uint64(int64(c)))
	}
	if m := st.GetMessage(); m != "" {
		b = protowire.AppendString(protowire.AppendTag(b, fieldStatusMessage, protowire.BytesType), m)
	}
	return b
}
