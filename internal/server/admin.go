package server

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// AdminBackend is the part of the limiter the Admin service uses;
// *limiter.Limiter satisfies it.
type AdminBackend interface {
	Policies() []policy.Policy
	Policy(name string) (policy.Policy, bool)
	CreatePolicy(ctx context.Context, p policy.Policy) (policy.Record, error)
	UpdatePolicy(ctx context.Context, p policy.Policy) (policy.Record, error)
	DeletePolicy(ctx context.Context, name string) (policy.Record, error)
	Usage(policyName, key string) (limiter.Usage, error)
	Reset(ctx context.Context, policyName, key string) error
}

// AdminConfig configures the Admin service.
type AdminConfig struct {
	// Backend holds policies and keys. Required.
	Backend AdminBackend
	// Members lists the cluster; nil means a single node named by NodeName.
	Members func() []*limiterv1.Member
	// NodeName names this node in KeyInfo.owner and single-node ListMembers.
	// Default the host name.
	NodeName string
	// OnPolicyChange is told of every change made through the API, so a
	// cluster can spread it. Optional.
	OnPolicyChange func(policy.Record)
	// KeyUsage, when set, answers GetKey and ResetKey for keys another node
	// owns (a cluster sets it). Optional.
	KeyUsage func(ctx context.Context, policyName, key string, reset bool) (*limiterv1.KeyInfo, error)
}

// Admin implements limiter.v1.Admin. It is safe for concurrent use.
type Admin struct {
	limiterv1.UnimplementedAdminServer
	cfg AdminConfig
}

// NewAdmin returns the Admin service.
func NewAdmin(cfg AdminConfig) (*Admin, error) {
	if cfg.Backend == nil {
		return nil, fmt.Errorf("server: AdminConfig.Backend is nil")
	}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	return &Admin{cfg: cfg}, nil
}

// Register adds the Admin service to g.
func (a *Admin) Register(g *grpc.Server) { limiterv1.RegisterAdminServer(g, a) }

// CreatePolicy implements limiter.v1.Admin/CreatePolicy.
func (a *Admin) CreatePolicy(ctx context.Context, req *limiterv1.CreatePolicyRequest) (*limiterv1.CreatePolicyResponse, error) {
	p, err := fromProto(req.GetPolicy())
	if err != nil {
		return nil, toStatus(err)
	}
	rec, err := a.cfg.Backend.CreatePolicy(ctx, p)
	if err != nil {
		return nil, toStatus(err)
	}
	a.changed(rec)
	return &limiterv1.CreatePolicyResponse{Policy: ToProto(rec.Policy)}, nil
}

// UpdatePolicy implements limiter.v1.Admin/UpdatePolicy.
func (a *Admin) UpdatePolicy(ctx context.Context, req *limiterv1.UpdatePolicyRequest) (*limiterv1.UpdatePolicyResponse, error) {
	p, err := fromProto(req.GetPolicy())
	if err != nil {
		return nil, toStatus(err)
	}
	rec, err := a.cfg.Backend.UpdatePolicy(ctx, p)
	if err != nil {
		return nil, toStatus(err)
	}
	a.changed(rec)
	return &limiterv1.UpdatePolicyResponse{Policy: ToProto(rec.Policy)}, nil
}

// GetPolicy implements limiter.v1.Admin/GetPolicy.
func (a *Admin) GetPolicy(ctx context.Context, req *limiterv1.GetPolicyRequest) (*limiterv1.GetPolicyResponse, error) {
	p, ok := a.cfg.Backend.Policy(req.GetName())
	if !ok {
		return nil, toStatus(fmt.Errorf("%w: %q", limiter.ErrUnknownPolicy, req.GetName()))
	}
	return &limiterv1.GetPolicyResponse{Policy: ToProto(p)}, nil
}

// DeletePolicy implements limiter.v1.Admin/DeletePolicy.
func (a *Admin) DeletePolicy(ctx context.Context, req *limiterv1.DeletePolicyRequest) (*limiterv1.DeletePolicyResponse, error) {
	if req.GetName() == "" {
		return nil, toStatus(fmt.Errorf("%w: name: empty", errBadRequest))
	}
	rec, err := a.cfg.Backend.DeletePolicy(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	a.changed(rec)
	return &limiterv1.DeletePolicyResponse{}, nil
}

// ListPolicies implements limiter.v1.Admin/ListPolicies.
func (a *Admin) ListPolicies(ctx context.Context, _ *limiterv1.ListPoliciesRequest) (*limiterv1.ListPoliciesResponse, error) {
	var out []*limiterv1.Policy
	for _, p := range a.cfg.Backend.Policies() {
		out = append(out, ToProto(p))
	}
	return &limiterv1.ListPoliciesResponse{Policies: out}, nil
}

// GetKey implements limiter.v1.Admin/GetKey.
func (a *Admin) GetKey(ctx context.Context, req *limiterv1.GetKeyRequest) (*limiterv1.GetKeyResponse, error) {
	info, err := a.key(ctx, req.GetPolicy(), req.GetKey(), false)
	if err != nil {
		return nil, toStatus(err)
	}
	return &limiterv1.GetKeyResponse{Key: info}, nil
}

// ResetKey implements limiter.v1.Admin/ResetKey.
func (a *Admin) ResetKey(ctx context.Context, req *limiterv1.ResetKeyRequest) (*limiterv1.ResetKeyResponse, error) {
	if _, err := a.key(ctx, req.GetPolicy(), req.GetKey(), true); err != nil {
		return nil, toStatus(err)
	}
	return &limiterv1.ResetKeyResponse{}, nil
}

// LocalKey answers GetKey (reset false) or ResetKey (reset true) from this
// node's own state; a cluster calls it on the key's owner.
func (a *Admin) LocalKey(ctx context.Context, policyName, key string, reset bool) (*limiterv1.KeyInfo, error) {
	if policyName == "" {
		policyName = policy.DefaultName
	}
	u, err := a.cfg.Backend.Usage(policyName, key)
	if err != nil {
		return nil, err
	}
	if reset {
		if err := a.cfg.Backend.Reset(ctx, policyName, key); err != nil {
			return nil, err
		}
	}
	return &limiterv1.KeyInfo{
		Policy: u.Policy, Key: u.Key, Limit: u.Limit, Used: u.Used, Remaining: u.Remaining,
		ResetAfter: durationpb.New(u.ResetAfter), MaxConcurrent: u.MaxConcurrent, InFlight: u.InFlight,
		Owner: a.cfg.NodeName,
	}, nil
}

func (a *Admin) key(ctx context.Context, policyName, key string, reset bool) (*limiterv1.KeyInfo, error) {
	if err := limiter.ValidateKey(key); err != nil {
		return nil, err
	}
	if a.cfg.KeyUsage != nil {
		return a.cfg.KeyUsage(ctx, policyName, key, reset)
	}
	return a.LocalKey(ctx, policyName, key, reset)
}

// ListMembers implements limiter.v1.Admin/ListMembers.
func (a *Admin) ListMembers(ctx context.Context, _ *limiterv1.ListMembersRequest) (*limiterv1.ListMembersResponse, error) {
	if a.cfg.Members != nil {
		return &limiterv1.ListMembersResponse{Members: a.cfg.Members()}, nil
	}
	return &limiterv1.ListMembersResponse{Members: []*limiterv1.Member{{Name: a.cfg.NodeName, State: "alive", Self: true}}}, nil
}

func (a *Admin) changed(rec policy.Record) {
	if a.cfg.OnPolicyChange != nil {
		a.cfg.OnPolicyChange(rec)
	}
}

// ToProto renders a policy for the Admin API.
func ToProto(p policy.Policy) *limiterv1.Policy {
	return &limiterv1.Policy{
		Name: p.Name, Limit: p.Limit, Window: durationpb.New(p.Window), Buckets: int32(p.Buckets),
		MaxConcurrent: p.MaxConcurrent, LeaseTtl: durationpb.New(p.LeaseTTL), FailOpen: p.FailOpen, Shadow: p.Shadow,
	}
}

// fromProto reads a policy from the Admin API; errors name the field.
func fromProto(m *limiterv1.Policy) (policy.Policy, error) {
	if m == nil {
		return policy.Policy{}, fmt.Errorf("%w: policy: missing", policy.ErrInvalid)
	}
	dur := func(field string, d *durationpb.Duration, required bool) (time.Duration, error) {
		if d == nil {
			if required {
				return 0, fmt.Errorf("%w %q: %s: missing", policy.ErrInvalid, m.GetName(), field)
			}
			return 0, nil
		}
		if err := d.CheckValid(); err != nil {
			return 0, fmt.Errorf("%w %q: %s: %v", policy.ErrInvalid, m.GetName(), field, err)
		}
		return d.AsDuration(), nil
	}
	w, err := dur("window", m.GetWindow(), true)
	if err != nil {
		return policy.Policy{}, err
	}
	ttl, err := dur("lease_ttl", m.GetLeaseTtl(), false)
	if err != nil {
		return policy.Policy{}, err
	}
	p := policy.Policy{
		Name: m.GetName(), Limit: m.GetLimit(), Window: w, Buckets: int(m.GetBuckets()),
		MaxConcurrent: m.GetMaxConcurrent(), LeaseTTL: ttl, FailOpen: m.GetFailOpen(), Shadow: m.GetShadow(),
	}
	return p, p.Validate()
}
