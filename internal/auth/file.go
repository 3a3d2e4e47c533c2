package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// AllKeys, alone in key_prefixes, lets a token use every key.
const AllKeys = "*"

// Limits on the auth file, to keep errors readable and the file sane.
const (
	maxNameLen   = 128
	maxPrefixLen = 512 // a key is at most 512 bytes
	maxFileSize  = 1 << 20
)

// emptyHash is the sha256 of the empty string: a token file that holds it was
// almost certainly made by hashing an unset variable.
var emptyHash = sha256.Sum256(nil)

// Config holds what the auth file cannot say: hooks into the rest of
// limiterd.
type Config struct {
	// LeaseKey returns the key a lease id was issued for, so Release can be
	// checked against the token's prefixes without auth importing the
	// limiter; the daemon passes a wrapper around limiter.DecodeLeaseID.
	// Default nil: Release is allowed only for tokens that may use every
	// key, and is PERMISSION_DENIED for the others.
	LeaseKey func(leaseID string) (key string, err error)
}

// DefaultConfig returns a Config with every field at its default.
func DefaultConfig() Config { return Config{} }

// fileFormat is the YAML of an auth file.
type fileFormat struct {
	Tokens           []tokenFormat `yaml:"tokens"`
	PeerSecretSHA256 string        `yaml:"peer_secret_sha256,omitempty"`
}

type tokenFormat struct {
	Name        string   `yaml:"name"`
	SHA256      string   `yaml:"sha256"`
	Role        string   `yaml:"role"`
	KeyPrefixes []string `yaml:"key_prefixes,omitempty"`
}

// token is a validated tokenFormat.
type token struct {
	id       Identity
	allKeys  bool
	prefixes []string
}

// mayUse reports whether t may limit key.
func (t *token) mayUse(key string) bool {
	if t.allKeys {
		return true
	}
	for _, p := range t.prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// Authenticator checks the credentials of incoming gRPC calls against an auth
// file. It is immutable after Parse or Load and safe for concurrent use.
type Authenticator struct {
	cfg     Config
	tokens  map[[sha256.Size]byte]*token
	peer    [sha256.Size]byte
	hasPeer bool
}

// HashToken returns the hex sha256 of token, the form the auth file stores.
// An operator makes the same hash with
//
//	printf %s "$TOKEN" | sha256sum
//
// (printf, not echo, so no newline is hashed).
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Load reads the auth file at path and returns an Authenticator for it. Errors
// wrap ErrInvalid when the file is malformed, or the os error when it cannot
// be read.
func Load(path string, cfg Config) (*Authenticator, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load auth file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("load auth file %s: %w", path, err)
	}
	a, err := Parse(data, cfg)
	if err != nil {
		return nil, fmt.Errorf("load auth file %s: %w", path, err)
	}
	return a, nil
}

// Parse parses and validates an auth file. Unknown fields are errors, so a
// typo cannot silently widen or narrow a token. Errors wrap ErrInvalid and
// name the field, e.g. `tokens[2].sha256: want 64 hex digits`.
func Parse(data []byte, cfg Config) (*Authenticator, error) {
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, maxFileSize)
	}
	var f fileFormat
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty file", ErrInvalid)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrInvalid)
	}
	return build(f, cfg)
}

// build validates f and returns an Authenticator.
func build(f fileFormat, cfg Config) (*Authenticator, error) {
	a := &Authenticator{cfg: cfg, tokens: make(map[[sha256.Size]byte]*token, len(f.Tokens))}
	if len(f.Tokens) == 0 {
		return nil, fmt.Errorf("%w: tokens: at least one token is required", ErrInvalid)
	}
	names := make(map[string]int, len(f.Tokens))
	for i, tf := range f.Tokens {
		field := func(name string) string { return fmt.Sprintf("tokens[%d].%s", i, name) }
		switch {
		case tf.Name == "":
			return nil, fmt.Errorf("%w: %s: required", ErrInvalid, field("name"))
		case len(tf.Name) > maxNameLen:
			return nil, fmt.Errorf("%w: %s: longer than %d bytes", ErrInvalid, field("name"), maxNameLen)
		case !printable(tf.Name):
			return nil, fmt.Errorf("%w: %s: want printable UTF-8", ErrInvalid, field("name"))
		}
		if j, dup := names[tf.Name]; dup {
			return nil, fmt.Errorf("%w: %s: %q is also tokens[%d].name", ErrInvalid, field("name"), tf.Name, j)
		}
		names[tf.Name] = i
		h, err := parseHash(tf.SHA256)
		if err != nil {
			return nil, fmt.Errorf("%w: %s (token %q): %v", ErrInvalid, field("sha256"), tf.Name, err)
		}
		if other, dup := a.tokens[h]; dup {
			return nil, fmt.Errorf("%w: %s (token %q): same hash as token %q", ErrInvalid, field("sha256"), tf.Name, other.id.Name)
		}
		t := &token{id: Identity{Name: tf.Name, Role: Role(tf.Role)}}
		switch t.id.Role {
		case RoleClient, RoleAdmin:
		case "":
			return nil, fmt.Errorf("%w: %s (token %q): required: client or admin", ErrInvalid, field("role"), tf.Name)
		default:
			return nil, fmt.Errorf("%w: %s (token %q): %q is not client or admin", ErrInvalid, field("role"), tf.Name, tf.Role)
		}
		if err := t.setPrefixes(tf.KeyPrefixes); err != nil {
			return nil, fmt.Errorf("%w: %s (token %q): %v", ErrInvalid, field("key_prefixes"), tf.Name, err)
		}
		a.tokens[h] = t
	}
	if f.PeerSecretSHA256 != "" {
		h, err := parseHash(f.PeerSecretSHA256)
		if err != nil {
			return nil, fmt.Errorf("%w: peer_secret_sha256: %v", ErrInvalid, err)
		}
		if t, dup := a.tokens[h]; dup {
			return nil, fmt.Errorf("%w: peer_secret_sha256: same hash as token %q; the peer secret must differ from every token", ErrInvalid, t.id.Name)
		}
		a.peer, a.hasPeer = h, true
	}
	return a, nil
}

// setPrefixes validates ps for t's role and stores them.
func (t *token) setPrefixes(ps []string) error {
	if len(ps) == 0 {
		if t.id.Role == RoleClient {
			return fmt.Errorf(`required for role client (use ["%s"] for every key)`, AllKeys)
		}
		t.allKeys = true // an admin with no prefixes may use every key
		return nil
	}
	seen := make(map[string]bool, len(ps))
	for j, p := range ps {
		switch {
		case p == AllKeys:
			if len(ps) != 1 {
				return fmt.Errorf("[%d]: %q must be the only prefix", j, AllKeys)
			}
			t.allKeys = true
			return nil
		case p == "":
			return fmt.Errorf(`[%d]: empty prefix; use "%s" for every key`, j, AllKeys)
		case len(p) > maxPrefixLen:
			return fmt.Errorf("[%d]: longer than %d bytes", j, maxPrefixLen)
		case !utf8.ValidString(p):
			return fmt.Errorf("[%d]: not valid UTF-8", j)
		case seen[p]:
			return fmt.Errorf("[%d]: %q listed twice", j, p)
		}
		seen[p] = true
	}
	t.prefixes = append([]string(nil), ps...)
	return nil
}

// parseHash decodes a hex sha256.
func parseHash(s string) ([sha256.Size]byte, error) {
	var h [sha256.Size]byte
	if s == "" {
		return h, errors.New("required: hex sha256 of the token (printf %s \"$TOKEN\" | sha256sum)")
	}
	if len(s) != 2*sha256.Size {
		return h, fmt.Errorf("want %d hex digits, got %d characters", 2*sha256.Size, len(s))
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("want %d hex digits: %v", 2*sha256.Size, err)
	}
	if h == emptyHash {
		return h, errors.New("hash of the empty string; was the secret variable unset?")
	}
	return h, nil
}

// printable reports whether s is valid UTF-8 with no control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
