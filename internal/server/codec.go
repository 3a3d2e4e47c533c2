package server

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// codec is gRPC's proto codec with one fast path: it encodes an
// AllowResponse itself. The response carries its HTTP headers as a
// map<string, string>, and protobuf-go's generic map encoding (sizing and
// appending each entry through reflection) was 12% of a node's CPU under
// closed-loop load. The bytes are those proto.MarshalOptions{Deterministic:
// true} writes (fields in number order, map entries sorted by key), which
// TestCodecMatchesProto checks on random responses. Everything else,
// and every Unmarshal, goes to the registered proto codec.
type codec struct{ base encoding.CodecV2 }

func newCodec() codec { return codec{base: encoding.GetCodecV2("proto")} }

// Name is the proto codec's, so that clients need nothing special.
func (codec) Name() string { return "proto" }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*limiterv1.AllowResponse)
	if !ok || m == nil || len(m.ProtoReflect().GetUnknown()) > 0 {
		return c.base.Marshal(v)
	}
	size := allowResponseSize(m)
	if mem.IsBelowBufferPoolingThreshold(size) {
		return mem.BufferSlice{mem.SliceBuffer(appendAllowResponse(make([]byte, 0, size), m))}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	*buf = appendAllowResponse((*buf)[:0], m)
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

// appendAllowResponse appends m's encoding: implicit presence, so zero
// scalars and empty strings are left out and set messages are written even
// when empty.
func appendAllowResponse(b []byte, m *limiterv1.AllowResponse) []byte {
	b = appendBool(b, fAllowed, m.Allowed)
	b = appendInt(b, fCode, int64(m.Code))
	b = appendString(b, fPolicy, m.Policy)
	b = appendInt(b, fLimit, m.Limit)
	b = appendInt(b, fRemaining, m.Remaining)
	b = appendDuration(b, fRetryAfter, m.RetryAfter)
	b = appendDuration(b, fResetAfter, m.ResetAfter)
	b = appendString(b, fLeaseID, m.LeaseId)
	b = appendInt(b, fMaxConcurrent, m.MaxConcurrent)
	b = appendInt(b, fInFlight, m.InFlight)
	if m.Error != nil {
		b = protowire.AppendTag(b, fError, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(proto.Size(m.Error)))
		b, _ = proto.MarshalOptions{UseCachedSize: true, Deterministic: true}.MarshalAppend(b, m.Error)
	}
	if len(m.Headers) > 0 {
		var arr [8]string
		for _, k := range sortedKeys(m.Headers, &arr) {
			v := m.Headers[k]
			b = protowire.AppendTag(b, fHeaders, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(mapEntrySize(k, v)))
			b = appendMapField(b, 1, k)
			b = appendMapField(b, 2, v)
		}
	}
	return appendBool(b, fDegraded, m.Degraded)
}

// allowResponseSize is the length appendAllowResponse appends.
func allowResponseSize(m *limiterv1.AllowResponse) int {
	n := boolSize(fAllowed, m.Allowed) + intSize(fCode, int64(m.Code)) + stringSize(fPolicy, m.Policy) +
		intSize(fLimit, m.Limit) + intSize(fRemaining, m.Remaining) +
		durationSize(fRetryAfter, m.RetryAfter) + durationSize(fResetAfter, m.ResetAfter) +
		stringSize(fLeaseID, m.LeaseId) + intSize(fMaxConcurrent, m.MaxConcurrent) + intSize(fInFlight, m.InFlight) +
		boolSize(fDegraded, m.Degraded)
	if m.Error != nil {
		n += messageSize(fError, proto.Size(m.Error))
	}
	for k, v := range m.Headers {
		n += messageSize(fHeaders, mapEntrySize(k, v))
	}
	return n
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

// A map entry writes its key and value even when empty, as protobuf-go does.
func mapEntrySize(k, v string) int {
	return protowire.SizeTag(1) + protowire.SizeBytes(len(k)) + protowire.SizeTag(2) + protowire.SizeBytes(len(v))
}

func appendMapField(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
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
