package envoy

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/store"
)

// toStatus picks the gRPC status of an error in one place. Unexpected
// errors become INTERNAL with no detail; the caller logs them. Envoy treats
// every error alike (its failure_mode_deny decides), so the codes are for
// people reading logs and metrics.
func toStatus(err error) error {
	var se interface{ GRPCStatus() *status.Status }
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, errBadRequest), errors.Is(err, limiter.ErrBadKey), errors.Is(err, limiter.ErrBadHits),
		errors.Is(err, policy.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, limiter.ErrUnknownPolicy):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrConcurrencyPolicy):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, limiter.ErrClosed), errors.Is(err, store.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.As(err, &se):
		return se.GRPCStatus().Err()
	}
	return status.Error(codes.Internal, "internal error")
}

// isInternal reports whether toStatus hides err as INTERNAL.
func isInternal(err error) bool { return status.Code(toStatus(err)) == codes.Internal }
