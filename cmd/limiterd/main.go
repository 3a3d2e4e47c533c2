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
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/limiterd/limiterd/internal/daemon"
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
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve /debug/pprof/ on --http-addr")
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
	if *configFile != "" {
		ps, err := policy.Load(*configFile)
		if err != nil {
			return cfg, fmt.Errorf("--config: %w", err)
		}
		cfg.Policies = ps
	}
	return cfg, nil
}
