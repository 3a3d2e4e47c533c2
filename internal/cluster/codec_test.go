package cluster

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// allowAnswerSeeds are encoded PeerAllowBatchResponses: what owners send,
// and the corners of the format that proto.Unmarshal has rules for.
func allowAnswerSeeds() [][]byte {
	dec := func(d *limiterv1.PeerDecision) *limiterv1.PeerAllowResult {
		return &limiterv1.PeerAllowResult{Result: &limiterv1.PeerAllowResult_Decision{Decision: d}}
	}
	st := func(code int32, msg string) *limiterv1.PeerAllowResult {
		return &limiterv1.PeerAllowResult{Result: &limiterv1.PeerAllowResult_Status{Status: &limiterv1.ItemStatus{Code: code, Message: msg}}}
	}
	full := &limiterv1.PeerDecision{Allowed: true, Code: -7, Policy: "default", Limit: 600, Remaining: 599, RetryAfterNs: -1,
		ResetAfterNs: 300e9, LeaseId: "lease-1", MaxConcurrent: 10, InFlight: 3, Degraded: true, ShadowCode: 122}
	typical, _ := proto.Marshal(&limiterv1.PeerAllowBatchResponse{Results: []*limiterv1.PeerAllowResult{
		dec(full), dec(&limiterv1.PeerDecision{Code: 122, Policy: "default", Limit: 600}), st(4, "deadline"), {},
		dec(&limiterv1.PeerDecision{Allowed: true, Policy: "other", Limit: 5, Remaining: 4}),
	}})
	one, _ := proto.Marshal(dec(full))
	status, _ := proto.Marshal(st(14, "owner leaving"))
	policy2 := protowire.AppendString(protowire.AppendTag(nil, fieldDecPolicy, protowire.BytesType), "second")
	decBytes, _ := proto.Marshal(full)
	stBytes, _ := proto.Marshal(&limiterv1.ItemStatus{Code: 5, Message: "x"})
	return [][]byte{
		typical,
		{},
		embedded(fieldResults, bytesField(fieldResultDecision, decBytes), bytesField(fieldResultDecision, policy2)),                                         // merged
		embedded(fieldResults, bytesField(fieldResultDecision, decBytes), bytesField(fieldResultStatus, stBytes), bytesField(fieldResultDecision, policy2)), // oneof switches
		embedded(fieldResults, bytesField(fieldResultStatus, stBytes), bytesField(fieldResultStatus, []byte{0x08, 0x09})),
		embedded(fieldResults, bytesField(fieldResultDecision, []byte{0x1a, 0x01, 0xff})),                                   // policy not UTF-8
		embedded(fieldResults, bytesField(fieldResultStatus, []byte{0x12, 0x02, 0xc3, 0x28})),                               // message not UTF-8
		embedded(fieldResults, bytesField(fieldResultDecision, []byte{0x08})),                                               // truncated varint
		embedded(fieldResults, bytesField(fieldResultDecision, []byte{0x1d, 1, 2, 3, 4}), []byte{0x18, 0x05}),               // wrong wire types
		append(embedded(fieldResults, bytesField(fieldResultDecision, decBytes)), 0x7a, 0x01, 0x00, 0x23, 0x24, 0x10, 0x01), // unknown fields, a group
		append(bytesField(fieldResults, one), 0x0a),                                                                         // truncated length
		append(status, 0xff), // a bad tag
		append([]byte{0x0b}, typical...),
	}
}

// FuzzDecodeAllowAnswers: decodeAllowAnswers agrees with proto.Unmarshal
// (unknown fields discarded) on every input: both fail, or both succeed
// with the same results.
func FuzzDecodeAllowAnswers(f *testing.F) {
	var policy atomic.Pointer[string]
	fuzzLikeUnmarshal(f, allowAnswerSeeds(), func() proto.Message { return &limiterv1.PeerAllowBatchResponse{} }, func(b []byte) (proto.Message, error) {
		answers, err := decodeAllowAnswers(b, &policy)
		got := &limiterv1.PeerAllowBatchResponse{}
		for _, a := range answers {
			r := &limiterv1.PeerAllowResult{}
			switch {
			case a.decision != nil:
				r.Result = &limiterv1.PeerAllowResult_Decision{Decision: a.decision}
			case a.status != nil:
				r.Result = &limiterv1.PeerAllowResult_Status{Status: a.status}
			}
			got.Results = append(got.Results, r)
		}
		return got, err
	})
}

// TestDecodeAllowAnswersAllocs: a batch of decisions costs two
// allocations whatever its size, the policy string none once seen.
func TestDecodeAllowAnswersAllocs(t *testing.T) {
	resp := &limiterv1.PeerAllowBatchResponse{}
	for range 8 {
		resp.Results = append(resp.Results, &limiterv1.PeerAllowResult{Result: &limiterv1.PeerAllowResult_Decision{
			Decision: &limiterv1.PeerDecision{Allowed: true, Policy: "default", Limit: 600, Remaining: 12, ResetAfterNs: 3e11}}})
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	var policy atomic.Pointer[string]
	if got, err := decodeAllowAnswers(b, &policy); err != nil || len(got) != 8 || got[7].decision.GetPolicy() != "default" {
		t.Fatalf("decodeAllowAnswers = %v, %v", got, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = decodeAllowAnswers(b, &policy) }); n > 2 {
		t.Errorf("decoding 8 decisions: %v allocations, want 2", n)
	}
}

// allowItemSeeds are encoded PeerAllowBatchRequests, as forwarding nodes
// send them and with the corners proto.Unmarshal has rules for.
// bytesField encodes msg as field num of the bytes wire type.
func bytesField(num protowire.Number, msg []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), msg)
}

// embedded encodes raw fields as one message in field num: an element of
// a repeated message field.
func embedded(num protowire.Number, fields ...[]byte) []byte {
	return bytesField(num, slices.Concat(fields...))
}

func allowItemSeeds() [][]byte {
	typical, _ := proto.Marshal(&limiterv1.PeerAllowBatchRequest{Items: []*limiterv1.PeerAllowItem{
		{Request: &limiterv1.AllowRequest{Key: "tenant:42:/invoices", Policy: "default", Hits: 3, DryRun: true, RequestId: "r-1", Path: "/v1/x"},
			Timeout: durationpb.New(1500 * time.Millisecond)},
		{Request: &limiterv1.AllowRequest{Key: "k"}, Timeout: durationpb.New(-time.Nanosecond)},
		{Request: &limiterv1.AllowRequest{}},
		{Timeout: &durationpb.Duration{}},
		{},
	}})
	req1, _ := proto.Marshal(&limiterv1.AllowRequest{Key: "a", Policy: "p", Hits: 1})
	req2, _ := proto.Marshal(&limiterv1.AllowRequest{Key: "\xff\xfe not UTF-8", Path: "/b"})
	dur, _ := proto.Marshal(durationpb.New(time.Second))
	return [][]byte{
		typical,
		{},
		embedded(fieldItems, bytesField(fieldItemRequest, req1), bytesField(fieldItemRequest, req2)), // merged, bytes not UTF-8
		embedded(fieldItems, bytesField(fieldItemTimeout, dur), bytesField(fieldItemTimeout, []byte{0x10, 0x05})),
		embedded(fieldItems, bytesField(fieldItemRequest, []byte{0x18})),                         // truncated varint
		embedded(fieldItems, bytesField(fieldItemRequest, []byte{0x0d, 1, 2, 3, 4, 0x20, 0x02})), // wrong wire type, a bool of 2
		append(embedded(fieldItems, bytesField(fieldItemRequest, req1)), 0x7a, 0x01, 0x00, 0x23, 0x24, 0x10, 0x01),
		append(bytesField(fieldItems, req1), 0x0a), // truncated length
		[]byte("\xd2\xd2\xd2\xd20\n0000000000"),
	}
}

// FuzzDecodeAllowItems: decodeAllowItems agrees with proto.Unmarshal
// (unknown fields discarded) on every input.
func FuzzDecodeAllowItems(f *testing.F) {
	var policy atomic.Pointer[string]
	fuzzLikeUnmarshal(f, allowItemSeeds(), func() proto.Message { return &limiterv1.PeerAllowBatchRequest{} }, func(b []byte) (proto.Message, error) {
		items, err := decodeAllowItems(b, &policy)
		return &limiterv1.PeerAllowBatchRequest{Items: items}, err
	})
}

// TestDecodeAllowItemsAllocs: a batch costs three allocations for its
// items and one per key, the policy string none once seen.
func TestDecodeAllowItemsAllocs(t *testing.T) {
	req := &limiterv1.PeerAllowBatchRequest{}
	for i := range 8 {
		req.Items = append(req.Items, &limiterv1.PeerAllowItem{Request: &limiterv1.AllowRequest{Key: fmt.Sprint("key-", i), Policy: "default"},
			Timeout: durationpb.New(time.Second)})
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var policy atomic.Pointer[string]
	if got, err := decodeAllowItems(b, &policy); err != nil || len(got) != 8 || got[7].GetRequest().GetKey() != "key-7" {
		t.Fatalf("decodeAllowItems = %v, %v", got, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = decodeAllowItems(b, &policy) }); n > 4+8 {
		t.Errorf("decoding 8 items: %v allocations, want 4 and one per key", n)
	}
}

// TestAppendAllowAnswers: appendAllowAnswers writes the bytes of
// deterministic proto.Marshal, for random batches of decisions, statuses
// and empty results, every field zero or not, negative numbers included.
func TestAppendAllowAnswers(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	num := func() int64 {
		switch r.IntN(4) {
		case 0:
			return 0
		case 1:
			return -r.Int64N(1 << 40)
		default:
			return r.Int64N(1 << uint(r.IntN(63)))
		}
	}
	str := func() string { return []string{"", "default", "tenant-é", "lease-01J"}[r.IntN(4)] }
	for i := range 2000 {
		resp := &limiterv1.PeerAllowBatchResponse{}
		for range r.IntN(6) {
			switch r.IntN(3) {
			case 0:
				resp.Results = append(resp.Results, &limiterv1.PeerAllowResult{Result: &limiterv1.PeerAllowResult_Decision{Decision: &limiterv1.PeerDecision{
					Allowed: r.IntN(2) == 0, Code: int32(num()), Policy: str(), Limit: num(), Remaining: num(), RetryAfterNs: num(),
					ResetAfterNs: num(), LeaseId: str(), MaxConcurrent: num(), InFlight: num(), Degraded: r.IntN(2) == 0, ShadowCode: int32(num()),
				}}})
			case 1:
				resp.Results = append(resp.Results, &limiterv1.PeerAllowResult{Result: &limiterv1.PeerAllowResult_Status{Status: &limiterv1.ItemStatus{
					Code: int32(num()), Message: str()}}})
			default:
				resp.Results = append(resp.Results, &limiterv1.PeerAllowResult{})
			}
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendAllowAnswers(nil, resp.GetResults()); !bytes.Equal(got, want) {
			t.Fatalf("case %d: appendAllowAnswers(%v) = %x, proto.Marshal %x", i, resp, got, want)
		}
	}
}

func keyStateSeeds() [][]byte {
	typical, _ := proto.Marshal(&limiterv1.ReplicateRequest{States: []*limiterv1.KeyState{
		{Policy: "default", Key: "tenant:42:/invoices", State: []byte{2, 1, 2, 3}, Version: 7},
		{Policy: "default", Key: "k", State: []byte{}},
		{Key: "no policy"},
		{},
	}})
	return [][]byte{
		typical,
		{},
		embedded(fieldReplStates, bytesField(fieldStateKey, []byte("a")), bytesField(fieldStateKey, []byte("bb")), bytesField(fieldStateState, []byte{1}), bytesField(fieldStateState, []byte{2, 3})), // last wins
		embedded(fieldReplStates, bytesField(fieldStateKey, []byte("\xff not UTF-8"))),
		embedded(fieldReplStates, bytesField(fieldStatePolicy, []byte("\xc3"))),
		embedded(fieldReplStates, []byte{0x20, 0x80}),                               // truncated version
		embedded(fieldReplStates, []byte{0x1d, 1, 2, 3, 4, 0x08, 0x01, 0x20, 0x05}), // wrong wire types
		append(embedded(fieldReplStates, bytesField(fieldStateKey, []byte("k"))), 0x7a, 0x01, 0x00, 0x23, 0x24, 0x10, 0x01),
		append(bytesField(fieldReplStates, []byte("x")), 0x0a), // truncated length
		append(embedded(fieldReplStates, bytesField(fieldStateKey, []byte("k1"))), embedded(fieldReplStates, bytesField(fieldStateState, []byte{9}), bytesField(fieldStatePolicy, []byte("p")))...),
	}
}

// FuzzDecodeKeyStates: decodeKeyStates agrees with proto.Unmarshal
// (unknown fields discarded) on every input.
func FuzzDecodeKeyStates(f *testing.F) {
	var policy atomic.Pointer[string]
	fuzzLikeUnmarshal(f, keyStateSeeds(), func() proto.Message { return &limiterv1.ReplicateRequest{} }, func(b []byte) (proto.Message, error) {
		states, err := decodeKeyStates(b, &policy)
		return &limiterv1.ReplicateRequest{States: states}, err
	})
}

// fuzzLikeUnmarshal seeds f and checks a hand-written decoder against
// proto.Unmarshal with unknown fields discarded, on every input: both
// fail, or both succeed with equal messages. What decode returned must not
// change when its input does afterwards: a connection's reader reuses its
// buffer for the next frame.
func fuzzLikeUnmarshal(f *testing.F, seeds [][]byte, newMsg func() proto.Message, decode func([]byte) (proto.Message, error)) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := newMsg()
		werr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, want)
		in := slices.Clone(b)
		got, err := decode(b)
		if (err != nil) != (werr != nil) {
			t.Fatalf("decoding %x: error %v; proto.Unmarshal error %v", in, err, werr)
		}
		if err != nil {
			return
		}
		if !proto.Equal(got, want) {
			t.Fatalf("decoding %x = %v; proto.Unmarshal %v", in, got, want)
		}
		clear(b)
		if !proto.Equal(got, want) {
			t.Fatalf("decoding %x: the result changed with its input", in)
		}
	})
}

// TestDecodeKeyStatesAllocs: a frame of states costs six allocations
// whatever its size, the policy string none once seen.
func TestDecodeKeyStatesAllocs(t *testing.T) {
	req := &limiterv1.ReplicateRequest{}
	for i := range 32 {
		req.States = append(req.States, &limiterv1.KeyState{Policy: "default", Key: fmt.Sprint("key-", i), State: []byte{2, byte(i), 3}})
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var policy atomic.Pointer[string]
	if got, err := decodeKeyStates(b, &policy); err != nil || len(got) != 32 || got[31].GetKey() != "key-31" || got[31].GetState()[1] != 31 {
		t.Fatalf("decodeKeyStates = %v, %v", got, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = decodeKeyStates(b, &policy) }); n > 6 {
		t.Errorf("decoding 32 states: %v allocations, want 6", n)
	}
}
