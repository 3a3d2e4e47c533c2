package cluster

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
)

// Errors returned by this package. Check them with errors.Is; a peer's
// per-item error is a *RemoteError, checked with errors.As.
var (
	// ErrOwnerUnavailable means the key's owner could not be reached: the
	// connection failed, the peer is shutting down, or it answered with
	// codes.Unavailable. The caller may try the next replica.
	ErrOwnerUnavailable = errors.New("cluster: owner unavailable")

	// ErrNoMembers means there is no live member to own a key, for example
	// after Leave, or when a zero Member was passed to Forward.
	ErrNoMembers = errors.New("cluster: no live members")

	// ErrDeadline means the caller's deadline ran out before the owner
	// answered. Every error that matches ErrDeadline also matches
	// context.DeadlineExceeded.
	ErrDeadline = errors.New("cluster: deadline exceeded")

	// ErrRemote matches every *RemoteError: the owner answered the item
	// with an error status.
	ErrRemote = errors.New("cluster: remote error")

	// ErrClosed means the Node was shut down.
	ErrClosed = errors.New("cluster: node closed")

	// ErrStaleVersion means SetPolicy or DeletePolicy was given a version
	// that is not newer than the one the node already has.
	ErrStaleVersion = errors.New("cluster: stale policy version")
)

// RemoteError is the error a peer returned for one forwarded item. Code is
// the gRPC code the owner's handler chose, so the edge can hand it on
// unchanged (for example codes.NotFound for an unknown lease).
//
// A RemoteError matches ErrRemote; with codes.DeadlineExceeded it also
// matches ErrDeadline and context.DeadlineExceeded, and with
// codes.Unavailable it also matches ErrOwnerUnavailable.
type RemoteError struct {
	// Peer is the name of the member that answered.
	Peer string
	// Code is the gRPC status code the peer sent; never codes.OK.
	Code codes.Code
	// Msg is the status message the peer sent.
	Msg string
}

// Error implements error.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("cluster: peer %s: %s: %s", e.Peer, e.Code, e.Msg)
}

// Is reports whether e matches target; see RemoteError.
func (e *RemoteError) Is(target error) bool {
	switch target {
	case ErrRemote:
		return true
	case ErrDeadline, context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case ErrOwnerUnavailable:
		return e.Code == codes.Unavailable
	}
	return false
}

// deadlineError wraps ErrDeadline and context.DeadlineExceeded so both
// errors.Is checks succeed.
func deadlineError(what string, cause error) error {
	if cause == nil || errors.Is(cause, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w (%w)", what, ErrDeadline, context.DeadlineExceeded)
	}
	return fmt.Errorf("%s: %w (%w, %v)", what, ErrDeadline, context.DeadlineExceeded, cause)
}

// ctxError turns a done context's error into ours: a deadline becomes
// ErrDeadline, a cancellation stays context.Canceled.
func ctxError(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return deadlineError(what, nil)
	}
	return fmt.Errorf("%s: %w", what, err)
}
