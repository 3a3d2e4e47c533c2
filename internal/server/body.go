package server

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/limiterd/limiterd/internal/limiter"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// TimestampLayout is the seed's ISO-8601 extended offset date-time with
// milliseconds, e.g. 2026-11-22T06:38:33.876+0000.
const TimestampLayout = "2006-01-02T15:04:05.000-0700"

// Texts of the 429 error body, per code.
const (
	textRateLimited = "Request rate limit exceeded"
	textConcurrency = "Concurrent requests limit exceeded"
	httpStatus      = 429
	httpReason      = "Too Many Requests"
)

// errorBody is the seed's JSON error body; field order is the seed's.
type errorBody struct {
	Code       int32  `json:"code"`
	Error      string `json:"error"`
	Message    string `json:"message,omitempty"`
	HTTPStatus int32  `json:"http_status"`
	HTTPReason string `json:"http_reason"`
	Path       string `json:"path"`
	Timestamp  string `json:"timestamp"`
	RequestID  string `json:"request-id"`
}

// NewRequestID returns 32 hex digits of randomness, like the seed's ids.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ErrorFor returns the 429 error of a denied result: code, texts and the
// exact JSON body a gateway returns.
func ErrorFor(res *limiter.Result, path, requestID string, now time.Time) *limiterv1.Error {
	if requestID == "" {
		requestID = NewRequestID()
	}
	e := &limiterv1.Error{
		Code:       res.Code,
		HttpStatus: httpStatus,
		HttpReason: httpReason,
		Path:       path,
		Timestamp:  now.UTC().Format(TimestampLayout),
		RequestId:  requestID,
	}
	retry := strconv.FormatInt(ceilSeconds(res.RetryAfter), 10) + "s"
	switch res.Code {
	case limiter.CodeConcurrency:
		e.Error = textConcurrency
		e.Message = strconv.FormatInt(res.MaxConcurrent, 10) + " concurrent requests at most; retry in " + retry
	default:
		e.Error = textRateLimited
		if res.RetryAfter >= res.Policy.Window && res.Remaining == res.Limit {
			e.Message = "the call's hits exceed the limit of " + strconv.FormatInt(res.Limit, 10) + " requests per " + res.Policy.Window.String()
		} else {
			e.Message = strconv.FormatInt(res.Limit, 10) + " requests per " + res.Policy.Window.String() + "; retry in " + retry
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(errorBody{
		Code: e.Code, Error: e.Error, Message: e.Message, HTTPStatus: e.HttpStatus,
		HTTPReason: e.HttpReason, Path: e.Path, Timestamp: e.Timestamp, RequestID: e.RequestId,
	})
	e.Body = string(bytes.TrimRight(buf.Bytes(), "\n"))
	return e
}

// Headers returns the HTTP headers a gateway adds for res: RateLimit-Policy
// and RateLimit (draft-ietf-httpapi-ratelimit-headers-10), X-RateLimit-*, and
// Retry-After when denied. In RateLimit, t is the seconds until the call can
// succeed when denied, and until the window is empty when allowed.
func Headers(res *limiter.Result) map[string]string {
	// Every value is a part of one string, built in one buffer: a call
	// costs the map and that string, not a dozen small ones.
	var stack [128]byte
	hv := appendHeaderText(stack[:0], res)
	v := string(hv.text)
	h := make(map[string]string, 6)
	for i, k := range headerNames {
		if sp := hv.span[i]; sp[1] > 0 {
			h[k] = v[sp[0]:sp[1]]
		}
	}
	return h
}

// headerNames are the header keys in sorted order, the order in which a
// deterministic encoding writes the headers map.
var headerNames = [...]string{"RateLimit", "RateLimit-Policy", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}

// headerText holds the values of the headers of a result, each a span of
// text: span[i] is the value of headerNames[i], or [0, 0] for a header the
// result has not (Retry-After when allowed).
type headerText struct {
	text []byte
	span [len(headerNames)][2]int
}

// appendHeaderText appends the values of res's headers (see Headers) to b,
// sharing their common parts.
func appendHeaderText(b []byte, res *limiter.Result) headerText {
	b = strconv.AppendQuote(b, res.Policy.Name)
	nameEnd := len(b)
	b = append(b, ";q="...)
	limit0 := len(b)
	b = strconv.AppendInt(b, res.Limit, 10)
	limit1 := len(b)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, ceilSeconds(res.Policy.Window), 10)
	policyEnd := len(b)
	b = append(b, b[:nameEnd]...)
	b = append(b, ";r="...)
	rem0 := len(b)
	b = strconv.AppendInt(b, res.Remaining, 10)
	rem1 := len(b)
	b = append(b, ";t="...)
	t0 := len(b) // t: the retry wait when denied, else the reset
	if !res.Allowed {
		b = strconv.AppendInt(b, ceilSeconds(res.RetryAfter), 10)
	} else {
		b = strconv.AppendInt(b, ceilSeconds(res.ResetAfter), 10)
	}
	t1 := len(b)
	reset0, reset1 := t0, t1
	var retry [2]int
	if !res.Allowed {
		retry = [2]int{t0, t1}
		reset0 = len(b)
		b = strconv.AppendInt(b, ceilSeconds(res.ResetAfter), 10)
		reset1 = len(b)
	}
	return headerText{text: b, span: [len(headerNames)][2]int{
		{policyEnd, t1},  // RateLimit
		{0, policyEnd},   // RateLimit-Policy
		retry,            // Retry-After
		{limit0, limit1}, // X-RateLimit-Limit
		{rem0, rem1},     // X-RateLimit-Remaining
		{reset0, reset1}, // X-RateLimit-Reset
	}}
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
