// Command gateway is a tiny HTTP gateway in front of limiterd: every request
// goes through client.Middleware, keyed by its X-Api-Key header or, without
// one, by the client IP. It answers "hello" itself, or proxies to --upstream.
//
//	go run ./examples/gateway --limiterd 127.0.0.1:8081 --listen 127.0.0.1:9000
//
// See README.md in this directory for a walk-through with curl.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/limiterd/limiterd/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "gateway:", err)
		}
		os.Exit(1)
	}
}

// config is the gateway's command line.
type config struct {
	limiterd string
	listen   string
	policy   string
	failOpen bool
	token    string
	upstream string
	timeout  time.Duration
	route    bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := config{token: os.Getenv("LIMITERD_TOKEN")}
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.limiterd, "limiterd", "127.0.0.1:8081", "limiterd gRPC `address` (host:port or unix:///path)")
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:9000", "HTTP listen `address`")
	fs.StringVar(&cfg.policy, "policy", "", "limiterd `policy` for every request (empty: default)")
	fs.BoolVar(&cfg.failOpen, "fail-open", false, "let requests through when limiterd is unreachable (default: answer 503)")
	fs.StringVar(&cfg.upstream, "upstream", "", "proxy allowed requests to this `URL` instead of answering hello")
	fs.DurationVar(&cfg.timeout, "timeout", client.DefaultMiddlewareTimeout, "deadline of each limiterd call")
	fs.BoolVar(&cfg.route, "route", false, "send each key straight to the cluster node that owns it (client.WithRouting)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return cfg, nil
}

// run serves until ctx ends. When ready is not nil it receives the bound
// address once the gateway listens.
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	opts := []client.Option{client.WithToken(cfg.token)}
	if cfg.route {
		opts = append(opts, client.WithRouting(0))
	}
	c, err := client.New(cfg.limiterd, opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	h, err := newHandler(c, cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	log.Info("gateway listening", "addr", ln.Addr().String(), "limiterd", cfg.limiterd, "policy", cfg.policy, "fail_open", cfg.failOpen)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// newHandler is the gateway: the limiterd middleware around either a hello
// handler or a reverse proxy to cfg.upstream.
func newHandler(c *client.Client, cfg config, log *slog.Logger) (http.Handler, error) {
	var next http.Handler = http.HandlerFunc(hello)
	if cfg.upstream != "" {
		u, err := url.Parse(cfg.upstream)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("--upstream %q: want a URL like http://127.0.0.1:8000", cfg.upstream)
		}
		next = httputil.NewSingleHostReverseProxy(u)
	}
	mw := client.Middleware(c, client.MiddlewareConfig{
		Key:      key,
		Policy:   cfg.policy,
		FailOpen: cfg.failOpen,
		Timeout:  cfg.timeout,
		OnError: func(r *http.Request, err error) {
			log.Warn("limiterd call failed", "path", r.URL.Path, "err", err)
		},
	})
	return mw(next), nil
}

// key limits by API key when the request has one, else by client IP.
func key(r *http.Request) string {
	if k := r.Header.Get("X-Api-Key"); k != "" {
		return "key:" + k
	}
	return "ip:" + client.ClientIP(r)
}

func hello(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "hello, %s\n", key(r))
}
