package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/limiterd/limiterd/client"
	"github.com/limiterd/limiterd/internal/daemon"
	"github.com/limiterd/limiterd/internal/policy"
	"github.com/limiterd/limiterd/internal/testcluster"
)

func startDaemon(t *testing.T) string {
	t.Helper()
	cfg := daemon.DefaultConfig()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = ""
	cfg.GossipAddr = "" // a single node, no gossip port
	cfg.DataDir = t.TempDir()
	cfg.Policies = []policy.Policy{policy.Default(), {Name: "hello", Limit: 2, Window: time.Minute}}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	m := daemon.New(cfg)
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("daemon Run() error = %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m.GRPCAddr()
}

func get(t *testing.T, url, apiKey string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if apiKey != "" {
		req.Header.Set("X-Api-Key", apiKey)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestGateway(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--limiterd", startDaemon(t), "--listen", "127.0.0.1:0", "--policy", "hello"}, io.Discard, ready)
	}()
	base := "http://" + <-ready

	for i := range 2 {
		res, body := get(t, base+"/hello", "alice")
		if res.StatusCode != http.StatusOK || body != "hello, key:alice\n" {
			t.Fatalf("GET #%d = %d %q, want 200 hello", i+1, res.StatusCode, body)
		}
		if res.Header.Get("RateLimit-Policy") != `"hello";q=2;w=60` {
			t.Errorf("RateLimit-Policy = %q", res.Header.Get("RateLimit-Policy"))
		}
	}
	res, body := get(t, base+"/hello", "alice")
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" {
		t.Fatalf("third GET = %d (Retry-After %q), want 429 with Retry-After", res.StatusCode, res.Header.Get("Retry-After"))
	}
	var b map[string]any
	if err := json.Unmarshal([]byte(body), &b); err != nil || b["code"] != 122.0 || b["path"] != "/hello" {
		t.Errorf("429 body = %s (%v), want code 122 for /hello", body, err)
	}
	// Another API key, and no API key (the client IP), have their own quota.
	if res, _ := get(t, base+"/hello", "bob"); res.StatusCode != http.StatusOK {
		t.Errorf("GET as bob = %d, want 200", res.StatusCode)
	}
	if res, body := get(t, base+"/hello", ""); res.StatusCode != http.StatusOK || body != "hello, ip:127.0.0.1\n" {
		t.Errorf("GET without a key = %d %q, want 200 hello, ip:127.0.0.1", res.StatusCode, body)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("run() = %v, want nil after ctx ends", err)
	}
}

func TestGatewayUpstreamAndFailOpen(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream "+r.URL.Path) }))
	t.Cleanup(up.Close)
	c, err := client.New("127.0.0.1:1") // nothing listens on port 1
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	for _, failOpen := range []bool{true, false} {
		h, err := newHandler(c, config{upstream: up.URL, failOpen: failOpen, timeout: time.Second}, log)
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/x", nil))
		switch {
		case failOpen && (w.Code != http.StatusOK || w.Body.String() != "upstream /x" || w.Header().Get(client.DegradedHeader) != "true"):
			t.Errorf("fail open: %d %q, want 200 from upstream, degraded", w.Code, w.Body)
		case !failOpen && (w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), `"code":503`)):
			t.Errorf("fail closed: %d %q, want 503 JSON", w.Code, w.Body)
		}
	}
}

func TestFlags(t *testing.T) {
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Error("parseFlags(extra) = nil error, want unexpected arguments")
	}
	if _, err := newHandler(nil, config{upstream: "not a url"}, nil); err == nil {
		t.Error("newHandler(bad upstream) = nil error, want one")
	}
}

// TestGatewayRouted runs the gateway with --route against a 3-node
// cluster: every API key still gets exactly its 2 calls a minute, and once
// the client routes, no call is forwarded between nodes.
func TestGatewayRouted(t *testing.T) {
	nodes := testcluster.Start(t, 3, func(c *daemon.Config) {
		c.Policies = []policy.Policy{policy.Default(), {Name: "hello", Limit: 2, Window: time.Minute}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--limiterd", nodes[0].GRPCAddr(), "--listen", "127.0.0.1:0", "--policy", "hello", "--route"}, io.Discard, ready)
	}()
	base := "http://" + <-ready
	// Warm-up keys until a round of them is not forwarded: the client has
	// read the member list and connected to every node.
	deadline := time.Now().Add(10 * time.Second)
	for round := 0; ; round++ {
		before := testcluster.Forwarded(t, nodes)
		for i := range 12 {
			get(t, base+"/hello", fmt.Sprintf("warm-%d-%d", round, i))
		}
		if testcluster.Forwarded(t, nodes) == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateway's calls were still forwarded after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := testcluster.Forwarded(t, nodes)
	for i := range 9 {
		key := fmt.Sprintf("user-%d", i)
		for n := 1; n <= 3; n++ {
			res, _ := get(t, base+"/hello", key)
			if want := map[bool]int{true: http.StatusOK, false: http.StatusTooManyRequests}[n <= 2]; res.StatusCode != want {
				t.Errorf("%s call %d = %d, want %d", key, n, res.StatusCode, want)
			}
		}
	}
	if d := testcluster.Forwarded(t, nodes) - before; d != 0 {
		t.Errorf("%v calls forwarded with --route, want 0", d)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run() = %v, want nil after ctx ends", err)
	}
}
