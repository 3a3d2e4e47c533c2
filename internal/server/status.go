package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/internal/cluster"
	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/store"
)

// toStatus picks the gRPC status of an error in one place. Unexpected errors
// become INTERNAL with no detail; the caller logs them.
func toStatus(err error) error {
	var se interface{ GRPCStatus() *status.Status }
	var re *cluster.RemoteError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re): // before the sentinels, which it also matches
		return status.Error(re.Code, re.Msg)
	case errors.Is(err, cluster.ErrDeadline):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, limiter.ErrBadKey), errors.Is(err, limiter.ErrBadHits),
		errors.Is(err, limiter.ErrBadLeaseID), errors.Is(err, policy.ErrInvalid), errors.Is(err, errBadRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, limiter.ErrUnknownPolicy), errors.Is(err, limiter.ErrLeaseNotFound), errors.Is(err, limiter.ErrKeyNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, limiter.ErrPolicyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, errDraining), errors.Is(err, errLeaving), errors.Is(err, errStarting), errors.Is(err, errUnsynced), errors.Is(err, limiter.ErrClosed), errors.Is(err, store.ErrClosed),
		errors.Is(err, cluster.ErrOwnerUnavailable), errors.Is(err, cluster.ErrNoMembers), errors.Is(err, cluster.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.As(err, &se):
		return se.GRPCStatus().Err()
	}
	return status.Error(codes.Internal, "internal error")
}

// isInternal reports whether toStatus hides err as INTERNAL.
func isInternal(err error) bool { return status.Code(toStatus(err)) == codes.Internal }

var (
	errBadRequest = errors.New("bad request")
	errDraining   = errors.New("server: draining")
	errLeaving    = errors.New("server: leaving the cluster; retry on the key's new owner")
	errStarting   = errors.New("server: joining the cluster; retry on another node")
	errUnsynced   = errors.New("server: the key's state is not yet merged from its peers; retry on another replica")
)

// Status maps err to the gRPC status the limiter.v1 services would answer
// with, so every front door maps errors alike. Unexpected errors become a
// bare INTERNAL; the caller logs them.
func Status(err error) error { return toStatus(err) }
