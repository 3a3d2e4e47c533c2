package store

import (
	"encoding/binary"
	"fmt"
)

// formatVersion is the on-disk layout this build writes. Bump it when the
// meaning of buckets or records changes in a way older builds must not read.
// Version 2 added the journal bucket, which a version 1 build would ignore,
// reading stale records. Open upgrades a version 1 file in place.
const formatVersion uint32 = 2

// oldestFormatVersion is the oldest layout Open reads (and upgrades).
const oldestFormatVersion uint32 = 1

// formatKey is the KindMeta key holding the encoded format record.
var formatKey = []byte("format")

// formatMagic starts every format record so that a stray value is not taken
// for a version number.
const formatMagic = "LMTD"

// formatLen is the size of an encoded format record: magic, then the version
// as a big-endian uint32.
const formatLen = len(formatMagic) + 4

// encodeFormat returns the format record for version v.
func encodeFormat(v uint32) []byte {
	b := make([]byte, formatLen)
	copy(b, formatMagic)
	binary.BigEndian.PutUint32(b[len(formatMagic):], v)
	return b
}

// decodeFormat parses a format record and returns its version. It rejects
// records of the wrong length, with the wrong magic, or with version 0.
func decodeFormat(b []byte) (uint32, error) {
	if len(b) != formatLen {
		return 0, fmt.Errorf("format record is %d bytes, want %d", len(b), formatLen)
	}
	if string(b[:len(formatMagic)]) != formatMagic {
		return 0, fmt.Errorf("format record has magic %q, want %q", b[:len(formatMagic)], formatMagic)
	}
	v := binary.BigEndian.Uint32(b[len(formatMagic):])
	if v == 0 {
		return 0, fmt.Errorf("format record has version 0")
	}
	return v, nil
}
