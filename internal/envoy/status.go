package envoy

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/internal/server"
)

// toStatus picks the gRPC status of an error: the Envoy API's own errors
// here, the rest as the limiter.v1 services do (server.Status). Envoy
// treats every error alike (its failure_mode_deny decides), so the codes
// are for people reading logs and metrics.
func toStatus(err error) error {
	switch {
	case errors.Is(err, errBadRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrConcurrencyPolicy):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return server.Status(err)
}

// isInternal reports whether toStatus hides err as INTERNAL.
func isInternal(err error) bool { return status.Code(toStatus(err)) == codes.Internal }
