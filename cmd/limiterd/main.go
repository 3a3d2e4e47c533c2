// Command limiterd is the rate-limiting service: gateways ask it over gRPC,
// once per request, whether a key may go on.
//
//	go run ./cmd/limiterd --config policies.yaml
//
// It only turns flags into a daemon.Config, runs it, and on SIGINT or
// SIGTERM stops accepting calls, finishes the ones in flight, flushes state
// and exits.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/limiterd/limiterd/internal/auth"
	"github.com/limiterd/limiterd/internal/daemon"
	"github.com/limiterd/limiterd/internal/envoy"
	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "limiterd:", err)
		}
		os.Exit(1)
	}
}

// run parses args, serves until SIGINT/SIGTERM or ctx ends, then shuts down.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	tuneGC(cfg.GCPercent, cfg.MemoryLimitMB)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	m := daemon.New(cfg)
	if err := m.Run(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	cfg.Logger.Info("shutting down: draining calls and flushing state")
	if err := m.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	cfg.Logger.Info("stopped")
	return nil
}

// parseFlags turns the command line into a daemon.Config.
func parseFlags(args []string, stderr io.Writer) (daemon.Config, error) {
	cfg := daemon.DefaultConfig()
	fs := flag.NewFlagSet("limiterd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC listener `address`; unix:///path/to.sock for a sidecar")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "`address` of /metrics, /healthz and /readyz (empty disables)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`directory` of the bbolt file")
	configFile := fs.String("config", "", "YAML policies `file`")
	syncMode := fs.String("sync", "batch", "durability: batch (write-behind every --flush-interval) or always (answer after fsync, group commit)")
	fs.DurationVar(&cfg.FlushInterval, "flush-interval", cfg.FlushInterval, "write-behind `interval`; a kill -9 forgets at most this much of hits")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long shutdown waits for in-flight calls")
	fs.IntVar(&cfg.MaxInFlight, "max-in-flight", 8192, "calls answered at once; beyond it UNAVAILABLE (overloaded) at once")
	fs.IntVar(&cfg.MaxKeys, "max-keys", cfg.MaxKeys, "in-memory budget in `keys` (~420 bytes each); beyond it keys are paged out to bbolt, never dropped (0: no budget)")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve /debug/pprof/ on --http-addr")
	fs.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "cluster member `name`; unique")
	fs.StringVar(&cfg.GossipAddr, "gossip-addr", cfg.GossipAddr, "memberlist bind `address`; empty runs a single node without gossip")
	fs.StringVar(&cfg.AdvertiseAddr, "advertise-addr", "", "gossip `address` peers use to reach this node, when it differs from --gossip-addr")
	join := fs.String("join", "", "comma-separated gossip `addresses` of existing members")
	fs.IntVar(&cfg.Replicas, "replicas", cfg.Replicas, "nodes holding each key, owner included")
	fs.DurationVar(&cfg.ReplicationInterval, "replication-interval", cfg.ReplicationInterval, "how often owners send changed keys to replicas")
	fs.StringVar(&cfg.PeerAddr, "peer-addr", "", "peer wire listener `address` (forwarded calls and replication between nodes); empty: the --grpc-addr host, any free port; off: over gRPC")
	gossipKeyFile := fs.String("gossip-key-file", "", "`file` with the gossip encryption key (16, 24 or 32 bytes, raw or base64)")
	authFile := fs.String("auth-file", "", "YAML `file` of bearer-token hashes, roles and key prefixes; turns auth on")
	tlsCert := fs.String("tls-cert", "", "PEM certificate `file` for the gRPC port")
	tlsKey := fs.String("tls-key", "", "PEM private key `file` for --tls-cert")
	tlsClientCA := fs.String("tls-client-ca", "", "PEM CA `file`: clients must present a certificate it signed (mTLS)")
	peerCA := fs.String("peer-ca", "", "PEM CA `file` that signed the other nodes' certificates (dial peers over TLS)")
	peerSecretFile := fs.String("peer-secret-file", "", "`file` holding the cluster secret this node presents to its peers")
	gogc := fs.Int("gogc", 400, "garbage collector target percentage, when the GOGC environment variable is unset (Go's default is 100)")
	memLimitMB := fs.Int64("memory-limit-mb", 2048, "soft memory limit in MiB for the garbage collector, when GOMEMLIMIT is unset (0: none)")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	logFormat := fs.String("log-format", "text", "log `format`: text or json")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return cfg, fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch *logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, hopts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(stderr, hopts))
	default:
		return cfg, fmt.Errorf("--log-format: %q is not text or json", *logFormat)
	}
	switch *syncMode {
	case "batch":
	case "always":
		cfg.SyncAlways = true
	default:
		return cfg, fmt.Errorf("--sync: %q is not batch or always", *syncMode)
	}
	if cfg.FlushInterval <= 0 {
		return cfg, fmt.Errorf("--flush-interval: %v must be positive", cfg.FlushInterval)
	}
	if *join != "" {
		for _, a := range strings.Split(*join, ",") {
			if a = strings.TrimSpace(a); a != "" {
				cfg.Join = append(cfg.Join, a)
			}
		}
		if cfg.GossipAddr == "" {
			return cfg, fmt.Errorf("--join needs --gossip-addr")
		}
	}
	if cfg.MaxKeys < 0 {
		return cfg, fmt.Errorf("--max-keys: %d must not be negative", cfg.MaxKeys)
	}
	if cfg.Replicas < 1 {
		return cfg, fmt.Errorf("--replicas: %d must be at least 1", cfg.Replicas)
	}
	if cfg.ReplicationInterval <= 0 {
		return cfg, fmt.Errorf("--replication-interval: %v must be positive", cfg.ReplicationInterval)
	}
	if *gossipKeyFile != "" {
		key, err := readGossipKey(*gossipKeyFile)
		if err != nil {
			return cfg, fmt.Errorf("--gossip-key-file: %w", err)
		}
		cfg.GossipKey = key
	}
	cfg.GCPercent, cfg.MemoryLimitMB = *gogc, *memLimitMB
	if *configFile != "" {
		ps, err := policy.Load(*configFile)
		if err != nil {
			return cfg, fmt.Errorf("--config: %w", err)
		}
		cfg.Policies = ps
		data, _ := os.ReadFile(*configFile)
		if cfg.Envoy, err = envoy.ParseConfig(data); err != nil {
			return cfg, fmt.Errorf("--config: %s: %w", *configFile, err)
		}
	}
	if *authFile != "" {
		a, err := auth.Load(*authFile, auth.Config{LeaseKey: func(id string) (string, error) {
			l, err := limiter.DecodeLeaseID(id)
			return l.Key, err
		}})
		if err != nil {
			return cfg, fmt.Errorf("--auth-file: %w", err)
		}
		cfg.Auth = a
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return cfg, fmt.Errorf("--tls-cert and --tls-key go together")
	}
	if *tlsCert != "" {
		t, err := auth.ServerTLS(*tlsCert, *tlsKey, *tlsClientCA)
		if err != nil {
			return cfg, err
		}
		cfg.TLS = t
	} else if *tlsClientCA != "" {
		return cfg, fmt.Errorf("--tls-client-ca needs --tls-cert and --tls-key")
	}
	if *peerCA != "" {
		var cert, key string
		if *tlsClientCA != "" { // peers require client certificates too: present ours
			cert, key = *tlsCert, *tlsKey
		}
		t, err := auth.ClientTLS(*peerCA, cert, key)
		if err != nil {
			return cfg, err
		}
		cfg.PeerTLS = t
	}
	if *peerSecretFile != "" {
		b, err := os.ReadFile(*peerSecretFile)
		if err != nil {
			return cfg, fmt.Errorf("--peer-secret-file: %w", err)
		}
		if cfg.PeerSecret = strings.TrimSpace(string(b)); cfg.PeerSecret == "" {
			return cfg, fmt.Errorf("--peer-secret-file: %s is empty", *peerSecretFile)
		}
	}
	return cfg, nil
}

// readGossipKey reads an AES key of 16, 24 or 32 bytes, raw or base64.
func readGossipKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	trimmed := strings.TrimSpace(string(b))
	if k, err := base64.StdEncoding.DecodeString(trimmed); err == nil && validKeyLen(len(k)) {
		return k, nil
	}
	if validKeyLen(len(b)) {
		return b, nil
	}
	return nil, fmt.Errorf("%s: want 16, 24 or 32 bytes (raw or base64), got %d bytes", path, len(b))
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }

// tuneGC sets the collector's target and soft memory limit unless the GOGC
// and GOMEMLIMIT environment variables say otherwise. Most of what
// limiterd allocates per call is garbage at once while the live heap (key
// state) can be small, so Go's default GOGC=100 runs the collector many
// times a second; a higher target with a soft memory limit trades idle
// memory for CPU per call (README, Performance) and still bounds the heap.
func tuneGC(percent int, limitMB int64) {
	if os.Getenv("GOGC") == "" && percent != 0 {
		debug.SetGCPercent(percent)
	}
	if os.Getenv("GOMEMLIMIT") == "" && limitMB > 0 {
		debug.SetMemoryLimit(limitMB << 20)
	}
}
