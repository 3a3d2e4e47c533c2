package store

import "errors"

// Errors returned by this package. Callers check them with errors.Is; the
// returned errors wrap them with what was being done and, where useful, the
// file path.
var (
	// ErrNotFound is returned by Get when the kind holds no record for the key.
	ErrNotFound = errors.New("store: not found")

	// ErrCorrupt is wrapped by Open when the file exists but is not a usable
	// store: not a bbolt file, truncated, bad magic or checksum in both meta
	// pages, pages that cannot be read, a missing or unsupported format
	// version record, or a directory at the path. The file is left untouched.
	ErrCorrupt = errors.New("store: corrupt or unreadable file")

	// ErrClosed is returned by every method of a DB after Close.
	ErrClosed = errors.New("store: closed")

	// ErrBadKind is returned when a Kind is not one of the kinds this
	// package declares (KindState, KindPolicies, KindMeta).
	ErrBadKind = errors.New("store: unknown kind")

	// ErrEmptyKey is returned when a key is nil or empty; bbolt cannot store
	// an empty key.
	ErrEmptyKey = errors.New("store: empty key")

	// ErrTooLarge is returned when a key or value exceeds bbolt's limits
	// (bbolt.MaxKeySize, bbolt.MaxValueSize).
	ErrTooLarge = errors.New("store: key or value too large")
)
