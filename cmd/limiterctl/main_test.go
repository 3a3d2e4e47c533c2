package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/limiterd/limiterd/internal/daemon"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// startDaemon runs a limiterd node on 127.0.0.1:0 with "default", "tiny"
// (1 per minute) and "uploads" (max 1 in flight), and clears the
// environment limiterctl reads.
func startDaemon(t *testing.T) string {
	t.Helper()
	t.Setenv("LIMITERD_ADDR", "")
	t.Setenv("LIMITERD_TOKEN", "")
	cfg := daemon.DefaultConfig()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = ""
	cfg.GossipAddr = "" // a single node, no gossip port
	cfg.DataDir = t.TempDir()
	cfg.Policies = []policy.Policy{
		policy.Default(),
		{Name: "tiny", Limit: 1, Window: time.Minute},
		{Name: "uploads", Limit: 100, Window: time.Minute, MaxConcurrent: 1, LeaseTTL: 30 * time.Second},
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	m := daemon.New(cfg)
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("daemon Run() error = %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m.GRPCAddr()
}

type result struct {
	code           int
	stdout, stderr string
}

// ctl runs limiterctl in-process.
func ctl(args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

// mustCtl runs limiterctl and fails the test unless it exits with want.
func mustCtl(t *testing.T, want int, args ...string) result {
	t.Helper()
	r := ctl(args...)
	if r.code != want {
		t.Fatalf("limiterctl %s = exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	return r
}

// fields maps each "label  value" line of text output to its value.
func fields(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		parts := strings.SplitN(line, "  ", 2)
		if len(parts) == 2 {
			m[parts[0]] = strings.TrimSpace(parts[1])
		}
	}
	return m
}

func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("output %q is not JSON: %v", s, err)
	}
	return m
}

func TestAllow(t *testing.T) {
	addr := startDaemon(t)

	r := mustCtl(t, exitOK, "--addr", addr, "allow", "k")
	f := fields(r.stdout)
	if f["allowed"] != "yes" || f["policy"] != "default" || f["remaining"] != "599 of 600" {
		t.Errorf("allow output = %q, want allowed, 599 of 600", r.stdout)
	}

	r = mustCtl(t, exitOK, "allow", "k", "--dry-run", "--hits", "10", "--addr", addr)
	if f := fields(r.stdout); f["remaining"] != "589 of 600" {
		t.Errorf("dry run output = %q, want 589 of 600", r.stdout)
	}
	r = mustCtl(t, exitOK, "allow", "--hits=3", "k", "--addr", addr)
	if f := fields(r.stdout); f["remaining"] != "596 of 600" {
		t.Errorf("--hits 3 after a dry run: output = %q, want 596 of 600", r.stdout)
	}

	mustCtl(t, exitOK, "--addr", addr, "allow", "--policy", "tiny", "k")
	r = mustCtl(t, exitDenied, "--addr", addr, "allow", "--policy", "tiny", "k", "--path", "/v1/x", "--request-id", "r1")
	f = fields(r.stdout)
	if !strings.HasPrefix(f["allowed"], "no: 122") || f["retry after"] == "" || f["request id"] != "r1" {
		t.Errorf("denied output = %q, want no: 122 with retry after and request id", r.stdout)
	}

	r = mustCtl(t, exitDenied, "--addr", addr, "-o", "json", "allow", "--policy", "tiny", "k")
	j := decodeJSON(t, r.stdout)
	if j["allowed"] != false || j["code"] != 122.0 {
		t.Errorf("json = %v, want allowed false, code 122", j)
	}
	if body, _ := j["error"].(map[string]any)["body"].(string); !strings.Contains(body, `"code":122`) {
		t.Errorf("json error.body = %q, want the seed's body", body)
	}

	mustCtl(t, exitOK, "--addr", addr, "allow", "--policy", "uploads", "u")
	r = mustCtl(t, exitConcurrency, "--addr", addr, "allow", "--policy", "uploads", "u")
	if f := fields(r.stdout); !strings.HasPrefix(f["allowed"], "no: 123") || f["in flight"] != "1 of 1" {
		t.Errorf("123 output = %q, want no: 123, in flight 1 of 1", r.stdout)
	}

	// "--" ends the flags: a key may start with a dash.
	mustCtl(t, exitOK, "--addr", addr, "allow", "--", "-dash")
}

func TestRelease(t *testing.T) {
	addr := startDaemon(t)
	r := mustCtl(t, exitOK, "--addr", addr, "-o", "json", "allow", "--policy", "uploads", "u")
	lease, _ := decodeJSON(t, r.stdout)["leaseId"].(string)
	if lease == "" {
		t.Fatalf("allow json = %s, want a leaseId", r.stdout)
	}
	r = mustCtl(t, exitOK, "--addr", addr, "release", lease)
	if f := fields(r.stdout); f["released"] != "yes" || f["in flight"] != "0" {
		t.Errorf("release output = %q, want released, in flight 0", r.stdout)
	}
	r = mustCtl(t, exitRPC, "--addr", addr, "release", lease)
	if !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("second release stderr = %q, want NotFound", r.stderr)
	}
	mustCtl(t, exitOK, "--addr", addr, "allow", "--policy", "uploads", "u") // the slot is free again
}

func TestPolicy(t *testing.T) {
	addr := startDaemon(t)

	r := mustCtl(t, exitOK, "--addr", addr, "policy", "create", "--name", "api", "--limit", "50", "--window", "30s", "--max-concurrent", "3", "--lease-ttl", "10s", "--shadow")
	if !strings.Contains(r.stdout, "NAME") || !regexpLine(r.stdout, "api", "50", "30s", "60", "3", "10s", "false", "true") {
		t.Errorf("create output = %q, want the api row", r.stdout)
	}
	r = mustCtl(t, exitRPC, "--addr", addr, "policy", "create", "--name", "api", "--limit", "50", "--window", "30s")
	if !strings.Contains(r.stderr, "AlreadyExists") {
		t.Errorf("create twice stderr = %q, want AlreadyExists", r.stderr)
	}
	r = mustCtl(t, exitRPC, "--addr", addr, "policy", "create", "--name", "bad", "--limit", "50", "--window", "100h")
	if !strings.Contains(r.stderr, "InvalidArgument") || !strings.Contains(r.stderr, "window") {
		t.Errorf("bad window stderr = %q, want InvalidArgument naming window", r.stderr)
	}

	r = mustCtl(t, exitOK, "--addr", addr, "policy", "update", "api", "--limit", "200", "--fail-open")
	if !regexpLine(r.stdout, "api", "200", "30s", "60", "3", "10s", "true", "true") {
		t.Errorf("update output = %q, want limit 200 and fail_open, the rest kept", r.stdout)
	}
	r = mustCtl(t, exitOK, "--addr", addr, "policy", "get", "api")
	if !regexpLine(r.stdout, "api", "200", "30s") {
		t.Errorf("get output = %q, want the updated api", r.stdout)
	}
	r = mustCtl(t, exitOK, "--addr", addr, "-o", "json", "policy", "get", "--name", "api")
	if p := decodeJSON(t, r.stdout)["policy"].(map[string]any); p["limit"] != "200" || p["window"] != "30s" {
		t.Errorf("get json = %s, want limit 200, window 30s", r.stdout)
	}

	r = mustCtl(t, exitOK, "--addr", addr, "policy", "list")
	for _, name := range []string{"api", "default", "tiny", "uploads"} {
		if !regexpLine(r.stdout, name) {
			t.Errorf("list output = %q, want %s", r.stdout, name)
		}
	}
	r = mustCtl(t, exitOK, "--addr", addr, "-o", "json", "policy", "list")
	if ps := decodeJSON(t, r.stdout)["policies"].([]any); len(ps) != 4 {
		t.Errorf("list json has %d policies, want 4", len(ps))
	}

	mustCtl(t, exitOK, "--addr", addr, "policy", "delete", "api")
	r = mustCtl(t, exitRPC, "--addr", addr, "policy", "get", "api")
	if !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("get after delete stderr = %q, want NotFound", r.stderr)
	}
	r = mustCtl(t, exitRPC, "--addr", addr, "policy", "update", "--name", "api", "--limit", "1")
	if !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("update after delete stderr = %q, want NotFound", r.stderr)
	}
	mustCtl(t, exitRPC, "--addr", addr, "policy", "delete", "api")
}

// regexpLine reports whether some line of out has exactly these leading
// whitespace-separated columns.
func regexpLine(out string, cols ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < len(cols) {
			continue
		}
		match := true
		for i, c := range cols {
			if f[i] != c {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

func TestKey(t *testing.T) {
	addr := startDaemon(t)
	mustCtl(t, exitOK, "--addr", addr, "allow", "tenant:42", "--hits", "2")
	mustCtl(t, exitOK, "--addr", addr, "allow", "tenant:42", "--policy", "uploads")

	r := mustCtl(t, exitOK, "--addr", addr, "key", "get", "tenant:42")
	if f := fields(r.stdout); f["used"] != "2 of 600" || f["remaining"] != "598" || f["policy"] != "default" {
		t.Errorf("key get output = %q, want used 2 of 600", r.stdout)
	}
	r = mustCtl(t, exitOK, "--addr", addr, "-o", "json", "key", "get", "tenant:42", "--policy", "uploads")
	if k := decodeJSON(t, r.stdout)["key"].(map[string]any); k["inFlight"] != "1" || k["maxConcurrent"] != "1" {
		t.Errorf("key get json = %s, want inFlight 1 of 1", r.stdout)
	}
	r = mustCtl(t, exitOK, "--addr", addr, "key", "get", "--policy", "uploads", "tenant:42")
	if f := fields(r.stdout); f["in flight"] != "1 of 1" {
		t.Errorf("key get output = %q, want in flight 1 of 1", r.stdout)
	}

	mustCtl(t, exitOK, "--addr", addr, "key", "reset", "tenant:42")
	r = mustCtl(t, exitRPC, "--addr", addr, "key", "get", "tenant:42")
	if !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("key get after reset stderr = %q, want NotFound", r.stderr)
	}
	mustCtl(t, exitRPC, "--addr", addr, "key", "reset", "tenant:42")
	mustCtl(t, exitOK, "--addr", addr, "key", "reset", "tenant:42", "--policy", "uploads")
	mustCtl(t, exitOK, "--addr", addr, "allow", "tenant:42", "--policy", "uploads") // the lease is gone
}

func TestMembers(t *testing.T) {
	addr := startDaemon(t)
	r := mustCtl(t, exitOK, "--addr", addr, "members")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[1], "alive") || !strings.HasSuffix(lines[1], "*") {
		t.Errorf("members output = %q, want a header and one alive self row", r.stdout)
	}
	r = mustCtl(t, exitOK, "--addr", addr, "-o", "json", "members")
	if ms := decodeJSON(t, r.stdout)["members"].([]any); len(ms) != 1 {
		t.Errorf("members json = %s, want one member", r.stdout)
	}
}

func TestUsageErrors(t *testing.T) {
	addr := startDaemon(t)
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no command", nil, "Usage"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"allow without key", []string{"allow"}, "usage: limiterctl allow KEY [flags] (got no arguments)"},
		{"allow with two keys", []string{"allow", "a", "b"}, `usage: limiterctl allow KEY [flags] (got ["a" "b"])`},
		{"unknown flag", []string{"allow", "k", "--bogus"}, "bogus"},
		{"bad hits", []string{"allow", "k", "--hits", "many"}, "hits"},
		{"bad output", []string{"-o", "yaml", "members"}, `-o "yaml"`},
		{"bad timeout", []string{"--timeout", "0s", "members"}, "--timeout"},
		{"policy without subcommand", []string{"policy"}, "policy needs a subcommand"},
		{"unknown policy subcommand", []string{"policy", "frob"}, `unknown command "policy frob"`},
		{"key without subcommand", []string{"key"}, "key needs a subcommand"},
		{"policy create without name", []string{"policy", "create", "--limit", "5"}, "needs a policy name"},
		{"policy get with two names", []string{"policy", "get", "a", "--name", "b"}, "given twice"},
		{"members with an argument", []string{"members", "x"}, `usage: limiterctl members [flags] (got ["x"])`},
		{"cert without key", []string{"--cert", "c.pem", "members"}, "--cert and --key go together"},
		{"missing ca file", []string{"--ca", "/nonexistent/ca.pem", "members"}, "--ca"},
		{"plaintext and tls", []string{"--plaintext", "--tls", "members"}, "--plaintext conflicts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustCtl(t, exitUsage, append([]string{"--addr", addr}, tt.args...)...)
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr = %q, want %q", r.stderr, tt.want)
			}
		})
	}
	for _, args := range [][]string{{"-h"}, {"help"}, {"allow", "-h"}} {
		r := mustCtl(t, exitOK, args...)
		if !strings.Contains(r.stdout, "Exit codes:") {
			t.Errorf("limiterctl %v stdout = %q, want the usage", args, r.stdout)
		}
	}
}

func TestRPCErrors(t *testing.T) {
	addr := startDaemon(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unreachable", []string{"--addr", dead, "allow", "k"}, "allow: Unavailable: "},
		{"unknown policy", []string{"--addr", addr, "allow", "k", "--policy", "nope"}, "allow: NotFound: "},
		{"bad key", []string{"--addr", addr, "allow", strings.Repeat("x", 513)}, "allow: InvalidArgument: "},
		{"bad lease", []string{"--addr", addr, "release", "garbage"}, "release: InvalidArgument: "},
		{"delete default", []string{"--addr", addr, "policy", "delete", "default"}, "policy delete: InvalidArgument: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustCtl(t, exitRPC, tt.args...)
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr = %q, want %q", r.stderr, tt.want)
			}
		})
	}
}

// fakeAdmin records the authorization metadata of ListMembers.
type fakeAdmin struct {
	limiterv1.UnimplementedAdminServer
	auth chan string
}

func (f *fakeAdmin) ListMembers(ctx context.Context, _ *limiterv1.ListMembersRequest) (*limiterv1.ListMembersResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := ""
	if a := md.Get("authorization"); len(a) > 0 {
		v = a[0]
	}
	f.auth <- v
	return &limiterv1.ListMembersResponse{Members: []*limiterv1.Member{{Name: "fake", State: "alive", Self: true}}}, nil
}

func TestEnvironment(t *testing.T) {
	addr := startDaemon(t) // clears LIMITERD_*
	f := &fakeAdmin{auth: make(chan string, 1)}
	g := grpc.NewServer()
	limiterv1.RegisterAdminServer(g, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	fake := ln.Addr().String()

	t.Setenv("LIMITERD_ADDR", fake)
	t.Setenv("LIMITERD_TOKEN", "from-env")
	r := mustCtl(t, exitOK, "members")
	if !strings.Contains(r.stdout, "fake") || <-f.auth != "Bearer from-env" {
		t.Errorf("members with LIMITERD_ADDR and LIMITERD_TOKEN: output %q, want the fake's member and the env token", r.stdout)
	}
	mustCtl(t, exitOK, "members", "--token", "from-flag")
	if got := <-f.auth; got != "Bearer from-flag" {
		t.Errorf("authorization = %q, want the --token flag to win", got)
	}
	r = mustCtl(t, exitOK, "members", "--addr", addr)
	if strings.Contains(r.stdout, "fake") {
		t.Errorf("members --addr %s output = %q, want the flag to win over LIMITERD_ADDR", addr, r.stdout)
	}
}
