package server

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/limiterd/limiterd/internal/limiter"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// codec is gRPC's proto codec with two fast paths for Allow's answers. It
// encodes an AllowResponse itself: the response carries its HTTP headers
// as a map<string, string>, and protobuf-go's generic map encoding (sizing
// and appending each entry through reflection) was 12% of a node's CPU
// under closed-loop load. And it encodes an allowed call's answer straight
// from the decision (allowReply), never building the response. The bytes
// are those proto.MarshalOptions{Deterministic: true} writes (fields in
// number order, map entries sorted by key), which TestCodecMatchesProto
// and TestAllowReplyMatchesResponse check on random answers. Everything
// else, and every Unmarshal, goes to the registered proto codec.
type codec struct{ base encoding.CodecV2 }

func newCodec() codec { return codec{base: encoding.GetCodecV2("proto")} }

// Name is the proto codec's, so that clients need nothing special.
func (codec) Name() string { return "proto" }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	var stack [128]byte
	var hv headerText
	var head limiterv1.AllowResponse // a reply's fields but its headers
	var size int
	r, _ := v.(*allowReply)
	m, _ := v.(*limiterv1.AllowResponse)
	switch {
	case r != nil:
		// Allowed: the decision's AllowResponse, never built as such.
		fillResponse(&head, &r.retry, &r.reset, &r.res)
		hv = appendHeaderText(stack[:0], &r.res)
		size = allowFieldsSize(&head) + headerTextSize(&hv) + boolSize(fDegraded, head.Degraded)
	case m != nil && len(m.ProtoReflect().GetUnknown()) == 0:
		size = allowResponseSize(m)
	default:
		return c.base.Marshal(v)
	}
	if mem.IsBelowBufferPoolingThreshold(size) {
		return mem.BufferSlice{mem.SliceBuffer(appendAnswer(make([]byte, 0, size), r, &head, &hv, m))}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	*buf = appendAnswer((*buf)[:0], r, &head, &hv, m)
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.base.Unmarshal(data, v) }

// Field numbers of AllowResponse (limiter.proto).
const (
	fAllowed       = 1
	fCode          = 2
	fPolicy        = 3
	fLimit         = 4
	fRemaining     = 5
	fRetryAfter    = 6
	fResetAfter    = 7
	fLeaseID       = 8
	fMaxConcurrent = 9
	fInFlight      = 10
	fError         = 11
	fHeaders       = 12
	fDegraded      = 13
)

// appendAnswer appends the encoding of r (whose other fields head holds,
// and its header values hv) or, when r is nil, of m.
func appendAnswer(b []byte, r *allowReply, head *limiterv1.AllowResponse, hv *headerText, m *limiterv1.AllowResponse) []byte {
	if r != nil {
		b = appendAllowFields(b, head)
		for i, k := range headerNames {
			if sp := hv.span[i]; sp[1] > 0 {
				b = appendMapEntry(b, k, hv.text[sp[0]:sp[1]])
			}
		}
		return appendBool(b, fDegraded, head.Degraded)
	}
	return appendAllowResponse(b, m)
}

// appendAllowResponse appends m's encoding: implicit presence, so zero
// scalars and empty strings are left out and set messages are written even
// when empty.
func appendAllowResponse(b []byte, m *limiterv1.AllowResponse) []byte {
	b = appendAllowFields(b, m)
	if m.Error != nil {
		b = protowire.AppendTag(b, fError, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(proto.Size(m.Error)))
		b, _ = proto.MarshalOptions{UseCachedSize: true, Deterministic: true}.MarshalAppend(b, m.Error)
	}
	if len(m.Headers) > 0 {
		var arr [8]string
		for _, k := range sortedKeys(m.Headers, &arr) {
			b = appendMapEntry(b, k, m.Headers[k])
		}
	}
	return appendBool(b, fDegraded, m.Degraded)
}

// appendAllowFields appends m's fields 1 to 10, those before its error.
func appendAllowFields(b []byte, m *limiterv1.AllowResponse) []byte {
	b = appendBool(b, fAllowed, m.Allowed)
	b = appendInt(b, fCode, int64(m.Code))
	b = appendString(b, fPolicy, m.Policy)
	b = appendInt(b, fLimit, m.Limit)
	b = appendInt(b, fRemaining, m.Remaining)
	b = appendDuration(b, fRetryAfter, m.RetryAfter)
	b = appendDuration(b, fResetAfter, m.ResetAfter)
	b = appendString(b, fLeaseID, m.LeaseId)
	b = appendInt(b, fMaxConcurrent, m.MaxConcurrent)
	return appendInt(b, fInFlight, m.InFlight)
}

// appendMapEntry appends one entry of the headers map.
func appendMapEntry[V string | []byte](b []byte, k string, v V) []byte {
	b = protowire.AppendTag(b, fHeaders, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(mapEntrySize(k, len(v))))
	b = appendMapField(b, 1, k)
	return appendMapField(b, 2, v)
}

// allowReply is what the Allow handler answers for an allowed call (see
// allowHandler): the decision itself, which the codec encodes as the
// AllowResponse Service.Response would build for it, byte for byte
// (TestAllowReplyMatchesResponse), without building that response, its
// headers map and its strings first. A denied call's response carries an
// error with its own clock reading and JSON body, and is built as usual.
type allowReply struct {
	res          limiter.Result
	retry, reset durationpb.Duration // its durations while encoded, allocated with it
}

// headerTextSize is the length of the headers hv holds, encoded.
func headerTextSize(hv *headerText) int {
	n := 0
	for i, k := range headerNames {
		if sp := hv.span[i]; sp[1] > 0 {
			n += messageSize(fHeaders, mapEntrySize(k, sp[1]-sp[0]))
		}
	}
	return n
}

// allowResponseSize is the length appendAllowResponse appends.
func allowResponseSize(m *limiterv1.AllowResponse) int {
	n := allowFieldsSize(m) + boolSize(fDegraded, m.Degraded)
	if m.Error != nil {
		n += messageSize(fError, proto.Size(m.Error))
	}
	for k, v := range m.Headers {
		n += messageSize(fHeaders, mapEntrySize(k, len(v)))
	}
	return n
}

// allowFieldsSize is the length appendAllowFields appends.
func allowFieldsSize(m *limiterv1.AllowResponse) int {
	return boolSize(fAllowed, m.Allowed) + intSize(fCode, int64(m.Code)) + stringSize(fPolicy, m.Policy) +
		intSize(fLimit, m.Limit) + intSize(fRemaining, m.Remaining) +
		durationSize(fRetryAfter, m.RetryAfter) + durationSize(fResetAfter, m.ResetAfter) +
		stringSize(fLeaseID, m.LeaseId) + intSize(fMaxConcurrent, m.MaxConcurrent) + intSize(fInFlight, m.InFlight)
}

// sortedKeys returns h's keys in order, by insertion sort: the usual five
// or six headers need no allocation and no generic sort.
func sortedKeys(h map[string]string, arr *[8]string) []string {
	keys := arr[:0]
	for k := range h {
		keys = append(keys, k)
		for i := len(keys) - 1; i > 0 && keys[i] < keys[i-1]; i-- {
			keys[i], keys[i-1] = keys[i-1], keys[i]
		}
	}
	return keys
}

// A map entry writes its key and value even when empty, as protobuf-go does;
// v is the value's length.
func mapEntrySize(k string, v int) int {
	return protowire.SizeTag(1) + protowire.SizeBytes(len(k)) + protowire.SizeTag(2) + protowire.SizeBytes(v)
}

func appendMapField[V string | []byte](b []byte, num protowire.Number, v V) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return append(b, 1)
}

func boolSize(num protowire.Number, v bool) int {
	if !v {
		return 0
	}
	return protowire.SizeTag(num) + 1
}

// appendInt writes an int32 or int64 field: negative values take ten
// bytes, as the wire format sign-extends them.
func appendInt(b []byte, num protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

func intSize(num protowire.Number, v int64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(uint64(v))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func stringSize(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func messageSize(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

// Duration's fields: seconds (int64) and nanos (int32).
func durationBodySize(d *durationpb.Duration) int {
	return intSize(1, d.Seconds) + intSize(2, int64(d.Nanos))
}

func appendDuration(b []byte, num protowire.Number, d *durationpb.Duration) []byte {
	if d == nil {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(durationBodySize(d)))
	b = appendInt(b, 1, d.Seconds)
	return appendInt(b, 2, int64(d.Nanos))
}

func durationSize(num protowire.Number, d *durationpb.Duration) int {
	if d == nil {
		return 0
	}
	return messageSize(num, durationBodySize(d))
}
