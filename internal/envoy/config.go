package envoy

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/limiterd/limiterd/internal/policy"
)

// Bounds of a Config; ParseConfig rejects anything beyond them.
const (
	// MaxDepth is the deepest nesting of descriptors, i.e. the most entries
	// a request descriptor can match.
	MaxDepth = 16
	// MaxEntries is the most descriptor entries in a whole Config (YAML
	// aliases count once per use).
	MaxEntries = 10000
	// MaxNameLen bounds a domain, a descriptor key and a descriptor value
	// in the config, in bytes.
	MaxNameLen = 256
)

// Config maps Envoy rate limit descriptors to limiterd policies. It is the
// "envoy:" section of the limiterd YAML file:
//
//	envoy:
//	  domains:
//	    - domain: edge
//	      descriptors:
//	        - key: remote_address   # every distinct value is its own counter
//	          policy: default
//	        - key: path
//	          value: /upload        # only this value
//	          policy: uploads
//	        - key: path
//	          value: /api/*         # values with this prefix, each its own counter
//	          policy: api
//	        - key: path
//	          value: /healthz
//	          unlimited: true       # exempt from the entry above
//	        - key: tenant
//	          descriptors:          # matches the descriptor (tenant=*, plan=free)
//	            - key: plan
//	              value: free
//	              policy: free-tier
//
// The zero Config has no domains: every descriptor is unmatched, hence
// allowed. A Config is a value; Service never changes it.
type Config struct {
	// Domains are looked up by RateLimitRequest.domain, exactly.
	Domains []Domain
}

// Domain is the descriptor tree of one Envoy rate limit domain.
type Domain struct {
	// Name is the RateLimitRequest.domain it serves: 1..MaxNameLen bytes,
	// unique in a Config.
	Name string
	// Descriptors match the first entry of a request descriptor.
	Descriptors []Descriptor
}

// Descriptor matches one entry of a request descriptor; its Descriptors
// match the entry after it.
type Descriptor struct {
	// Key must equal the entry's key. Required.
	Key string
	// Value selects the entry's values. Empty matches any value; a value
	// ending in "*" matches every value with that prefix ("/api/*"); any
	// other value matches only itself. An exact value wins over a prefix,
	// a longer prefix over a shorter one, and a prefix over an empty Value.
	Value string
	// Policy is the limiterd policy of request descriptors that end at this
	// entry. Empty: they are not limited.
	Policy string
	// Unlimited says on purpose that descriptors ending here are not
	// limited (to exempt a value from a broader entry). It excludes Policy.
	Unlimited bool
	// Descriptors match the next entry of the request descriptor.
	Descriptors []Descriptor
}

// ParseConfig reads the "envoy:" section of a limiterd YAML file; data is
// the whole file and every other top-level key is ignored. A file without
// the section gives the zero Config. Errors wrap ErrInvalidConfig and name
// the line, the domain and entry, and the field. Policies are not looked up
// here: call Validate or ValidatePolicies once the policies are known.
func ParseConfig(data []byte) (Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return Config{}, nil
	}
	p := &parser{}
	top := p.deref(doc.Content[0])
	if isNull(top) {
		return Config{}, nil
	}
	if top.Kind != yaml.MappingNode {
		return Config{}, p.errf(top, "file", "is not a YAML mapping")
	}
	var section *yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		if k := top.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "envoy" {
			if section != nil {
				return Config{}, p.errf(k, "envoy", "defined twice")
			}
			section = top.Content[i+1]
		}
	}
	if section == nil {
		return Config{}, nil
	}
	cfg, err := p.config(section)
	if err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks that every policy the Config names exists. Errors wrap
// ErrInvalidConfig and name the entry.
func (c Config) Validate(policyExists func(name string) bool) error {
	return c.walk(func(path string, d Descriptor) error {
		if d.Policy != "" && !policyExists(d.Policy) {
			return fmt.Errorf("%w: %s: policy: %q does not exist", ErrInvalidConfig, path, d.Policy)
		}
		return nil
	})
}

// ValidatePolicies is Validate that also refuses policies with a
// concurrency cap (max_concurrent > 0), which the Envoy API cannot release;
// such errors also wrap ErrConcurrencyPolicy. (*limiter.Limiter).Policy has
// the signature of lookup.
func (c Config) ValidatePolicies(lookup func(name string) (policy.Policy, bool)) error {
	return c.walk(func(path string, d Descriptor) error {
		if d.Policy == "" {
			return nil
		}
		p, ok := lookup(d.Policy)
		switch {
		case !ok:
			return fmt.Errorf("%w: %s: policy: %q does not exist", ErrInvalidConfig, path, d.Policy)
		case p.MaxConcurrent > 0:
			return fmt.Errorf("%w: %s: policy: %q has max_concurrent %d: %w", ErrInvalidConfig, path, d.Policy, p.MaxConcurrent, ErrConcurrencyPolicy)
		}
		return nil
	})
}

// Policies returns the names of the policies the Config uses, each once, in
// the order they first appear.
func (c Config) Policies() []string {
	var out []string
	seen := map[string]bool{}
	_ = c.walk(func(_ string, d Descriptor) error {
		if d.Policy != "" && !seen[d.Policy] {
			seen[d.Policy] = true
			out = append(out, d.Policy)
		}
		return nil
	})
	return out
}

// walk calls fn for every descriptor entry, depth first, with its path.
func (c Config) walk(fn func(path string, d Descriptor) error) error {
	var rec func(prefix string, ds []Descriptor) error
	rec = func(prefix string, ds []Descriptor) error {
		for i, d := range ds {
			path := prefix + ".descriptors[" + strconv.Itoa(i) + "](" + entryName(d.Key, d.Value) + ")"
			if err := fn(path, d); err != nil {
				return err
			}
			if err := rec(path, d.Descriptors); err != nil {
				return err
			}
		}
		return nil
	}
	for i, dom := range c.Domains {
		if err := rec(domainPath(i, dom.Name), dom.Descriptors); err != nil {
			return err
		}
	}
	return nil
}

func domainPath(i int, name string) string {
	return "envoy.domains[" + strconv.Itoa(i) + "](" + name + ")"
}

func entryName(key, value string) string {
	if value == "" {
		return key
	}
	return key + "=" + value
}

// parser turns the YAML nodes of the envoy section into a Config, checking
// field names, types and bounds as it goes.
type parser struct {
	entries int
}

func (p *parser) errf(n *yaml.Node, path, format string, args ...any) error {
	return fmt.Errorf("%w: line %d: %s: %s", ErrInvalidConfig, n.Line, path, fmt.Sprintf(format, args...))
}

// deref follows aliases to the node they name.
func (p *parser) deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 64; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// fields checks that n is a mapping with only the known keys, each once,
// and returns the value node of each key present.
func (p *parser) fields(n *yaml.Node, path string, known ...string) (map[string]*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, p.errf(n, path, "want a mapping")
	}
	out := make(map[string]*yaml.Node, len(known))
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode {
			return nil, p.errf(k, path, "field names must be strings")
		}
		name := k.Value
		ok := false
		for _, f := range known {
			ok = ok || f == name
		}
		switch {
		case !ok:
			return nil, p.errf(k, path, "unknown field %q (want one of %s)", name, strings.Join(known, ", "))
		case out[name] != nil:
			return nil, p.errf(k, path+"."+name, "defined twice")
		}
		out[name] = p.deref(n.Content[i+1])
	}
	return out, nil
}

// str reads an optional scalar as text; null and absent are "".
func (p *parser) str(n *yaml.Node, path string) (string, error) {
	if isNull(n) {
		return "", nil
	}
	if n.Kind != yaml.ScalarNode {
		return "", p.errf(n, path, "want a string")
	}
	if len(n.Value) > MaxNameLen {
		return "", p.errf(n, path, "%d bytes, at most %d", len(n.Value), MaxNameLen)
	}
	return n.Value, nil
}

// seq reads an optional sequence; null and absent are empty.
func (p *parser) seq(n *yaml.Node, path string) ([]*yaml.Node, error) {
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, p.errf(n, path, "want a list")
	}
	return n.Content, nil
}

func (p *parser) config(n *yaml.Node) (Config, error) {
	n = p.deref(n)
	if isNull(n) {
		return Config{}, nil
	}
	f, err := p.fields(n, "envoy", "domains")
	if err != nil {
		return Config{}, err
	}
	items, err := p.seq(f["domains"], "envoy.domains")
	if err != nil {
		return Config{}, err
	}
	var cfg Config
	seen := map[string]int{}
	for i, item := range items {
		item = p.deref(item)
		path := "envoy.domains[" + strconv.Itoa(i) + "]"
		df, err := p.fields(item, path, "domain", "descriptors")
		if err != nil {
			return Config{}, err
		}
		name, err := p.str(df["domain"], path+".domain")
		if err != nil {
			return Config{}, err
		}
		if name == "" {
			return Config{}, p.errf(item, path+".domain", "missing")
		}
		if j, dup := seen[name]; dup {
			return Config{}, p.errf(item, path+".domain", "%q is also envoy.domains[%d]", name, j)
		}
		seen[name] = i
		ds, err := p.descriptors(df["descriptors"], domainPath(i, name), 1)
		if err != nil {
			return Config{}, err
		}
		cfg.Domains = append(cfg.Domains, Domain{Name: name, Descriptors: ds})
	}
	return cfg, nil
}

func (p *parser) descriptors(n *yaml.Node, parent string, depth int) ([]Descriptor, error) {
	items, err := p.seq(n, parent+".descriptors")
	if err != nil {
		return nil, err
	}
	if len(items) > 0 && depth > MaxDepth {
		return nil, p.errf(n, parent+".descriptors", "nested deeper than %d", MaxDepth)
	}
	var out []Descriptor
	seen := map[string]int{}
	for i, item := range items {
		item = p.deref(item)
		if p.entries++; p.entries > MaxEntries {
			return nil, p.errf(item, parent, "more than %d descriptor entries in the config", MaxEntries)
		}
		path := parent + ".descriptors[" + strconv.Itoa(i) + "]"
		f, err := p.fields(item, path, "key", "value", "policy", "unlimited", "descriptors")
		if err != nil {
			return nil, err
		}
		var d Descriptor
		if d.Key, err = p.str(f["key"], path+".key"); err != nil {
			return nil, err
		}
		if d.Key == "" {
			return nil, p.errf(item, path+".key", "missing")
		}
		if d.Value, err = p.str(f["value"], path+".value"); err != nil {
			return nil, err
		}
		path = path + "(" + entryName(d.Key, d.Value) + ")"
		if d.Policy, err = p.str(f["policy"], path+".policy"); err != nil {
			return nil, err
		}
		if u := f["unlimited"]; !isNull(u) {
			if u.Kind != yaml.ScalarNode || u.Decode(&d.Unlimited) != nil {
				return nil, p.errf(u, path+".unlimited", "want true or false")
			}
		}
		id := d.Key + "\x00" + d.Value
		if j, dup := seen[id]; dup {
			return nil, p.errf(item, path, "same key and value as %s.descriptors[%d]", parent, j)
		}
		seen[id] = i
		if d.Descriptors, err = p.descriptors(f["descriptors"], path, depth+1); err != nil {
			return nil, err
		}
		switch {
		case d.Unlimited && d.Policy != "":
			return nil, p.errf(item, path+".unlimited", "excludes policy %q", d.Policy)
		case d.Policy == "" && !d.Unlimited && len(d.Descriptors) == 0:
			return nil, p.errf(item, path, "needs a policy, nested descriptors, or unlimited: true")
		}
		out = append(out, d)
	}
	return out, nil
}
