package window

import "errors"

// Errors returned by this package.
var (
	// ErrBadLimit: a limit below 1 or above MaxLimit.
	ErrBadLimit = errors.New("window: limit out of range")
	// ErrBadWindow: a window shorter than MinWindow or longer than MaxWindow.
	ErrBadWindow = errors.New("window: window out of range")
	// ErrBadBuckets: a bucket count outside MinBuckets..MaxBuckets.
	ErrBadBuckets = errors.New("window: buckets out of range")
	// ErrBadHits: a negative number of hits.
	ErrBadHits = errors.New("window: negative hits")
	// ErrCorrupt: MarshalBinary output that does not decode.
	ErrCorrupt = errors.New("window: corrupt encoding")
)
