package limiter

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// A lease id carries the policy and key it belongs to, so any node of a
// cluster can route a Release to the key's owner, plus a random nonce that
// tells the key's leases apart. Layout before base64url (no padding):
//
//	version(1)=1 | uvarint len(policy) | policy | uvarint len(key) | key | nonce (8 bytes, big endian)
const leaseIDVersion = 1

// maxLeaseIDLen bounds what DecodeLeaseID reads: a 512-byte key and a 64-byte
// policy name fit with room to spare.
const maxLeaseIDLen = 1024

// LeaseID is a decoded lease id.
type LeaseID struct {
	Policy string
	Key    string
	Nonce  uint64
}

// String encodes id.
func (id LeaseID) String() string {
	b := make([]byte, 0, 1+2+len(id.Policy)+2+len(id.Key)+8)
	b = append(b, leaseIDVersion)
	b = binary.AppendUvarint(b, uint64(len(id.Policy)))
	b = append(b, id.Policy...)
	b = binary.AppendUvarint(b, uint64(len(id.Key)))
	b = append(b, id.Key...)
	b = binary.BigEndian.AppendUint64(b, id.Nonce)
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeLeaseID parses a lease id made by LeaseID.String, or returns an error
// wrapping ErrBadLeaseID.
func DecodeLeaseID(s string) (LeaseID, error) {
	if s == "" || len(s) > maxLeaseIDLen {
		return LeaseID{}, fmt.Errorf("%w: length %d", ErrBadLeaseID, len(s))
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return LeaseID{}, fmt.Errorf("%w: %v", ErrBadLeaseID, err)
	}
	if len(b) < 1 || b[0] != leaseIDVersion {
		return LeaseID{}, fmt.Errorf("%w: unknown version", ErrBadLeaseID)
	}
	b = b[1:]
	field := func(name string) (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", false
		}
		v := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return v, utf8.ValidString(v)
	}
	var id LeaseID
	var ok bool
	if id.Policy, ok = field("policy"); !ok || id.Policy == "" {
		return LeaseID{}, fmt.Errorf("%w: bad policy", ErrBadLeaseID)
	}
	if id.Key, ok = field("key"); !ok || id.Key == "" || len(id.Key) > MaxKeyLen {
		return LeaseID{}, fmt.Errorf("%w: bad key", ErrBadLeaseID)
	}
	if len(b) != 8 {
		return LeaseID{}, fmt.Errorf("%w: bad nonce", ErrBadLeaseID)
	}
	id.Nonce = binary.BigEndian.Uint64(b)
	return id, nil
}
