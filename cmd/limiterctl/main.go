// Command limiterctl talks to limiterd from a shell: ask for a decision,
// release a lease, manage policies, inspect and reset keys, list members.
//
//	limiterctl allow tenant:42 --policy uploads
//	limiterctl policy create --name uploads --limit 100 --window 1m --max-concurrent 5
//	limiterctl -o json key get tenant:42
//
// Exit codes: 0 allowed or success, 1 denied with code 122 (rate), 2 denied
// with code 123 (concurrency), 3 usage or local set-up error, 4 the RPC
// failed (the gRPC status code and message go to stderr).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/client"
)

// Exit codes.
const (
	exitOK          = 0 // allowed, or the command succeeded
	exitDenied      = 1 // denied: request rate limit exceeded (122), or another denial
	exitConcurrency = 2 // denied: concurrent requests limit exceeded (123)
	exitUsage       = 3 // bad flags or arguments, unreadable TLS files
	exitRPC         = 4 // the call failed: unreachable, NOT_FOUND, INVALID_ARGUMENT, ...
)

const usage = `limiterctl talks to limiterd.

Usage:
  limiterctl [global flags] COMMAND [ARGS] [flags]

Commands:
  allow KEY [--policy P] [--hits N] [--dry-run] [--path P] [--request-id ID]
                           ask whether KEY may go on (counts hits unless --dry-run)
  release LEASE_ID         end a concurrency lease from allow
  policy list              list policies
  policy get NAME          show one policy
  policy create --name N --limit L --window W [--buckets B] [--max-concurrent C]
                [--lease-ttl T] [--fail-open] [--shadow]
  policy update --name N [any create flag]
                           change the given fields of a policy (others are kept)
  policy delete NAME       delete a policy and its keys' state
  key get KEY [--policy P] show a key's usage
  key reset KEY [--policy P]
                           forget a key's hits and leases
  members                  list the cluster's members

Global flags (before or after the command):
  --addr ADDR       limiterd gRPC address, host:port or unix:///path (env LIMITERD_ADDR; default 127.0.0.1:8081)
  --token TOKEN     bearer token (env LIMITERD_TOKEN; prefer the env: flags show in ps)
  --timeout D       deadline of the whole command (default 5s)
  -o text|json      output: aligned text (default) or protojson of the response
  --ca FILE         verify the server with this CA bundle (implies TLS)
  --cert, --key FILE
                    client certificate and key for mTLS (implies TLS)
  --server-name N   name to verify in the server certificate
  --tls             use TLS with the system roots
  --plaintext       never use TLS, even to a non-loopback address

Without TLS flags, loopback and unix addresses use plaintext and others use
TLS. A token is sent over plaintext only to loopback and unix addresses, or
with --plaintext.

Exit codes:
  0  allowed, or success
  1  denied: request rate limit exceeded (code 122)
  2  denied: concurrent requests limit exceeded (code 123)
  3  usage error (bad flags or arguments, unreadable TLS files)
  4  the RPC failed; the gRPC status code and message are printed to stderr
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// globals are the flags every command accepts.
type globals struct {
	addr, token            string
	timeout                time.Duration
	output                 string
	ca, cert, key, srvName string
	tls, plaintext         bool
	set                    map[string]bool // flags given on the command line
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.addr, "addr", g.addr, "limiterd gRPC `address`")
	fs.StringVar(&g.token, "token", g.token, "bearer `token`")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "command deadline")
	fs.StringVar(&g.output, "o", g.output, "output: text or json")
	fs.StringVar(&g.ca, "ca", g.ca, "CA `file`")
	fs.StringVar(&g.cert, "cert", g.cert, "client certificate `file`")
	fs.StringVar(&g.key, "key", g.key, "client key `file`")
	fs.StringVar(&g.srvName, "server-name", g.srvName, "server `name` to verify")
	fs.BoolVar(&g.tls, "tls", g.tls, "use TLS")
	fs.BoolVar(&g.plaintext, "plaintext", g.plaintext, "never use TLS")
}

// env is what a command runs with.
type env struct {
	g      *globals
	stdout io.Writer
	stderr io.Writer
	name   string // the command, for messages: "policy create"
}

// errUsage is returned by parse after printing the problem.
var errUsage = errors.New("usage")

// run is main without the process: it parses args, runs one command and
// returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	g := &globals{addr: "127.0.0.1:8081", timeout: 5 * time.Second, output: "text", set: map[string]bool{}}
	fs := newFlagSet("limiterctl")
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		return usageExit(err, stdout, stderr)
	}
	fs.Visit(func(f *flag.Flag) { g.set[f.Name] = true })
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	e := &env{g: g, stdout: stdout, stderr: stderr, name: rest[0]}
	cmd, rest := rest[0], rest[1:]
	switch cmd {
	case "allow":
		return e.allow(rest)
	case "release":
		return e.release(rest)
	case "policy", "key":
		if len(rest) == 0 {
			return e.usagef("%s needs a subcommand", cmd)
		}
		e.name = cmd + " " + rest[0]
		switch cmd + " " + rest[0] {
		case "policy list":
			return e.policyList(rest[1:])
		case "policy get":
			return e.policyGet(rest[1:])
		case "policy create":
			return e.policyWrite(rest[1:], false)
		case "policy update":
			return e.policyWrite(rest[1:], true)
		case "policy delete":
			return e.policyDelete(rest[1:])
		case "key get":
			return e.key(rest[1:], false)
		case "key reset":
			return e.key(rest[1:], true)
		}
		return e.usagef("unknown command %q", e.name)
	case "members":
		return e.members(rest)
	case "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	return e.usagef("unknown command %q", cmd)
}

// newFlagSet returns a silent flag set: usageExit prints errors, and help
// is the usage text.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// usageExit turns a flag parsing error into an exit code: -h prints the
// usage on stdout and succeeds, anything else is a usage error.
func usageExit(err error, stdout, stderr io.Writer) int {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "limiterctl: %v\n(run limiterctl -h for help)\n", err)
	return exitUsage
}

// usagef reports a usage error and returns exitUsage.
func (e *env) usagef(format string, args ...any) int {
	fmt.Fprintf(e.stderr, "limiterctl: %s\n(run limiterctl -h for help)\n", fmt.Sprintf(format, args...))
	return exitUsage
}

// parse parses a command's flags (global ones included) wherever they are
// among the arguments, and checks the number of positional arguments
// against synopsis ("KEY", "[NAME]", ""). On failure it has printed the
// problem and returns the exit code.
func (e *env) parse(fs *flag.FlagSet, args []string, synopsis string, minPos, maxPos int) ([]string, int, bool) {
	e.g.register(fs)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageExit(err, e.stdout, e.stderr), false
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	fs.Visit(func(f *flag.Flag) { e.g.set[f.Name] = true })
	if len(pos) < minPos || len(pos) > maxPos {
		got := "no arguments"
		if len(pos) > 0 {
			got = fmt.Sprintf("%q", pos)
		}
		if synopsis != "" {
			synopsis = " " + synopsis
		}
		return nil, e.usagef("usage: limiterctl %s%s [flags] (got %s)", e.name, synopsis, got), false
	}
	if e.g.output != "text" && e.g.output != "json" {
		return nil, e.usagef("-o %q: want text or json", e.g.output), false
	}
	if e.g.timeout <= 0 {
		return nil, e.usagef("--timeout %v: must be positive", e.g.timeout), false
	}
	return pos, exitOK, true
}

// dial returns a client for the global flags and the environment, and the
// command's context.
func (e *env) dial() (*client.Client, context.Context, context.CancelFunc, int) {
	g := e.g
	if v, ok := os.LookupEnv("LIMITERD_ADDR"); ok && v != "" && !g.set["addr"] {
		g.addr = v
	}
	if v, ok := os.LookupEnv("LIMITERD_TOKEN"); ok && !g.set["token"] {
		g.token = v
	}
	opts := []client.Option{client.WithToken(g.token)}
	useTLS := g.tls || g.ca != "" || g.cert != "" || g.key != "" || g.srvName != "" || !client.IsLocal(g.addr)
	if g.plaintext {
		if g.tls || g.ca != "" || g.cert != "" || g.key != "" {
			return nil, nil, nil, e.usagef("--plaintext conflicts with --tls, --ca, --cert and --key")
		}
		useTLS = false
		opts = append(opts, client.WithInsecure())
	}
	if useTLS {
		cfg, err := tlsConfig(g)
		if err != nil {
			return nil, nil, nil, e.usagef("%v", err)
		}
		opts = append(opts, client.WithTLS(cfg))
	}
	c, err := client.New(g.addr, opts...)
	if err != nil {
		return nil, nil, nil, e.usagef("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	return c, ctx, func() { cancel(); c.Close() }, exitOK
}

func tlsConfig(g *globals) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: g.srvName}
	if g.ca != "" {
		pem, err := os.ReadFile(g.ca)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificates", g.ca)
		}
		cfg.RootCAs = pool
	}
	if (g.cert == "") != (g.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if g.cert != "" {
		pair, err := tls.LoadX509KeyPair(g.cert, g.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// rpcError prints a failed call's gRPC status and returns exitRPC.
func (e *env) rpcError(err error) int {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		s := se.GRPCStatus()
		fmt.Fprintf(e.stderr, "limiterctl: %s: %s: %s\n", e.name, s.Code(), s.Message())
	} else {
		fmt.Fprintf(e.stderr, "limiterctl: %s: %v\n", e.name, err)
	}
	return exitRPC
}
