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
	result := func(fields ...[]byte) []byte { // a PeerAllowResult of raw fields, as field 1 of a response
		var r []byte
		for _, f := range fields {
			r = append(r, f...)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, fieldResults, protowire.BytesType), r)
	}
	field := func(num protowire.Number, msg []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), msg)
	}
	decBytes, _ := proto.Marshal(full)
	stBytes, _ := proto.Marshal(&limiterv1.ItemStatus{Code: 5, Message: "x"})
	return [][]byte{
		typical,
		{},
		result(field(fieldResultDecision, decBytes), field(fieldResultDecision, policy2)),                                    // merged
		result(field(fieldResultDecision, decBytes), field(fieldResultStatus, stBytes), field(fieldResultDecision, policy2)), // oneof switches
		result(field(fieldResultStatus, stBytes), field(fieldResultStatus, []byte{0x08, 0x09})),
		result(field(fieldResultDecision, []byte{0x1a, 0x01, 0xff})),                                   // policy not UTF-8
		result(field(fieldResultStatus, []byte{0x12, 0x02, 0xc3, 0x28})),                               // message not UTF-8
		result(field(fieldResultDecision, []byte{0x08})),                                               // truncated varint
		result(field(fieldResultDecision, []byte{0x1d, 1, 2, 3, 4}), []byte{0x18, 0x05}),               // wrong wire types
		append(result(field(fieldResultDecision, decBytes)), 0x7a, 0x01, 0x00, 0x23, 0x24, 0x10, 0x01), // unknown fields, a group
		append(field(fieldResults, one), 0x0a),                                                         // truncated length
		append(status, 0xff),                                                                           // a bad tag
		append([]byte{0x0b}, typical...),
	}
}

// FuzzDecodeAllowAnswers: decodeAllowAnswers agrees with proto.Unmarshal
// (unknown fields discarded) on every input: both fail, or both succeed
// with the same results.
func FuzzDecodeAllowAnswers(f *testing.F) {
	for _, s := range allowAnswerSeeds() {
		f.Add(s)
	}
	var policy atomic.Pointer[string]
	f.Fuzz(func(t *testing.T, b []byte) {
		var want limiterv1.PeerAllowBatchResponse
		werr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, &want)
		got, err := decodeAllowAnswers(b, &policy)
		if (err != nil) != (werr != nil) {
			t.Fatalf("decodeAllowAnswers(%x) error %v; proto.Unmarshal error %v", b, err, werr)
		}
		if err != nil {
			return
		}
		if len(got) != len(want.GetResults()) {
			t.Fatalf("decodeAllowAnswers(%x): %d results, proto.Unmarshal %d", b, len(got), len(want.GetResults()))
		}
		for i, r := range want.GetResults() {
			g := got[i]
			if (g.decision == nil) != (r.GetDecision() == nil) || g.decision != nil && !proto.Equal(g.decision, r.GetDecision()) {
				t.Fatalf("result %d of %x: decision %v, proto.Unmarshal %v", i, b, g.decision, r.GetDecision())
			}
			if (g.status == nil) != (r.GetStatus() == nil) || g.status != nil && !proto.Equal(g.status, r.GetStatus()) {
				t.Fatalf("result %d of %x: status %v, proto.Unmarshal %v", i, b, g.status, r.GetStatus())
			}
		}
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
func allowItemSeeds() [][]byte {
	typical, _ := proto.Marshal(&limiterv1.PeerAllowBatchRequest{Items: []*limiterv1.PeerAllowItem{
		{Request: &limiterv1.AllowRequest{Key: "tenant:42:/invoices", Policy: "default", Hits: 3, DryRun: true, RequestId: "r-1", Path: "/v1/x"},
			Timeout: durationpb.New(1500 * time.Millisecond)},
		{Request: &limiterv1.AllowRequest{Key: "k"}, Timeout: durationpb.New(-time.Nanosecond)},
		{Request: &limiterv1.AllowRequest{}},
		{Timeout: &durationpb.Duration{}},
		{},
	}})
	field := func(num protowire.Number, msg []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), msg)
	}
	item := func(fields ...[]byte) []byte {
		var r []byte
		for _, f := range fields {
			r = append(r, f...)
		}
		return field(fieldItems, r)
	}
	req1, _ := proto.Marshal(&limiterv1.AllowRequest{Key: "a", Policy: "p", Hits: 1})
	req2, _ := proto.Marshal(&limiterv1.AllowRequest{Key: "\xff\xfe not UTF-8", Path: "/b"})
	dur, _ := proto.Marshal(durationpb.New(time.Second))
	return [][]byte{
		typical,
		{},
		item(field(fieldItemRequest, req1), field(fieldItemRequest, req2)), // merged, bytes not UTF-8
		item(field(fieldItemTimeout, dur), field(fieldItemTimeout, []byte{0x10, 0x05})),
		item(field(fieldItemRequest, []byte{0x18})),                         // truncated varint
		item(field(fieldItemRequest, []byte{0x0d, 1, 2, 3, 4, 0x20, 0x02})), // wrong wire type, a bool of 2
		append(item(field(fieldItemRequest, req1)), 0x7a, 0x01, 0x00, 0x23, 0x24, 0x10, 0x01),
		append(field(fieldItems, req1), 0x0a), // truncated length
		[]byte("\xd2\xd2\xd2\xd20\n0000000000"),
	}
}

// FuzzDecodeAllowItems: decodeAllowItems agrees with proto.Unmarshal
// (unknown fields discarded) on every input.
func FuzzDecodeAllowItems(f *testing.F) {
	for _, s := range allowItemSeeds() {
		f.Add(s)
	}
	var policy atomic.Pointer[string]
	f.Fuzz(func(t *testing.T, b []byte) {
		var want limiterv1.PeerAllowBatchRequest
		werr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, &want)
		items, err := decodeAllowItems(b, &policy)
		if (err != nil) != (werr != nil) {
			t.Fatalf("decodeAllowItems(%x) error %v; proto.Unmarshal error %v", b, err, werr)
		}
		if err != nil {
			return
		}
		if got := (&limiterv1.PeerAllowBatchRequest{Items: items}); !proto.Equal(got, &want) {
			t.Fatalf("decodeAllowItems(%x) = %v; proto.Unmarshal %v", b, got, &want)
		}
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
	field := func(num protowire.Number, msg []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), msg)
	}
	state := func(fields ...[]byte) []byte {
		var r []byte
		for _, f := range fields {
			r = append(r, f...)
		}
		return field(fieldReplStates, r)
	}
	return [][]byte{
		typical,
		{},
		state(field(fieldStateKey, []byte("a")), field(fieldStateKey, []byte("bb")), field(fieldStateState, []byte{1}), field(fieldStateState, []byte{2, 3})), // last wins
		state(field(fieldStateKey, []byte("\xff not UTF-8"))),
		state(field(fieldStatePolicy, []byte("\xc3"))),
		state([]byte{0x20, 0x80}),                               // truncated version
		state([]byte{0x1d, 1, 2, 3, 4, 0x08, 0x01, 0x20, 0x05}), // wrong wire types
		append(state(field(fieldStateKey, []byte("k"))), 0x7a, 0x01, 0x00, 0x23, 0x24, 0x10, 0x01),
		append(field(fieldReplStates, []byte("x")), 0x0a), // truncated length
		append(state(field(fieldStateKey, []byte("k1"))), state(field(fieldStateState, []byte{9}), field(fieldStatePolicy, []byte("p")))...),
	}
}

// FuzzDecodeKeyStates: decodeKeyStates agrees with proto.Unmarshal
// (unknown fields discarded) on every input.
func FuzzDecodeKeyStates(f *testing.F) {
	for _, s := range keyStateSeeds() {
		f.Add(s)
	}
	var policy atomic.Pointer[string]
	f.Fuzz(func(t *testing.T, b []byte) {
		var want limiterv1.ReplicateRequest
		werr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, &want)
		in := slices.Clone(b)
		states, err := decodeKeyStates(b, &policy)
		if (err != nil) != (werr != nil) {
			t.Fatalf("decodeKeyStates(%x) error %v; proto.Unmarshal error %v", b, err, werr)
		}
		if err != nil {
			return
		}
		if got := (&limiterv1.ReplicateRequest{States: states}); !proto.Equal(got, &want) {
			t.Fatalf("decodeKeyStates(%x) = %v; proto.Unmarshal %v", b, got, &want)
		}
		clear(b) // the result must not alias its input (a reused read buffer)
		if got := (&limiterv1.ReplicateRequest{States: states}); !proto.Equal(got, &want) {
			t.Fatalf("decodeKeyStates(%x) changed with its input", in)
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
