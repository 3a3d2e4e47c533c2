package server

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// fixedClock is a Service with only its clock set, for Response.
func fixedClock() *Service {
	return &Service{cfg: Config{Now: func() time.Time { return time.Date(2026, 12, 2, 3, 4, 5, 0, time.UTC) }}}
}

// randomInt64 is zero, negative, small or any, at random.
func randomInt64(r *rand.Rand) int64 {
	switch r.IntN(4) {
	case 0:
		return 0
	case 1:
		return -r.Int64N(1 << 40)
	case 2:
		return r.Int64N(200)
	}
	return r.Int64()
}

// randomResponse fills each field of an AllowResponse, or leaves it zero,
// at random, with negative numbers and empty strings among the values.
func randomResponse(r *rand.Rand) *limiterv1.AllowResponse {
	i64 := func() int64 { return randomInt64(r) }
	str := func() string {
		if r.IntN(3) == 0 {
			return ""
		}
		return fmt.Sprintf("s%d\x00é%d", r.IntN(1000), r.Int64())
	}
	dur := func() *durationpb.Duration {
		switch r.IntN(3) {
		case 0:
			return nil
		case 1:
			return &durationpb.Duration{}
		}
		return &durationpb.Duration{Seconds: i64(), Nanos: int32(i64() % 1e9)}
	}
	m := &limiterv1.AllowResponse{
		Allowed: r.IntN(2) == 0, Code: int32(i64()), Policy: str(), Limit: i64(), Remaining: i64(),
		RetryAfter: dur(), ResetAfter: dur(), LeaseId: str(), MaxConcurrent: i64(), InFlight: i64(),
		Degraded: r.IntN(2) == 0,
	}
	if r.IntN(2) == 0 {
		m.Error = &limiterv1.Error{Code: int32(i64()), Error: str(), Message: str(), HttpStatus: 429, Path: str(), Body: str()}
	}
	if n := r.IntN(12); n > 0 { // past sortedKeys' array of 8 too
		m.Headers = map[string]string{}
		for range n {
			m.Headers[str()] = str()
		}
	}
	return m
}

// TestCodecMatchesProto checks that the AllowResponse fast path writes the
// bytes protobuf-go's deterministic marshaling writes, and that they decode
// to the same message.
func TestCodecMatchesProto(t *testing.T) {
	c := newCodec()
	r := rand.New(rand.NewPCG(3, 4))
	msgs := []*limiterv1.AllowResponse{{}}
	// What Response builds for an allowed and a denied call.
	p := policy.Policy{Name: "uploads", Limit: 600, Window: 5 * time.Minute, MaxConcurrent: 2, LeaseTTL: time.Minute}
	for _, allowed := range []bool{true, false} {
		res := limiter.Result{Allowed: allowed, Policy: p, Limit: 600, Remaining: 17, ResetAfter: 90 * time.Second, RetryAfter: 2 * time.Second}
		if !allowed {
			res.Code = 122
		}
		msgs = append(msgs, fixedClock().Response(&res, "/v1/x", "req-1"))
	}
	for range 2000 {
		msgs = append(msgs, randomResponse(r))
	}
	for i, m := range msgs {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		data, err := c.Marshal(m)
		if err != nil {
			t.Fatalf("message %d: Marshal() = %v", i, err)
		}
		got := data.Materialize()
		if !bytes.Equal(got, want) {
			t.Fatalf("message %d (%v):\n got %x\nwant %x", i, m, got, want)
		}
		if n := allowResponseSize(m); n != len(want) {
			t.Fatalf("message %d: allowResponseSize() = %d, want %d", i, n, len(want))
		}
		var back limiterv1.AllowResponse
		if err := proto.Unmarshal(got, &back); err != nil || !proto.Equal(&back, m) {
			t.Fatalf("message %d: decodes to %v (%v), want %v", i, &back, err, m)
		}
	}
}

// TestAllowReplyMatchesResponse checks that an allowed decision the codec
// encodes itself (allowReply, what the gRPC Allow handler answers) is the
// AllowResponse Service.Response builds for it, as protobuf-go's
// deterministic marshaling writes it: for random results with odd policy
// names, negative and huge numbers, leases, shadow codes and degraded
// decisions.
func TestAllowReplyMatchesResponse(t *testing.T) {
	c := newCodec()
	r := rand.New(rand.NewPCG(5, 6))
	// Policy names are valid UTF-8 (policy.Validate); protobuf-go refuses
	// to encode a string field that is not.
	names := []string{"default", "", `q"uote`, "ünï\u2028code", strings.Repeat("long-", 40)}
	i64 := func() int64 { return randomInt64(r) }
	durs := []time.Duration{0, -time.Second, -1, time.Nanosecond, 999 * time.Millisecond, time.Second, 5 * time.Minute, 1<<63 - 1, -1 << 63}
	for i := range 3000 {
		res := limiter.Result{
			Allowed:       true,
			Code:          int32(r.IntN(2)) * 122,
			ShadowCode:    int32(r.IntN(2)) * 123,
			Policy:        policy.Policy{Name: names[r.IntN(len(names))], Limit: i64(), Window: durs[r.IntN(len(durs))]},
			Limit:         i64(),
			Remaining:     i64(),
			RetryAfter:    durs[r.IntN(len(durs))],
			ResetAfter:    durs[r.IntN(len(durs))],
			MaxConcurrent: i64(),
			InFlight:      i64(),
			Degraded:      r.IntN(2) == 0,
		}
		if r.IntN(2) == 0 {
			res.LeaseID = fmt.Sprintf("lease-%d", r.Int64())
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(fixedClock().Response(&res, "/p", "rid"))
		if err != nil {
			t.Fatal(err)
		}
		data, err := c.Marshal(&allowReply{res: res})
		if err != nil {
			t.Fatalf("result %d: Marshal() = %v", i, err)
		}
		if got := data.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("result %d (%+v):\n got %x\nwant %x", i, res, got, want)
		}
	}
}

// TestCodecDelegates checks that other messages, and an AllowResponse with
// unknown fields, go through the proto codec.
func TestCodecDelegates(t *testing.T) {
	c := newCodec()
	for _, m := range []proto.Message{
		&limiterv1.ReleaseResponse{InFlight: 3},
		&limiterv1.AllowRequest{Key: "k", Hits: 2},
	} {
		data, err := c.Marshal(m)
		want, _ := proto.Marshal(m)
		if err != nil || !bytes.Equal(data.Materialize(), want) {
			t.Errorf("Marshal(%T) = %x, %v; want %x", m, data.Materialize(), err, want)
		}
	}
	m := &limiterv1.AllowResponse{Allowed: true}
	m.ProtoReflect().SetUnknown([]byte{0xf8, 0x07, 0x01}) // field 127, varint 1
	data, err := c.Marshal(m)
	want, _ := proto.Marshal(m)
	if err != nil || !bytes.Equal(data.Materialize(), want) {
		t.Errorf("Marshal(with unknown fields) = %x, %v; want %x", data.Materialize(), err, want)
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Error("Marshal(string) = nil error")
	}
	var back limiterv1.AllowRequest
	in, _ := c.Marshal(&limiterv1.AllowRequest{Key: "x"})
	if err := c.Unmarshal(in, &back); err != nil || back.Key != "x" {
		t.Errorf("Unmarshal() = %v, %v", &back, err)
	}
}

// BenchmarkMarshalAllowResponse compares the fast path with gRPC's proto
// codec on the response of an allowed call (five headers).
func BenchmarkMarshalAllowResponse(b *testing.B) {
	p := policy.Policy{Name: "default", Limit: 600, Window: 5 * time.Minute}
	res := limiter.Result{Allowed: true, Policy: p, Limit: 600, Remaining: 599, ResetAfter: 300 * time.Second}
	m := fixedClock().Response(&res, "", "")
	for _, bc := range []struct {
		name string
		c    encoding.CodecV2
	}{{"proto", encoding.GetCodecV2("proto")}, {"fast", newCodec()}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := bc.c.Marshal(m)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}

// BenchmarkAllowAnswer compares what the gRPC server encodes per allowed
// call: the AllowResponse Service.Response builds, or the decision itself
// (allowReply).
func BenchmarkAllowAnswer(b *testing.B) {
	p := policy.Policy{Name: "default", Limit: 600, Window: 5 * time.Minute}
	res := limiter.Result{Allowed: true, Policy: p, Limit: 600, Remaining: 599, ResetAfter: 300 * time.Second}
	s, c := fixedClock(), newCodec()
	for _, bc := range []struct {
		name   string
		answer func() any
	}{
		{"response", func() any { return s.Response(&res, "", "") }},
		{"reply", func() any { return &allowReply{res: res} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := c.Marshal(bc.answer())
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}

// headersRef is Headers as first written, one string at a time: the
// reference for TestHeadersMatchReference.
func headersRef(res *limiter.Result) map[string]string {
	name := strconv.Quote(res.Policy.Name)
	limit := strconv.FormatInt(res.Limit, 10)
	remaining := strconv.FormatInt(res.Remaining, 10)
	reset := strconv.FormatInt(ceilSeconds(res.ResetAfter), 10)
	t := reset
	h := make(map[string]string, 6)
	if !res.Allowed {
		retry := strconv.FormatInt(ceilSeconds(res.RetryAfter), 10)
		h["Retry-After"] = retry
		t = retry
	}
	h["RateLimit-Policy"] = name + ";q=" + limit + ";w=" + strconv.FormatInt(ceilSeconds(res.Policy.Window), 10)
	h["RateLimit"] = name + ";r=" + remaining + ";t=" + t
	h["X-RateLimit-Limit"] = limit
	h["X-RateLimit-Remaining"] = remaining
	h["X-RateLimit-Reset"] = reset
	return h
}

// TestHeadersMatchReference: Headers, which builds every value in one
// buffer, gives what building them one by one gives, for allowed and
// denied results, odd policy names and long numbers.
func TestHeadersMatchReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"default", "", `q"uote`, "ünï\u2028code", strings.Repeat("long-", 40), "\xff"}
	durs := []time.Duration{0, -time.Second, time.Nanosecond, 999 * time.Millisecond, time.Second, 5 * time.Minute, 1<<63 - 1}
	for i := range 2000 {
		res := limiter.Result{
			Allowed:    rng.IntN(2) == 0,
			Policy:     policy.Policy{Name: names[rng.IntN(len(names))], Window: durs[rng.IntN(len(durs))]},
			Limit:      rng.Int64N(1 << 62),
			Remaining:  rng.Int64N(1<<62) - 1<<61,
			RetryAfter: durs[rng.IntN(len(durs))],
			ResetAfter: time.Duration(rng.Int64N(1 << 62)),
		}
		if got, want := Headers(&res), headersRef(&res); !maps.Equal(got, want) {
			t.Fatalf("%d: Headers(%+v) =\n%v, want\n%v", i, res, got, want)
		}
	}
}
