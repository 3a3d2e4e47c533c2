package auth

import "errors"

// Errors returned by the auth package. The interceptors never return these:
// they answer with gRPC statuses (see UnaryInterceptor).
var (
	// ErrInvalid: the auth file is malformed or fails validation. The
	// wrapped message names the field, e.g. "tokens[1].role".
	ErrInvalid = errors.New("auth: invalid auth file")
	// ErrTLS: a certificate, key or CA file could not be used.
	ErrTLS = errors.New("auth: tls")
)
