package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"

	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// The test binary doubles as limiterd: with LIMITERD_TEST_MAIN=1 it runs
// main, so subprocess tests need no separate build.
func TestMain(m *testing.M) {
	if os.Getenv("LIMITERD_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// proc is a limiterd subprocess.
type proc struct {
	cmd    *exec.Cmd
	addr   string
	gossip string
	args   []string
	stderr *bytes.Buffer
	mu     *sync.Mutex
	done   chan error
}

// startProc runs limiterd with args (plus loopback listeners on free ports)
// and waits until it serves.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	args = append([]string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--log-format", "json"}, args...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "LIMITERD_TEST_MAIN=1")
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stderr: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrc := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr.WriteString(line + "\n")
			p.mu.Unlock()
			var rec struct {
				Msg    string `json:"msg"`
				GRPC   string `json:"grpc"`
				Gossip string `json:"gossip"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "limiterd serving" {
				addrc <- [2]string{rec.GRPC, rec.Gossip}
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	select {
	case a := <-addrc:
		p.addr, p.gossip, p.args = a[0], a[1], args
	case err := <-p.done:
		t.Fatalf("limiterd exited before serving: %v\n%s", err, p.log())
	case <-time.After(20 * time.Second):
		t.Fatalf("limiterd did not start in 20s\n%s", p.log())
	}
	return p
}

func (p *proc) log() string { p.mu.Lock(); defer p.mu.Unlock(); return p.stderr.String() }

// stop sends sig and waits for the exit.
func (p *proc) stop(t *testing.T, sig os.Signal) error {
	t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("limiterd did not exit after %v\n%s", sig, p.log())
		return nil
	}
}

func dial(t *testing.T, addr string) limiterv1.LimiterClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return limiterv1.NewLimiterClient(conn)
}

func mustAllow(t *testing.T, c limiterv1.LimiterClient, req *limiterv1.AllowRequest) *limiterv1.AllowResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Allow(ctx, req)
	if err != nil {
		t.Fatalf("Allow(%v) error = %v", req, err)
	}
	return res
}

const policiesYAML = `policies:
  - name: uploads
    limit: 100
    window: 1m
    max_concurrent: 3
    lease_ttl: 10m
`

func TestSIGTERMKeepsEveryKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts subprocesses")
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "policies.yaml")
	os.WriteFile(cfgFile, []byte(policiesYAML), 0o600)
	args := []string{"--data-dir", filepath.Join(dir, "data"), "--config", cfgFile}

	p := startProc(t, args...)
	c := dial(t, p.addr)
	for i := range 601 {
		mustAllow(t, c, &limiterv1.AllowRequest{Key: "tenant-a"})
		if i < 250 {
			mustAllow(t, c, &limiterv1.AllowRequest{Key: "tenant-b", Hits: 2})
		}
	}
	lease := mustAllow(t, c, &limiterv1.AllowRequest{Key: "up", Policy: "uploads"})
	keys := []*limiterv1.AllowRequest{
		{Key: "tenant-a", DryRun: true}, {Key: "tenant-b", DryRun: true},
		{Key: "up", Policy: "uploads", DryRun: true}, {Key: "never-seen", DryRun: true},
	}
	var before []*limiterv1.AllowResponse
	for _, k := range keys {
		before = append(before, mustAllow(t, c, k))
	}
	if before[0].GetAllowed() {
		t.Fatalf("tenant-a should be denied after 601 calls: %v", before[0])
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.log())
	}

	p2 := startProc(t, args...)
	c2 := dial(t, p2.addr)
	for i, k := range keys {
		got := mustAllow(t, c2, k)
		b := before[i]
		if got.GetAllowed() != b.GetAllowed() || got.GetCode() != b.GetCode() || got.GetRemaining() != b.GetRemaining() || got.GetInFlight() != b.GetInFlight() {
			t.Errorf("key %q after restart: allowed=%v code=%d remaining=%d in_flight=%d, want %v %d %d %d",
				k.GetKey(), got.GetAllowed(), got.GetCode(), got.GetRemaining(), got.GetInFlight(),
				b.GetAllowed(), b.GetCode(), b.GetRemaining(), b.GetInFlight())
		}
	}
	if _, err := c2.Release(context.Background(), &limiterv1.ReleaseRequest{LeaseId: lease.GetLeaseId()}); err != nil {
		t.Errorf("Release of a lease from before the restart: %v", err)
	}
	if err := p2.stop(t, syscall.SIGINT); err != nil {
		t.Fatalf("exit after SIGINT: %v", err)
	}
}

func TestKill9LosesAtMostOneFlushInterval(t *testing.T) {
	if testing.Short() {
		t.Skip("starts subprocesses")
	}
	const interval = 100 * time.Millisecond
	dir := t.TempDir()
	args := []string{"--data-dir", filepath.Join(dir, "data"), "--flush-interval", interval.String()}
	p := startProc(t, args...)
	c := dial(t, p.addr)
	var admitted []time.Time
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) && len(admitted) < 550 {
		if mustAllow(t, c, &limiterv1.AllowRequest{Key: "busy"}).GetAllowed() {
			admitted = append(admitted, time.Now())
		}
		time.Sleep(2 * time.Millisecond) // pace the load so it spans many flushes
	}
	killedAt := time.Now()
	p.stop(t, syscall.SIGKILL)

	p2 := startProc(t, args...)
	res := mustAllow(t, dial(t, p2.addr), &limiterv1.AllowRequest{Key: "busy", DryRun: true})
	remembered := res.GetLimit() - res.GetRemaining() - 1 // a dry run answers as if its hit counted
	lost := int64(len(admitted)) - remembered
	// A flush snapshots state, then commits; hits admitted after the last
	// committed snapshot are lost. Allow one interval plus the commit itself.
	recent := 0
	for _, at := range admitted {
		if killedAt.Sub(at) <= interval+50*time.Millisecond {
			recent++
		}
	}
	t.Logf("kill -9: %d hits admitted, %d remembered, %d lost; %d were admitted in the last %v", len(admitted), remembered, lost, recent, interval+50*time.Millisecond)
	if lost < 0 || lost > int64(recent) {
		t.Errorf("lost %d hits, want 0..%d (those of the last flush interval)", lost, recent)
	}
	p2.stop(t, syscall.SIGTERM)
}

func TestCorruptDatabaseExitsAndKeepsFile(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o750)
	file := filepath.Join(data, "limiterd.db")
	garbage := bytes.Repeat([]byte("not a bolt file "), 4096)
	os.WriteFile(file, garbage, 0o600)
	sum := sha256.Sum256(garbage)

	var stderr bytes.Buffer
	err := run(context.Background(), []string{"--data-dir", data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--gossip-addr", ""}, &stderr)
	if err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("run() error = %v, want an error naming %s", err, file)
	}
	after, _ := os.ReadFile(file)
	if sha256.Sum256(after) != sum {
		t.Errorf("the corrupt file was modified")
	}
}

func TestBadFlagsAndConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("policies:\n  - {name: x, limit: -3, window: 1m}\n"), 0o600)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad yaml value", []string{"--config", bad}, "limit"},
		{"missing config", []string{"--config", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"bad sync", []string{"--sync", "sometimes"}, "--sync"},
		{"bad flush", []string{"--flush-interval", "0s"}, "--flush-interval"},
		{"extra args", []string{"serve"}, "unexpected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parseFlags(%q) error = %v, want it to mention %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestSyncAlwaysKill9LosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts subprocesses")
	}
	dir := t.TempDir()
	args := []string{"--data-dir", filepath.Join(dir, "data"), "--sync", "always", "--flush-interval", "1h"}
	p := startProc(t, args...)
	c := dial(t, p.addr)
	for range 50 {
		mustAllow(t, c, &limiterv1.AllowRequest{Key: "durable"})
	}
	p.stop(t, syscall.SIGKILL)
	p2 := startProc(t, args...)
	res := mustAllow(t, dial(t, p2.addr), &limiterv1.AllowRequest{Key: "durable", DryRun: true})
	if got := res.GetLimit() - res.GetRemaining() - 1; got != 50 { // minus the dry run's own hit
		t.Errorf("after kill -9 with --sync=always: %d hits remembered, want 50", got)
	}
	p2.stop(t, syscall.SIGTERM)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

var (
	connMu sync.Mutex
	conns  = map[string]*grpc.ClientConn{}
)

// dialConn returns a shared connection to addr, closed when the test ends.
func dialConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	connMu.Lock()
	defer connMu.Unlock()
	if c := conns[addr]; c != nil {
		return c
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	conns[addr] = c
	t.Cleanup(func() {
		connMu.Lock()
		delete(conns, addr)
		connMu.Unlock()
		c.Close()
	})
	return c
}

func dialLimiter(t *testing.T, addr string) limiterv1.LimiterClient {
	return limiterv1.NewLimiterClient(dialConn(t, addr))
}

// waitUntil polls cond every 10ms until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
