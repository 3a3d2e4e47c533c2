package envoy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/server"
)

// maxHits bounds the hits of one descriptor: above every policy's limit
// (window.MaxLimit), so a larger hits_addend is simply denied.
const maxHits = 1 << 32

// Decider makes decisions; *limiter.Limiter satisfies it, and so does the
// cluster router that forwards to a key's owner.
type Decider interface {
	Allow(ctx context.Context, req limiter.Request) (limiter.Result, error)
}

// releaser is the optional part of a Decider used to give back a lease
// taken by accident (a policy given a concurrency cap while running).
type releaser interface {
	Release(ctx context.Context, leaseID string) (inFlight int64, err error)
}

// Service implements envoy.service.ratelimit.v3.RateLimitService. It is
// safe for concurrent use; its Config is fixed at New.
type Service struct {
	rlsv3.UnimplementedRateLimitServiceServer
	domains map[string]*node
	d       Decider
	now     func() time.Time
	log     *slog.Logger
}

// New returns a Service that maps descriptors with cfg and decides with d.
// cfg should come from ParseConfig and pass ValidatePolicies. now stamps
// error bodies; nil means time.Now. logger gets one line per internal
// error; nil means slog.Default().
func New(cfg Config, d Decider, now func() time.Time, logger *slog.Logger) *Service {
	if d == nil {
		panic("envoy: New with a nil Decider")
	}
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Service{domains: compile(cfg), d: d, now: now, log: logger}
}

// Register adds the RateLimitService to g, typically the grpc.Server of
// server.Service so both APIs share one port.
func (s *Service) Register(g *grpc.Server) { rlsv3.RegisterRateLimitServiceServer(g, s) }

// target is a request descriptor that matched a policy.
type target struct {
	i   int // index in the request
	req limiter.Request
	res limiter.Result
}

// ShouldRateLimit implements RateLimitService/ShouldRateLimit. Descriptors
// that match no policy are OK. When several match, they are first checked
// without counting and their hits are counted only when all are allowed,
// so a denied call counts nothing (see the package doc for the race this
// leaves). It blocks as long as the Decider does.
func (s *Service) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	rid := server.NewRequestID()
	targets, err := s.targets(req)
	if err != nil {
		return nil, s.fail(rid, err)
	}

	// Pass 1: would every descriptor be allowed? With one descriptor the
	// counting pass alone is enough: a denied Allow counts nothing.
	over := false
	if len(targets) > 1 {
		for k := range targets {
			t := &targets[k]
			dry := t.req
			dry.DryRun = true
			if t.res, err = s.d.Allow(ctx, dry); err != nil {
				return nil, s.fail(rid, fmt.Errorf("descriptors[%d]: %w", t.i, err))
			}
			if t.res.Policy.MaxConcurrent > 0 {
				return nil, s.fail(rid, fmt.Errorf("descriptors[%d]: policy %q: %w", t.i, t.res.Policy.Name, ErrConcurrencyPolicy))
			}
			over = over || !t.res.Allowed
		}
	}
	if over {
		// Nothing is counted: report what is left before this call.
		for k := range targets {
			if r := &targets[k].res; r.Allowed {
				r.Remaining = min(r.Limit, r.Remaining+targets[k].req.Hits)
			}
		}
	} else {
		// Pass 2: count. Another call may have taken the room in between.
		for k := range targets {
			t := &targets[k]
			if t.res, err = s.d.Allow(ctx, t.req); err != nil {
				return nil, s.fail(rid, fmt.Errorf("descriptors[%d]: %w", t.i, err))
			}
			if t.res.Policy.MaxConcurrent > 0 {
				if t.res.LeaseID != "" {
					s.giveBack(ctx, rid, t.res)
				}
				return nil, s.fail(rid, fmt.Errorf("descriptors[%d]: policy %q: %w", t.i, t.res.Policy.Name, ErrConcurrencyPolicy))
			}
			over = over || !t.res.Allowed
		}
	}
	return s.response(req, targets, over, rid), nil
}

// targets resolves the request's descriptors; unmatched ones are left out.
func (s *Service) targets(req *rlsv3.RateLimitRequest) ([]target, error) {
	if req.GetDomain() == "" {
		return nil, fmt.Errorf("%w: domain is empty", errBadRequest)
	}
	if len(req.GetDescriptors()) == 0 {
		return nil, fmt.Errorf("%w: no descriptors", errBadRequest)
	}
	hits := int64(req.GetHitsAddend())
	if hits == 0 {
		hits = 1
	}
	root := s.domains[req.GetDomain()]
	var out []target
	for i, d := range req.GetDescriptors() {
		if len(d.GetEntries()) == 0 {
			return nil, fmt.Errorf("%w: descriptors[%d] has no entries", errBadRequest, i)
		}
		for j, e := range d.GetEntries() {
			if e.GetKey() == "" {
				return nil, fmt.Errorf("%w: descriptors[%d].entries[%d].key is empty", errBadRequest, i, j)
			}
		}
		if root == nil || d.GetIsNegativeHits() {
			continue // unknown domain; refunds are not supported
		}
		name := root.resolve(d.GetEntries())
		if name == "" {
			continue
		}
		h := hits
		if a := d.GetHitsAddend(); a != nil {
			h = int64(min(a.GetValue(), maxHits))
			if h == 0 {
				h = 1
			}
		}
		out = append(out, target{i: i, req: limiter.Request{Policy: name, Key: CounterKey(req.GetDomain(), d.GetEntries()), Hits: h}})
	}
	return out, nil
}

// response renders the decisions.
func (s *Service) response(req *rlsv3.RateLimitRequest, targets []target, over bool, rid string) *rlsv3.RateLimitResponse {
	out := &rlsv3.RateLimitResponse{
		OverallCode: rlsv3.RateLimitResponse_OK,
		Statuses:    make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(req.GetDescriptors())),
	}
	for i := range out.Statuses {
		out.Statuses[i] = &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
	}
	var worst *limiter.Result
	for k := range targets {
		r := &targets[k].res
		st := out.Statuses[targets[k].i]
		if !r.Allowed {
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		st.CurrentLimit = currentLimit(r)
		st.LimitRemaining = uint32(min(max(r.Remaining, 0), math.MaxUint32))
		st.DurationUntilReset = durationpb.New(r.ResetAfter)
		if worst == nil || moreRestrictive(r, worst) {
			worst = r
		}
	}
	if over {
		out.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
	}
	if worst == nil {
		return out
	}
	h := server.Headers(worst)
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		out.ResponseHeadersToAdd = append(out.ResponseHeadersToAdd, &corev3.HeaderValue{Key: k, Value: h[k]})
	}
	if !worst.Allowed {
		e := server.ErrorFor(worst, pathOf(req.GetDescriptors()), rid, s.now())
		out.RawBody = []byte(e.GetBody())
		// Envoy lets the service's content-type replace text/plain on its
		// local 429 reply.
		out.ResponseHeadersToAdd = append(out.ResponseHeadersToAdd, &corev3.HeaderValue{Key: "Content-Type", Value: "application/json"})
		s.log.Debug("envoy: over limit", "request_id", rid, "domain", req.GetDomain(), "policy", worst.Policy.Name)
	}
	return out
}

// moreRestrictive reports whether a should speak for the call rather than
// b: a denial over an allowance, then the longer wait, then the fewer
// remaining hits.
func moreRestrictive(a, b *limiter.Result) bool {
	switch {
	case a.Allowed != b.Allowed:
		return !a.Allowed
	case !a.Allowed:
		return a.RetryAfter > b.RetryAfter
	case a.Remaining != b.Remaining:
		return a.Remaining < b.Remaining
	}
	return a.ResetAfter > b.ResetAfter
}

// currentLimit describes a policy in Envoy's terms. Envoy knows only whole
// units, so a window of exactly 1s, 1m, 1h or 1d gets its unit and any
// other UNKNOWN; the name always carries the window, e.g.
// "default: 600 per 5m0s".
func currentLimit(r *limiter.Result) *rlsv3.RateLimitResponse_RateLimit {
	unit := rlsv3.RateLimitResponse_RateLimit_UNKNOWN
	switch r.Policy.Window {
	case time.Second:
		unit = rlsv3.RateLimitResponse_RateLimit_SECOND
	case time.Minute:
		unit = rlsv3.RateLimitResponse_RateLimit_MINUTE
	case time.Hour:
		unit = rlsv3.RateLimitResponse_RateLimit_HOUR
	case 24 * time.Hour:
		unit = rlsv3.RateLimitResponse_RateLimit_DAY
	}
	return &rlsv3.RateLimitResponse_RateLimit{
		Name:            r.Policy.Name + ": " + strconv.FormatInt(r.Limit, 10) + " per " + r.Policy.Window.String(),
		RequestsPerUnit: uint32(min(max(r.Limit, 0), math.MaxUint32)),
		Unit:            unit,
	}
}

// pathOf returns the value of the first entry keyed "path" or ":path".
func pathOf(ds []*ratelimitv3.RateLimitDescriptor) string {
	for _, d := range ds {
		for _, e := range d.GetEntries() {
			if k := e.GetKey(); k == "path" || k == ":path" {
				return e.GetValue()
			}
		}
	}
	return ""
}

// giveBack releases a lease the Decider took although this API never
// releases: the policy has a concurrency cap that ValidatePolicies did not
// see (it was given one at run time). A Decider without Release leaves the
// lease to expire after the policy's lease_ttl.
func (s *Service) giveBack(ctx context.Context, rid string, res limiter.Result) {
	r, ok := s.d.(releaser)
	if !ok {
		return
	}
	if _, err := r.Release(ctx, res.LeaseID); err != nil {
		s.log.Warn("envoy: release of a stray lease failed", "request_id", rid, "policy", res.Policy.Name, "err", err)
	}
}

// fail maps err to a status and logs what the caller does not see.
func (s *Service) fail(rid string, err error) error {
	st := toStatus(err)
	switch {
	case isInternal(err):
		s.log.Error("envoy: ShouldRateLimit failed", "request_id", rid, "err", err)
	case errors.Is(err, limiter.ErrUnknownPolicy), errors.Is(err, ErrConcurrencyPolicy):
		// The config and the policies have drifted apart (Admin API).
		s.log.Warn("envoy: ShouldRateLimit refused", "request_id", rid, "err", err)
	default:
		s.log.Debug("envoy: ShouldRateLimit refused", "request_id", rid, "err", err)
	}
	return st
}
