package main

import (
	"flag"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/limiterd/limiterd/client"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// allow: allow KEY [--policy P] [--hits N] [--dry-run] [--path P] [--request-id ID].
func (e *env) allow(args []string) int {
	fs := newFlagSet("allow")
	pol := fs.String("policy", "", "policy name (default \"default\")")
	hits := fs.Int64("hits", 0, "hits to count (0 means 1)")
	dry := fs.Bool("dry-run", false, "answer as if counted, change nothing")
	path := fs.String("path", "", "request path for the error body")
	reqID := fs.String("request-id", "", "request id for the error body")
	pos, code, ok := e.parse(fs, args, "KEY", 1, 1)
	if !ok {
		return code
	}
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()
	opts := []client.AllowOption{client.Policy(*pol), client.Hits(*hits), client.Path(*path), client.RequestID(*reqID)}
	if *dry {
		opts = append(opts, client.DryRun())
	}
	d, err := c.Allow(ctx, pos[0], opts...)
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(d.Response)
	} else {
		e.printDecision(d)
	}
	switch {
	case d.Allowed:
		return exitOK
	case d.Code == client.CodeConcurrency:
		return exitConcurrency
	}
	return exitDenied
}

// release: release LEASE_ID.
func (e *env) release(args []string) int {
	pos, code, ok := e.parse(newFlagSet("release"), args, "LEASE_ID", 1, 1)
	if !ok {
		return code
	}
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()
	res, err := c.Limiter().Release(ctx, &limiterv1.ReleaseRequest{LeaseId: pos[0]})
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(res)
		return exitOK
	}
	e.pairs("released", "yes", "in flight", itoa(res.GetInFlight()))
	return exitOK
}

// policyList: policy list.
func (e *env) policyList(args []string) int {
	if _, code, ok := e.parse(newFlagSet("policy list"), args, "", 0, 0); !ok {
		return code
	}
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()
	res, err := c.Admin().ListPolicies(ctx, &limiterv1.ListPoliciesRequest{})
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(res)
		return exitOK
	}
	e.printPolicies(res.GetPolicies()...)
	return exitOK
}

// policyGet: policy get NAME (or --name NAME).
func (e *env) policyGet(args []string) int {
	fs := newFlagSet("policy get")
	name := fs.String("name", "", "policy name")
	pos, code, ok := e.parse(fs, args, "[NAME]", 0, 1)
	if !ok {
		return code
	}
	if *name, ok = e.nameArg(*name, pos); !ok {
		return exitUsage
	}
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()
	res, err := c.Admin().GetPolicy(ctx, &limiterv1.GetPolicyRequest{Name: *name})
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(res)
		return exitOK
	}
	e.printPolicies(res.GetPolicy())
	return exitOK
}

// policyDelete: policy delete NAME (or --name NAME).
func (e *env) policyDelete(args []string) int {
	fs := newFlagSet("policy delete")
	name := fs.String("name", "", "policy name")
	pos, code, ok := e.parse(fs, args, "[NAME]", 0, 1)
	if !ok {
		return code
	}
	if *name, ok = e.nameArg(*name, pos); !ok {
		return exitUsage
	}
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()
	res, err := c.Admin().DeletePolicy(ctx, &limiterv1.DeletePolicyRequest{Name: *name})
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(res)
		return exitOK
	}
	e.pairs("deleted", *name)
	return exitOK
}

// policyWrite: policy create|update --name N [--limit L] [--window W] ...
// An update reads the policy and changes only the fields given, so
// `policy update --name uploads --limit 200` keeps the window (read, then
// replace: a concurrent update in between is overwritten).
func (e *env) policyWrite(args []string, update bool) int {
	fs := newFlagSet(e.name)
	name := fs.String("name", "", "policy name")
	limit := fs.Int64("limit", 0, "hits per window")
	win := fs.Duration("window", 0, "window, 1s..24h")
	buckets := fs.Int("buckets", 0, "resolution steps per window (0 means 60)")
	maxConc := fs.Int64("max-concurrent", 0, "requests in flight per key (0 = no cap)")
	ttl := fs.Duration("lease-ttl", 0, "unreleased lease lifetime (0 means 60s)")
	failOpen := fs.Bool("fail-open", false, "allow (degraded) when the key's owner is unreachable")
	shadow := fs.Bool("shadow", false, "count and report, but always allow")
	pos, code, ok := e.parse(fs, args, "[NAME]", 0, 1)
	if !ok {
		return code
	}
	if *name, ok = e.nameArg(*name, pos); !ok {
		return exitUsage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()

	p := &limiterv1.Policy{Name: *name}
	if update {
		cur, err := c.Admin().GetPolicy(ctx, &limiterv1.GetPolicyRequest{Name: *name})
		if err != nil {
			return e.rpcError(err)
		}
		p = cur.GetPolicy()
	}
	if !update || given["limit"] {
		p.Limit = *limit
	}
	if !update || given["window"] {
		p.Window = nil
		if given["window"] {
			p.Window = durationpb.New(*win)
		}
	}
	if !update || given["buckets"] {
		p.Buckets = int32(*buckets)
	}
	if !update || given["max-concurrent"] {
		p.MaxConcurrent = *maxConc
	}
	if !update || given["lease-ttl"] {
		p.LeaseTtl = durationpb.New(*ttl)
	}
	if !update || given["fail-open"] {
		p.FailOpen = *failOpen
	}
	if !update || given["shadow"] {
		p.Shadow = *shadow
	}

	var out interface {
		proto.Message
		GetPolicy() *limiterv1.Policy
	}
	var err error
	if update {
		out, err = c.Admin().UpdatePolicy(ctx, &limiterv1.UpdatePolicyRequest{Policy: p})
	} else {
		out, err = c.Admin().CreatePolicy(ctx, &limiterv1.CreatePolicyRequest{Policy: p})
	}
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(out)
		return exitOK
	}
	e.printPolicies(out.GetPolicy())
	return exitOK
}

// key: key get|reset KEY [--policy P].
func (e *env) key(args []string, reset bool) int {
	fs := newFlagSet(e.name)
	pol := fs.String("policy", "", "policy name (default \"default\")")
	pos, code, ok := e.parse(fs, args, "KEY", 1, 1)
	if !ok {
		return code
	}
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()
	if reset {
		res, err := c.Admin().ResetKey(ctx, &limiterv1.ResetKeyRequest{Policy: *pol, Key: pos[0]})
		if err != nil {
			return e.rpcError(err)
		}
		if e.g.output == "json" {
			e.json(res)
			return exitOK
		}
		e.pairs("reset", pos[0], "policy", orDefault(*pol))
		return exitOK
	}
	res, err := c.Admin().GetKey(ctx, &limiterv1.GetKeyRequest{Policy: *pol, Key: pos[0]})
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(res)
		return exitOK
	}
	k := res.GetKey()
	kv := []string{
		"key", k.GetKey(),
		"policy", k.GetPolicy(),
		"used", itoa(k.GetUsed()) + " of " + itoa(k.GetLimit()),
		"remaining", itoa(k.GetRemaining()),
		"reset after", dur(k.GetResetAfter().AsDuration()),
	}
	if k.GetMaxConcurrent() > 0 {
		kv = append(kv, "in flight", itoa(k.GetInFlight())+" of "+itoa(k.GetMaxConcurrent()))
	}
	if k.GetOwner() != "" {
		kv = append(kv, "owner", k.GetOwner())
	}
	e.pairs(kv...)
	return exitOK
}

// members: members.
func (e *env) members(args []string) int {
	if _, code, ok := e.parse(newFlagSet("members"), args, "", 0, 0); !ok {
		return code
	}
	c, ctx, done, code := e.dial()
	if c == nil {
		return code
	}
	defer done()
	res, err := c.Admin().ListMembers(ctx, &limiterv1.ListMembersRequest{})
	if err != nil {
		return e.rpcError(err)
	}
	if e.g.output == "json" {
		e.json(res)
		return exitOK
	}
	rows := [][]string{{"NAME", "STATE", "GRPC", "GOSSIP", "SELF"}}
	for _, m := range res.GetMembers() {
		self := ""
		if m.GetSelf() {
			self = "*"
		}
		rows = append(rows, []string{m.GetName(), m.GetState(), dash(m.GetGrpcAddr()), dash(m.GetGossipAddr()), self})
	}
	e.table(rows)
	return exitOK
}

// nameArg picks the policy name from --name or the positional argument.
func (e *env) nameArg(flagName string, pos []string) (string, bool) {
	switch {
	case len(pos) == 1 && flagName != "" && pos[0] != flagName:
		e.usagef("%s: the name is given twice (%q and --name %q)", e.name, pos[0], flagName)
		return "", false
	case len(pos) == 1:
		return pos[0], true
	case flagName == "":
		e.usagef("%s needs a policy name (NAME or --name)", e.name)
		return "", false
	}
	return flagName, true
}

func orDefault(p string) string {
	if p == "" {
		return "default"
	}
	return p
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// dur prints a duration to the millisecond.
func dur(d time.Duration) string { return d.Round(time.Millisecond).String() }
