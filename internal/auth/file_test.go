package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// Secrets the tests use; the auth file holds their hashes.
const (
	clientToken    = "client-token-0123456789abcdef"
	allKeysToken   = "all-keys-token-0123456789abcdef"
	adminToken     = "admin-token-0123456789abcdef"
	narrowAdmToken = "narrow-admin-token-0123456789abcdef"
	peerSecret     = "peer-secret-0123456789abcdef"
)

// testFile is an auth file with one token of each kind and a peer secret.
func testFile() string {
	return `tokens:
  - name: edge-gateway
    sha256: ` + HashToken(clientToken) + `
    role: client
    key_prefixes: ["tenant:", "edge:", "envoy:edge:"]
  - name: everything
    sha256: ` + HashToken(allKeysToken) + `
    role: client
    key_prefixes: ["*"]
  - name: ops
    sha256: ` + strings.ToUpper(HashToken(adminToken)) + `
    role: admin
  - name: tenant-admin
    sha256: ` + HashToken(narrowAdmToken) + `
    role: admin
    key_prefixes: ["tenant:"]
peer_secret_sha256: ` + HashToken(peerSecret) + `
`
}

func mustParse(t testing.TB, data string, cfg Config) *Authenticator {
	t.Helper()
	a, err := Parse([]byte(data), cfg)
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	return a
}

func TestHashToken(t *testing.T) {
	// printf %s test | sha256sum
	const want = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	if got := HashToken("test"); got != want {
		t.Errorf("HashToken(%q) = %s, want %s", "test", got, want)
	}
}

func TestParseValid(t *testing.T) {
	a := mustParse(t, testFile(), DefaultConfig())
	if len(a.tokens) != 4 {
		t.Fatalf("len(tokens) = %d, want 4", len(a.tokens))
	}
	if !a.hasPeer {
		t.Errorf("hasPeer = false, want true")
	}
	tests := []struct {
		secret   string
		name     string
		role     Role
		allKeys  bool
		prefixes []string
	}{
		{clientToken, "edge-gateway", RoleClient, false, []string{"tenant:", "edge:", "envoy:edge:"}},
		{allKeysToken, "everything", RoleClient, true, nil},
		{adminToken, "ops", RoleAdmin, true, nil},
		{narrowAdmToken, "tenant-admin", RoleAdmin, false, []string{"tenant:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := parseHash(HashToken(tt.secret))
			tok, ok := a.tokens[h]
			if !ok {
				t.Fatalf("token %q not found by its hash", tt.name)
			}
			if tok.id != (Identity{Name: tt.name, Role: tt.role}) {
				t.Errorf("id = %+v, want {%s %s}", tok.id, tt.name, tt.role)
			}
			if tok.allKeys != tt.allKeys {
				t.Errorf("allKeys = %v, want %v", tok.allKeys, tt.allKeys)
			}
			if !reflect.DeepEqual(tok.prefixes, tt.prefixes) {
				t.Errorf("prefixes = %q, want %q", tok.prefixes, tt.prefixes)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	h1, h2 := HashToken("one-0123456789"), HashToken("two-0123456789")
	tok := func(name, hash, role, prefixes string) string {
		s := "  - name: " + name + "\n    sha256: " + hash + "\n    role: " + role + "\n"
		if prefixes != "" {
			s += "    key_prefixes: " + prefixes + "\n"
		}
		return s
	}
	tests := []struct {
		name string
		data string
		want string // substring of the error
	}{
		{"empty file", "", "empty file"},
		{"not yaml", "tokens: [", "yaml"},
		{"no tokens", "tokens: []\n", "tokens: at least one token"},
		{"unknown top-level field", "tokenz: []\n", "field tokenz not found"},
		{"unknown token field", "tokens:\n" + tok("a", h1, "client", `["x:"]`) + "    prefixes: [y]\n", "field prefixes not found"},
		{"two documents", "tokens:\n" + tok("a", h1, "client", `["x:"]`) + "---\ntokens: []\n", "more than one YAML document"},
		{"missing name", "tokens:\n" + tok(`""`, h1, "client", `["x:"]`), "tokens[0].name: required"},
		{"control char in name", "tokens:\n" + tok(`"a\tb"`, h1, "client", `["x:"]`), "tokens[0].name: want printable"},
		{"long name", "tokens:\n" + tok(strings.Repeat("n", 129), h1, "client", `["x:"]`), "tokens[0].name: longer than"},
		{"duplicate name", "tokens:\n" + tok("a", h1, "client", `["x:"]`) + tok("a", h2, "client", `["x:"]`), "tokens[1].name: \"a\" is also tokens[0].name"},
		{"missing hash", "tokens:\n" + tok("a", `""`, "client", `["x:"]`), "tokens[0].sha256 (token \"a\"): required"},
		{"short hash", "tokens:\n" + tok("a", "abcd", "client", `["x:"]`), "tokens[0].sha256 (token \"a\"): want 64 hex digits"},
		{"non-hex hash", "tokens:\n" + tok("a", strings.Repeat("zz", 32), "client", `["x:"]`), "tokens[0].sha256 (token \"a\"): want 64 hex digits"},
		{"hash of empty string", "tokens:\n" + tok("a", HashToken(""), "client", `["x:"]`), "hash of the empty string"},
		{"duplicate hash", "tokens:\n" + tok("a", h1, "client", `["x:"]`) + tok("b", h1, "admin", ""), "tokens[1].sha256 (token \"b\"): same hash as token \"a\""},
		{"missing role", "tokens:\n" + tok("a", h1, `""`, `["x:"]`), "tokens[0].role (token \"a\"): required"},
		{"bad role", "tokens:\n" + tok("a", h1, "root", `["x:"]`), "tokens[0].role (token \"a\"): \"root\" is not client or admin"},
		{"client without prefixes", "tokens:\n" + tok("a", h1, "client", ""), "tokens[0].key_prefixes (token \"a\"): required for role client"},
		{"empty prefix", "tokens:\n" + tok("a", h1, "client", `["x:", ""]`), "tokens[0].key_prefixes (token \"a\"): [1]: empty prefix"},
		{"star with others", "tokens:\n" + tok("a", h1, "client", `["x:", "*"]`), "tokens[0].key_prefixes (token \"a\"): [1]: \"*\" must be the only prefix"},
		{"duplicate prefix", "tokens:\n" + tok("a", h1, "client", `["x:", "x:"]`), "tokens[0].key_prefixes (token \"a\"): [1]: \"x:\" listed twice"},
		{"bad peer hash", "tokens:\n" + tok("a", h1, "client", `["x:"]`) + "peer_secret_sha256: nope\n", "peer_secret_sha256: want 64 hex digits"},
		{"peer secret is a token", "tokens:\n" + tok("a", h1, "client", `["x:"]`) + "peer_secret_sha256: " + h1 + "\n", "peer_secret_sha256: same hash as token \"a\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.data), DefaultConfig())
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse() error = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse() error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "auth.yaml")
	if err := os.WriteFile(good, []byte(testFile()), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("tokens: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		wantErr error
	}{
		{"valid", good, nil},
		{"invalid", bad, ErrInvalid},
		{"missing", filepath.Join(dir, "nope.yaml"), os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Load(tt.path, DefaultConfig())
			if tt.wantErr == nil {
				if err != nil || a == nil {
					t.Fatalf("Load() = %v, %v, want an Authenticator", a, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Load() error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.path) {
				t.Errorf("Load() error = %q, want it to name %s", err, tt.path)
			}
		})
	}
}

// FuzzParse: bad input is rejected, good input round-trips through the file
// format to the same Authenticator, and nothing panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(testFile()))
	f.Add([]byte("tokens:\n  - name: a\n    sha256: " + HashToken("x") + "\n    role: admin\n"))
	f.Add([]byte("tokens:\n  - {name: a, sha256: " + HashToken("x") + ", role: client, key_prefixes: ['*']}\n"))
	f.Add([]byte("tokens: []\n"))
	f.Add([]byte(""))
	f.Add([]byte("tokens: [{name: a, role: client}]\npeer_secret_sha256: 00\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := Parse(data, DefaultConfig())
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse() error = %v, want ErrInvalid", err)
			}
			return
		}
		out, err := yaml.Marshal(a.format())
		if err != nil {
			t.Fatalf("yaml.Marshal() error = %v", err)
		}
		b, err := Parse(out, DefaultConfig())
		if err != nil {
			t.Fatalf("Parse(round trip) error = %v\n%s", err, out)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("round trip = %+v, want %+v", b, a)
		}
	})
}

// format renders a back to the file format, for the round-trip check.
func (a *Authenticator) format() fileFormat {
	var f fileFormat
	for h, t := range a.tokens {
		tf := tokenFormat{Name: t.id.Name, SHA256: hexHash(h), Role: string(t.id.Role), KeyPrefixes: t.prefixes}
		if t.allKeys && t.id.Role == RoleClient {
			tf.KeyPrefixes = []string{AllKeys}
		}
		f.Tokens = append(f.Tokens, tf)
	}
	if a.hasPeer {
		f.PeerSecretSHA256 = hexHash(a.peer)
	}
	return f
}

func hexHash(h [sha256.Size]byte) string { return hex.EncodeToString(h[:]) }
