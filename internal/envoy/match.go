package envoy

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"unicode/utf8"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"

	"github.com/limiterd/limiterd/internal/limiter"
)

// KeyPrefix starts every limiter key made by this package.
const KeyPrefix = "envoy:"

// node is one compiled Descriptor: the policy of request descriptors that
// end here and the entries that may follow.
type node struct {
	policy   string
	exact    map[entry]*node
	prefixes map[string][]prefixNode // by key, longest prefix first
	any      map[string]*node
}

type entry struct{ key, value string }

type prefixNode struct {
	prefix string
	n      *node
}

// compile indexes cfg by domain. A Config that ParseConfig did not check is
// tolerated: of duplicates the first wins.
func compile(cfg Config) map[string]*node {
	out := make(map[string]*node, len(cfg.Domains))
	for _, d := range cfg.Domains {
		if _, dup := out[d.Name]; !dup && d.Name != "" {
			out[d.Name] = compileList(d.Descriptors)
		}
	}
	return out
}

func compileList(ds []Descriptor) *node {
	n := &node{exact: map[entry]*node{}, prefixes: map[string][]prefixNode{}, any: map[string]*node{}}
	for _, d := range ds {
		c := compileList(d.Descriptors)
		if !d.Unlimited {
			c.policy = d.Policy
		}
		switch {
		case d.Value == "":
			if n.any[d.Key] == nil {
				n.any[d.Key] = c
			}
		case strings.HasSuffix(d.Value, "*"):
			n.prefixes[d.Key] = append(n.prefixes[d.Key], prefixNode{prefix: strings.TrimSuffix(d.Value, "*"), n: c})
		default:
			if n.exact[entry{d.Key, d.Value}] == nil {
				n.exact[entry{d.Key, d.Value}] = c
			}
		}
	}
	for _, ps := range n.prefixes {
		sort.SliceStable(ps, func(i, j int) bool { return len(ps[i].prefix) > len(ps[j].prefix) })
	}
	return n
}

// child returns the node an entry leads to, or nil.
func (n *node) child(key, value string) *node {
	if c := n.exact[entry{key, value}]; c != nil {
		return c
	}
	for _, p := range n.prefixes[key] {
		if strings.HasPrefix(value, p.prefix) {
			return p.n
		}
	}
	return n.any[key]
}

// resolve walks root with the entries of a request descriptor and returns
// the policy of the node the last entry reaches; "" means not limited
// (some entry matched nothing, or the last one has no policy).
func (n *node) resolve(entries []*ratelimitv3.RateLimitDescriptor_Entry) string {
	for _, e := range entries {
		if n = n.child(e.GetKey(), e.GetValue()); n == nil {
			return ""
		}
	}
	return n.policy
}

// CounterKey returns the limiter key of a request descriptor in domain:
// KeyPrefix, the domain, then ":key=value" for every entry in order, with
// '%', ':', '=' and '#' in names and values written as %XX so that distinct
// descriptors never share a key, e.g. "envoy:edge:tenant=acme:plan=free".
// A key longer than limiter.MaxKeyLen keeps its first bytes and ends in
// "#" and the SHA-256 of the whole key in hex; '#' appears nowhere else, so
// a hashed key never equals an unhashed one.
func CounterKey(domain string, entries []*ratelimitv3.RateLimitDescriptor_Entry) string {
	var b strings.Builder
	b.WriteString(KeyPrefix)
	escape(&b, domain)
	for _, e := range entries {
		b.WriteByte(':')
		escape(&b, e.GetKey())
		b.WriteByte('=')
		escape(&b, e.GetValue())
	}
	return shorten(b.String())
}

func escape(b *strings.Builder, s string) {
	const hexDigits = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', ':', '=', '#':
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		default:
			b.WriteByte(c)
		}
	}
}

// shorten hashes the tail of a key longer than limiter.MaxKeyLen.
func shorten(key string) string {
	if len(key) <= limiter.MaxKeyLen {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	cut := limiter.MaxKeyLen - 1 - 2*len(sum)
	for cut > 0 && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return key[:cut] + "#" + hex.EncodeToString(sum[:])
}
