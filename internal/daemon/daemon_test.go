package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

func startMain(t *testing.T, mod func(*Config)) *Main {
	t.Helper()
	cfg := DefaultConfig()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.GossipAddr = ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if mod != nil {
		mod(&cfg)
	}
	m := New(cfg)
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("Run() error = %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func dial(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestHTTPEndpointsAndMetrics(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Pprof = true })
	c := limiterv1.NewLimiterClient(dial(t, m.GRPCAddr()))
	ctx := context.Background()
	if _, err := c.Allow(ctx, &limiterv1.AllowRequest{Key: "k", Hits: 600}); err != nil {
		t.Fatal(err)
	}
	if res, _ := c.Allow(ctx, &limiterv1.AllowRequest{Key: "k"}); res.GetCode() != 122 {
		t.Fatalf("Allow() = %v, want 122", res)
	}
	base := "http://" + m.HTTPAddr()
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d, want 200", code)
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ = %d, want 200 with Pprof on", code)
	}
	_, body := get(t, base+"/metrics")
	for _, want := range []string{
		`limiterd_decisions_total{code="0",policy="default",shadow="false"} 1`,
		`limiterd_decisions_total{code="122",policy="default",shadow="false"} 1`,
		`limiterd_request_duration_seconds_count{method="/limiter.v1.Limiter/Allow"} 2`,
		`limiterd_keys_in_memory 1`,
		`limiterd_store_journal_bytes `,
		`limiterd_store_journal_folds_total `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "limiterd.sock")
	// A stale socket file from a crashed run is removed at start.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	m := startMain(t, func(c *Config) { c.GRPCAddr = "unix://" + sock; c.HTTPAddr = "" })
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode = %v, want 0660", fi.Mode().Perm())
	}
	c := limiterv1.NewLimiterClient(dial(t, m.GRPCAddr()))
	if res, err := c.Allow(context.Background(), &limiterv1.AllowRequest{Key: "k"}); err != nil || !res.GetAllowed() {
		t.Fatalf("Allow() over unix socket = %v, %v", res, err)
	}
	m.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after Close: %v", err)
	}
}

func TestAdminAPI(t *testing.T) {
	m := startMain(t, nil)
	conn := dial(t, m.GRPCAddr())
	a := limiterv1.NewAdminClient(conn)
	c := limiterv1.NewLimiterClient(conn)
	ctx := context.Background()
	p := &limiterv1.Policy{Name: "uploads", Limit: 2, Window: durationpb.New(time.Minute), MaxConcurrent: 1}
	created, err := a.CreatePolicy(ctx, &limiterv1.CreatePolicyRequest{Policy: p})
	if err != nil || created.GetPolicy().GetLeaseTtl().AsDuration() != time.Minute || created.GetPolicy().GetBuckets() != 60 {
		t.Fatalf("CreatePolicy() = %v, %v, want defaults filled in", created, err)
	}
	codeOf := func(err error) codes.Code { return status.Code(err) }
	tests := []struct {
		name    string
		err     error
		want    codes.Code
		mention string
	}{
		{"create existing", func() error { _, err := a.CreatePolicy(ctx, &limiterv1.CreatePolicyRequest{Policy: p}); return err }(), codes.AlreadyExists, "uploads"},
		{"create invalid limit", func() error {
			_, err := a.CreatePolicy(ctx, &limiterv1.CreatePolicyRequest{Policy: &limiterv1.Policy{Name: "x", Limit: -1, Window: durationpb.New(time.Minute)}})
			return err
		}(), codes.InvalidArgument, "limit"},
		{"create without window", func() error {
			_, err := a.CreatePolicy(ctx, &limiterv1.CreatePolicyRequest{Policy: &limiterv1.Policy{Name: "x", Limit: 1}})
			return err
		}(), codes.InvalidArgument, "window"},
		{"get missing", func() error { _, err := a.GetPolicy(ctx, &limiterv1.GetPolicyRequest{Name: "nope"}); return err }(), codes.NotFound, "nope"},
		{"delete missing", func() error { _, err := a.DeletePolicy(ctx, &limiterv1.DeletePolicyRequest{Name: "nope"}); return err }(), codes.NotFound, "nope"},
		{"delete default", func() error {
			_, err := a.DeletePolicy(ctx, &limiterv1.DeletePolicyRequest{Name: "default"})
			return err
		}(), codes.InvalidArgument, "default"},
		{"update missing", func() error {
			_, err := a.UpdatePolicy(ctx, &limiterv1.UpdatePolicyRequest{Policy: &limiterv1.Policy{Name: "nope", Limit: 1, Window: durationpb.New(time.Minute)}})
			return err
		}(), codes.NotFound, "nope"},
		{"get unseen key", func() error { _, err := a.GetKey(ctx, &limiterv1.GetKeyRequest{Key: "unseen"}); return err }(), codes.NotFound, "unseen"},
		{"get bad key", func() error { _, err := a.GetKey(ctx, &limiterv1.GetKeyRequest{Key: ""}); return err }(), codes.InvalidArgument, "key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if codeOf(tt.err) != tt.want || !strings.Contains(tt.err.Error(), tt.mention) {
				t.Errorf("error = %v, want %v mentioning %q", tt.err, tt.want, tt.mention)
			}
		})
	}
	res, err := c.Allow(ctx, &limiterv1.AllowRequest{Key: "u", Policy: "uploads"})
	if err != nil || !res.GetAllowed() {
		t.Fatalf("Allow() under the new policy = %v, %v", res, err)
	}
	info, err := a.GetKey(ctx, &limiterv1.GetKeyRequest{Policy: "uploads", Key: "u"})
	if err != nil || info.GetKey().GetUsed() != 1 || info.GetKey().GetInFlight() != 1 {
		t.Fatalf("GetKey() = %v, %v, want 1 used, 1 in flight", info, err)
	}
	if _, err := a.ResetKey(ctx, &limiterv1.ResetKeyRequest{Policy: "uploads", Key: "u"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GetKey(ctx, &limiterv1.GetKeyRequest{Policy: "uploads", Key: "u"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetKey() after reset error = %v, want NotFound", err)
	}
	list, err := a.ListPolicies(ctx, &limiterv1.ListPoliciesRequest{})
	if err != nil || len(list.GetPolicies()) != 2 {
		t.Errorf("ListPolicies() = %v, %v, want default and uploads", list, err)
	}
	members, err := a.ListMembers(ctx, &limiterv1.ListMembersRequest{})
	if err != nil || len(members.GetMembers()) != 1 || !members.GetMembers()[0].GetSelf() {
		t.Errorf("ListMembers() = %v, %v, want this node", members, err)
	}
	if _, err := a.DeletePolicy(ctx, &limiterv1.DeletePolicyRequest{Name: "uploads"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Allow(ctx, &limiterv1.AllowRequest{Key: "u", Policy: "uploads"}); status.Code(err) != codes.NotFound {
		t.Errorf("Allow() under a deleted policy error = %v, want NotFound", err)
	}
}
