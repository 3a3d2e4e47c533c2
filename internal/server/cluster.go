package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/internal/cluster"
	"github.com/limiterd/limiterd/internal/limiter"
	"github.com/limiterd/limiterd/internal/metrics"
	"github.com/limiterd/limiterd/internal/policy"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// peerNode is the part of *cluster.Node the service uses.
type peerNode interface {
	Name() string
	Owner(key string) (cluster.Member, bool)
	Replicas(key string, n int) []cluster.Member
	ReplicaCount() int
	Ring() *cluster.Ring
	Members() []cluster.Member
	Forward(ctx context.Context, m cluster.Member, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error)
	ForwardWithin(ctx context.Context, m cluster.Member, req *limiterv1.AllowRequest, wait time.Duration) (*limiterv1.PeerDecision, error)
	ForwardRelease(ctx context.Context, m cluster.Member, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error)
	Replicate(ctx context.Context, m cluster.Member, states []*limiterv1.KeyState) error
	ReplicateAsync(m cluster.Member, states []*limiterv1.KeyState, done func(lost []*limiterv1.KeyState, err error), written func())
	PushState(ctx context.Context, m cluster.Member, states []*limiterv1.KeyState) error
	Fetch(ctx context.Context, m cluster.Member, refs []*limiterv1.KeyRef) ([]*limiterv1.KeyState, error)
	Key(ctx context.Context, m cluster.Member, req *limiterv1.PeerKeyRequest) (*limiterv1.KeyInfo, error)
	KeysHeld(ctx context.Context, m cluster.Member) (int64, error)
	SetPolicy(name string, data []byte, version uint64) error
	DeletePolicy(name string, version uint64) error
	Leave(ctx context.Context) error
	Join(ctx context.Context, addrs ...string) (int, error)
	GossipAddr() string
	Reconnect(name string)
	RegisterPeerService(s grpc.ServiceRegistrar, h cluster.Handler)
}

// ClusterConfig tunes how a node shares keys with its peers.
type ClusterConfig struct {
	// ReplicationInterval is how often changed keys are sent to their
	// replicas, in one batch per replica. After the owner dies, the hits it
	// admitted in the last interval may be admitted again. Default 10ms.
	ReplicationInterval time.Duration
	// Now reports the time that replication rounds are timed by. Default
	// time.Now; tests pass a fake.
	Now func() time.Time
	// SyncTimeout bounds fetching a key's state from its peers the first
	// time this node decides it after a membership change. Default 250ms.
	SyncTimeout time.Duration
	// HandoffTimeout bounds pushing keys to their new owners. Default 5s.
	HandoffTimeout time.Duration
	// FailoverAfter bounds waiting for a key's owner when another replica
	// could answer instead: an owner that is frozen or overloaded (its
	// connection still open) is given up on after this long, or half the
	// caller's remaining deadline if that is shorter. Default 200ms.
	FailoverAfter time.Duration
	Metrics       *metrics.Metrics
	Logger        *slog.Logger
}

// DefaultClusterConfig returns a ClusterConfig with every field set.
func DefaultClusterConfig() ClusterConfig {
	return ClusterConfig{ReplicationInterval: 10 * time.Millisecond, SyncTimeout: 250 * time.Millisecond,
		HandoffTimeout: 5 * time.Second, FailoverAfter: 200 * time.Millisecond, Now: time.Now, Logger: slog.Default()}
}

// Cluster makes a Service decide each key on its owner: it forwards calls
// for keys it does not own, replicates the keys it owns, takes keys over
// when membership changes, and spreads policy changes. It implements
// cluster.Handler for the Peer service.
type Cluster struct {
	cfg   ClusterConfig
	svc   *Service
	lim   *limiter.Limiter
	admin *Admin
	node  peerNode

	epoch     atomic.Uint64 // membership changes seen
	changedAt atomic.Int64  // Unix ns of the last change
	stop      chan struct{}
	done      sync.WaitGroup

	// gate is held shared by every decision made here as a key's owner, and
	// exclusively by Leave while it hands keys over, so no decision is made
	// between the last hand-off and the moment peers route elsewhere.
	gate    sync.RWMutex
	leaving atomic.Bool

	nodeReady atomic.Bool // Start has set node
	// joined is set once the node has joined the cluster at start (or has
	// no one to join). Before that it does not decide keys: peers that
	// still know it from before a restart would otherwise reach it before it
	// knows anyone to take its keys' state from.
	joined atomic.Bool

	syncMu    sync.Mutex
	syncRetry map[string]time.Time // keys whose last sync nobody answered: no retry before

	sendMu  sync.Mutex
	sending map[string]bool // members a replica batch is being written to

	roundMu   sync.Mutex   // held by the replication round under way
	lastRound atomic.Int64 // Unix ns (cfg.Now) when the last round began
}

// NewCluster prepares the cluster side of svc. Pass its OnChange and
// OnPolicy to cluster.Config, then call Start with the node.
func NewCluster(svc *Service, lim *limiter.Limiter, admin *Admin, cfg ClusterConfig) *Cluster {
	return &Cluster{cfg: cfg, svc: svc, lim: lim, admin: admin, stop: make(chan struct{})}
}

// Start registers the Peer service on g (before g serves), routes svc's
// calls through node and starts replication. Call Join after g serves.
func (c *Cluster) Start(node peerNode, g *grpc.Server) {
	c.node = node
	// This node's own arrival is a change: while it was away, others may
	// have decided its keys.
	c.changedAt.Store(time.Now().UnixNano())
	c.epoch.Store(1)
	node.RegisterPeerService(g, c)
	c.svc.cluster = c
	c.nodeReady.Store(true)
	if c.admin != nil {
		c.admin.cfg.NodeName = node.Name()
		c.admin.cfg.KeyUsage = c.key
		c.admin.cfg.Members = c.members
		c.admin.cfg.OnPolicyChange = c.publish
	}
	c.done.Add(1)
	go c.replicateLoop()
}

// Stop ends replication, sending what is queued first.
func (c *Cluster) Stop() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	c.done.Wait()
}

// KeysHeld reports how many keys this node holds state for; a paged-out
// store counts as at least one. Peers ask it right after they join.
func (c *Cluster) KeysHeld() int64 {
	n := int64(c.lim.Keys())
	if n == 0 && c.lim.Paged() {
		n = 1
	}
	return n
}

// Joined is called once this node has joined the cluster at start. When no
// other member holds any key state (a cluster forming from scratch), no key
// this node owns can have a past elsewhere, so the merge before each key's
// first decision is skipped. Any failure to ask keeps it on.
func (c *Cluster) Joined(ctx context.Context) {
	if !c.peersHoldState(ctx) {
		c.epoch.CompareAndSwap(1, 0)
	}
	c.joined.Store(true)
}

// Alone marks a node that has no one to join at start (or whose join
// failed and that serves alone meanwhile) as ready to decide.
func (c *Cluster) Alone() { c.joined.Store(true) }

// peersHoldState reports whether any other member holds key state, or
// could not be asked.
func (c *Cluster) peersHoldState(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.SyncTimeout*4)
	defer cancel()
	for _, m := range c.node.Members() {
		if m.Name == c.node.Name() {
			continue
		}
		if n, err := c.node.KeysHeld(ctx, m); err != nil || n > 0 {
			return true
		}
	}
	return false
}

// allow routes req to the key's owner, or the next live replica.
func (c *Cluster) allow(ctx context.Context, req *limiterv1.AllowRequest) (limiter.Result, error) {
	if err := limiter.ValidateKey(req.GetKey()); err != nil {
		return limiter.Result{}, err
	}
	if req.GetHits() < 0 {
		return limiter.Result{}, fmt.Errorf("%w: %d", limiter.ErrBadHits, req.GetHits())
	}
	p, ok := c.lim.Policy(req.GetPolicy())
	if !ok {
		return limiter.Result{}, fmt.Errorf("%w: %q", limiter.ErrUnknownPolicy, req.GetPolicy())
	}
	var buf [4]cluster.Member // room for most clusters' copies, on the stack
	reps := c.node.Ring().AppendReplicas(buf[:0], req.GetKey(), c.node.ReplicaCount())
	var lastErr error = cluster.ErrNoMembers
	unsynced := false // this node owns the key but could not merge its peers' copies
	for i, m := range reps {
		var res limiter.Result
		var err error
		if m.Name == c.node.Name() {
			res, err = c.allowOwned(ctx, req, p, false)
			unsynced = unsynced || errors.Is(err, errUnsynced)
		} else {
			var d *limiterv1.PeerDecision
			d, err = c.forward(ctx, m, req, i < len(reps)-1)
			c.cfg.Metrics.Forwarded("allow", err)
			if err == nil {
				res = c.fromDecision(d, p)
			}
		}
		if err == nil {
			res.Degraded = res.Degraded || i > 0
			return res, nil
		}
		if !errors.Is(err, cluster.ErrOwnerUnavailable) && !errors.Is(err, errStarting) && !errors.Is(err, errLeaving) && !errors.Is(err, errUnsynced) {
			return limiter.Result{}, err
		}
		c.cfg.Logger.Warn("key owner unreachable; trying the next replica", "key", req.GetKey(), "member", m.Name, "err", err)
		lastErr = err
	}
	if unsynced {
		// No replica could decide instead: this node, the owner, decides on
		// its own copy (not degraded: the owner decided), and merges the
		// peers' copies once they answer.
		res, err := c.allowOwned(ctx, req, p, true)
		if err == nil {
			return res, nil
		}
		lastErr = err
	}
	if !p.FailOpen {
		return limiter.Result{}, lastErr
	}
	return limiter.Result{Allowed: true, Policy: p, Limit: p.Limit, Remaining: p.Limit, MaxConcurrent: p.MaxConcurrent, Degraded: true}, nil
}

// toDecision is what an owner sends back for a forwarded call.
func toDecision(r limiter.Result) *limiterv1.PeerDecision {
	return &limiterv1.PeerDecision{
		Allowed: r.Allowed, Code: r.Code, Policy: r.Policy.Name, Limit: r.Limit, Remaining: r.Remaining,
		RetryAfterNs: int64(r.RetryAfter), ResetAfterNs: int64(r.ResetAfter), LeaseId: r.LeaseID,
		MaxConcurrent: r.MaxConcurrent, InFlight: r.InFlight, Degraded: r.Degraded, ShadowCode: r.ShadowCode,
	}
}

// fromDecision turns an owner's decision back into a Result, with this
// node's copy of the policy (policies are the same cluster-wide; p is the
// one the caller named, used if the owner's name is unknown here).
func (c *Cluster) fromDecision(d *limiterv1.PeerDecision, p policy.Policy) limiter.Result {
	if d.GetPolicy() != p.Name {
		if q, ok := c.lim.Policy(d.GetPolicy()); ok {
			p = q
		}
	}
	return limiter.Result{
		Allowed: d.GetAllowed(), Code: d.GetCode(), Policy: p, Limit: d.GetLimit(), Remaining: d.GetRemaining(),
		RetryAfter: time.Duration(d.GetRetryAfterNs()), ResetAfter: time.Duration(d.GetResetAfterNs()),
		LeaseID: d.GetLeaseId(), MaxConcurrent: d.GetMaxConcurrent(), InFlight: d.GetInFlight(),
		Degraded: d.GetDegraded(), ShadowCode: d.GetShadowCode(),
	}
}

// forward sends req to m. When another replica could answer instead
// (failover), it waits at most FailoverAfter (or half the caller's
// remaining time) and reports a slower member as unavailable.
func (c *Cluster) forward(ctx context.Context, m cluster.Member, req *limiterv1.AllowRequest, failover bool) (*limiterv1.PeerDecision, error) {
	if !failover || c.cfg.FailoverAfter <= 0 {
		return c.node.Forward(ctx, m, req)
	}
	wait := c.cfg.FailoverAfter
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d)/2)
	}
	if wait <= 0 {
		return nil, fmt.Errorf("%w: no time left to wait for %s", cluster.ErrOwnerUnavailable, m.Name)
	}
	return c.node.ForwardWithin(ctx, m, req, wait)
}

// allowOwned decides req here (decideOwned), then runs a replication
// round if one is due.
func (c *Cluster) allowOwned(ctx context.Context, req *limiterv1.AllowRequest, p policy.Policy, anyway bool) (limiter.Result, error) {
	res, err := c.decideOwned(ctx, req, p, anyway)
	if err == nil {
		c.replicateIfDue()
	}
	return res, err
}

// decideOwned decides req here, first taking in the key's state from its
// peers if membership changed since this node last did. When some peer
// did not answer (now, or at a try less than 4 × SyncTimeout ago) it
// returns errUnsynced, so that a replica that did count the key's hits
// meanwhile decides instead, unless anyway is set: the last resort.
func (c *Cluster) decideOwned(ctx context.Context, req *limiterv1.AllowRequest, p policy.Policy, anyway bool) (limiter.Result, error) {
	c.gate.RLock()
	defer c.gate.RUnlock()
	if c.leaving.Load() {
		return limiter.Result{}, errLeaving // the caller tries the next replica
	}
	if !c.joined.Load() {
		return limiter.Result{}, errStarting // likewise
	}
	if ep, ok := c.needsSync(p, req.GetKey()); ok && !anyway {
		if !c.syncDue(p.Name, req.GetKey()) || !c.sync(ctx, p.Name, req.GetKey(), ep) {
			return limiter.Result{}, errUnsynced
		}
	}
	return c.svc.decideLocal(ctx, req)
}

// needsSync reports whether key may have state on another node that this
// node has not merged: membership changed less than a window ago and the
// key was not merged since.
func (c *Cluster) needsSync(p policy.Policy, key string) (uint64, bool) {
	ep := c.epoch.Load()
	if ep == 0 || c.node.Ring().Len() < 2 {
		return 0, false
	}
	horizon := p.Window + p.Window/time.Duration(max(p.Buckets, 1))
	if time.Since(time.Unix(0, c.changedAt.Load())) > horizon {
		return 0, false // whatever others held from before the change has expired
	}
	return ep, !c.lim.Synced(p.Name, key, ep)
}

// sync merges the copies of key held by its replicas (and the next member
// in hash order, the previous owner after a join). It reports whether
// every member asked answered; only then is the key marked merged.
func (c *Cluster) sync(ctx context.Context, policyName, key string, ep uint64) bool {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.SyncTimeout)
	defer cancel()
	// Peers that have not heard of this node yet join it at once (see
	// ExportState), so they stop deciding its keys.
	ctx = metadata.AppendToOutgoingContext(ctx, mdFromNode, c.node.Name(), mdFromGossip, c.node.GossipAddr())
	ref := []*limiterv1.KeyRef{{Policy: policyName, Key: key}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var got []*limiterv1.KeyState
	asked, answered := 0, 0
	for _, m := range c.node.Replicas(key, c.node.ReplicaCount()+1) {
		if m.Name == c.node.Name() {
			continue
		}
		asked++
		wg.Add(1)
		go func() {
			defer wg.Done()
			states, err := c.node.Fetch(ctx, m, ref)
			if err != nil {
				c.cfg.Logger.Debug("fetch key state", "key", key, "member", m.Name, "err", err)
				return
			}
			mu.Lock()
			answered++
			got = append(got, states...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, ks := range got {
		if err := c.lim.Merge(limiter.KeyState{Policy: ks.GetPolicy(), Key: ks.GetKey(), State: ks.GetState()}, false, ep); err != nil {
			c.cfg.Logger.Warn("merge fetched state", "key", key, "err", err)
		}
	}
	if answered < asked {
		// A peer did not answer (one still dialing after this node
		// restarted, a slow machine, a cut link). It may be the one that
		// decided the key while this node was away, so the key stays
		// unsynced and its calls go to that replica meanwhile. Marking it
		// synced forgot the missing copy for good: a restarted owner handed
		// out the quota its replicas had counted meanwhile (the flaky end of
		// TestKill9OwnerOverAdmission, first with no answer, then with one
		// of two).
		c.cfg.Logger.Warn("a peer did not answer for a key's state; the key stays unmerged and is retried later",
			"key", key, "asked", asked, "answered", answered)
		c.syncFailed(policyName, key)
		return false
	}
	c.syncDone(policyName, key)
	_ = c.lim.Merge(limiter.KeyState{Policy: policyName, Key: key}, false, ep)
	return true
}

// maxSyncBackoff bounds the keys remembered as waiting to retry a sync;
// past it the oldest are forgotten (and retried at once).
const maxSyncBackoff = 100_000

// syncDue reports whether a sync of key may be tried now: not within
// 4 × SyncTimeout of one that no peer answered, so a node cut off from its
// peers does not wait SyncTimeout on every call.
func (c *Cluster) syncDue(policyName, key string) bool {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	at, ok := c.syncRetry[policyName+"\x00"+key]
	return !ok || time.Now().After(at)
}

func (c *Cluster) syncFailed(policyName, key string) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if c.syncRetry == nil || len(c.syncRetry) >= maxSyncBackoff {
		c.syncRetry = map[string]time.Time{}
	}
	c.syncRetry[policyName+"\x00"+key] = time.Now().Add(4 * c.cfg.SyncTimeout)
}

func (c *Cluster) syncDone(policyName, key string) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if len(c.syncRetry) > 0 {
		delete(c.syncRetry, policyName+"\x00"+key)
	}
}

// release routes a Release to the owner of the key its lease names.
func (c *Cluster) release(ctx context.Context, req *limiterv1.ReleaseRequest) (int64, error) {
	lid, err := limiter.DecodeLeaseID(req.GetLeaseId())
	if err != nil {
		return 0, err
	}
	var lastErr error = cluster.ErrNoMembers
	for _, m := range c.node.Replicas(lid.Key, c.node.ReplicaCount()) {
		if m.Name == c.node.Name() {
			return c.releaseOwned(ctx, lid)
		}
		resp, err := c.node.ForwardRelease(ctx, m, req)
		c.cfg.Metrics.Forwarded("release", err)
		if err == nil {
			return resp.GetInFlight(), nil
		}
		if !errors.Is(err, cluster.ErrOwnerUnavailable) {
			return 0, err
		}
		lastErr = err
	}
	return 0, lastErr
}

// releaseOwned ends a lease held here, unless this node is handing its
// keys over, then runs a replication round if one is due.
func (c *Cluster) releaseOwned(ctx context.Context, lid limiter.LeaseID) (int64, error) {
	c.gate.RLock()
	if c.leaving.Load() {
		c.gate.RUnlock()
		return 0, errLeaving
	}
	n, err := c.lim.ReleaseID(ctx, lid)
	c.gate.RUnlock()
	if err == nil {
		c.replicateIfDue()
	}
	return n, err
}

// AllowLocal implements cluster.Handler: a peer forwarded req to this node
// as the key's owner.
func (c *Cluster) AllowLocal(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
	p, ok := c.lim.Policy(req.GetPolicy())
	if !ok {
		return nil, toStatus(fmt.Errorf("%w: %q", limiter.ErrUnknownPolicy, req.GetPolicy()))
	}
	if c.leaving.Load() {
		// A node that left is no longer in its own ring: it must not pass
		// calls on, or two nodes could hand a call back and forth.
		return nil, toStatus(errLeaving)
	}
	// While membership converges the caller may know less than this node:
	// pass the call on to the owner this node knows of. Each hop goes to a
	// member of higher rendezvous weight for the key (every node counts
	// itself, and a leaving node refuses above), so hops cannot loop.
	if owner, self := c.node.Owner(req.GetKey()); !self && owner.Name != "" {
		resp, err := c.forward(ctx, owner, req, true)
		c.cfg.Metrics.Forwarded("redirect", err)
		if err == nil || !errors.Is(err, cluster.ErrOwnerUnavailable) {
			if err != nil {
				return nil, toStatus(err)
			}
			return resp, nil
		}
		// The owner is unreachable from here too, or has not merged the
		// key's copies: decide with this copy, the last resort.
		res, err := c.allowOwned(ctx, req, p, false)
		if errors.Is(err, errUnsynced) {
			res, err = c.allowOwned(ctx, req, p, true)
		}
		if err != nil {
			return nil, c.svc.fail("Peer.Allow", req.GetRequestId(), err)
		}
		return toDecision(res), nil
	}
	res, err := c.allowOwned(ctx, req, p, false)
	if err != nil {
		return nil, c.svc.fail("Peer.Allow", req.GetRequestId(), err)
	}
	return toDecision(res), nil
}

// Immediate implements cluster.Handler: AllowLocal answers req without
// waiting when this node decides the key itself (it owns it, is neither
// starting nor leaving, and has merged the key's peer copies) and does not
// wait for fsync. Unknown policies are answered at once too.
func (c *Cluster) Immediate(req *limiterv1.AllowRequest) bool {
	if c.leaving.Load() || !c.joined.Load() || c.lim.Waits() {
		return false
	}
	if _, self := c.node.Owner(req.GetKey()); !self {
		return false
	}
	p, ok := c.lim.Policy(req.GetPolicy())
	if !ok {
		return true
	}
	_, sync := c.needsSync(p, req.GetKey())
	return !sync
}

// ReleaseLocal implements cluster.Handler.
func (c *Cluster) ReleaseLocal(ctx context.Context, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error) {
	lid, err := limiter.DecodeLeaseID(req.GetLeaseId())
	if err != nil {
		return nil, c.svc.fail("Peer.Release", "", err)
	}
	n, err := c.releaseOwned(ctx, lid)
	if err != nil {
		return nil, c.svc.fail("Peer.Release", "", err)
	}
	return &limiterv1.ReleaseResponse{InFlight: n}, nil
}

// ApplyReplica implements cluster.Handler: merges states sent by an owner
// (replication) or an old owner (hand-off). A replica takes its owner's
// leases as they are; an owner keeps the union.
func (c *Cluster) ApplyReplica(ctx context.Context, states []*limiterv1.KeyState) error {
	for _, ks := range states {
		_, owner := c.node.Owner(ks.GetKey())
		err := c.lim.Merge(limiter.KeyState{Policy: ks.GetPolicy(), Key: ks.GetKey(), State: ks.GetState()}, !owner, 0)
		if err != nil {
			c.cfg.Logger.Warn("apply replica state", "policy", ks.GetPolicy(), "key", ks.GetKey(), "err", err)
		}
	}
	return nil
}

// ExportState implements cluster.Handler. A new owner fetching its keys'
// state may not be known here yet (gossip is still spreading its join):
// then this node joins it first, so that from now on it routes the keys to
// their new owner instead of deciding them, and the state it returns is the
// last it decided.
func (c *Cluster) ExportState(ctx context.Context, refs []*limiterv1.KeyRef) ([]*limiterv1.KeyState, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		name, addr := first(md.Get(mdFromNode)), first(md.Get(mdFromGossip))
		if name != "" && addr != "" && !c.knows(name) {
			if _, err := c.node.Join(ctx, addr); err != nil {
				c.cfg.Logger.Warn("join a new member that fetched state", "member", name, "err", err)
			}
		}
		if name != "" {
			// It is up: stop waiting out a reconnect backoff to it, so this
			// node stops deciding its keys as a replica.
			c.node.Reconnect(name)
		}
	}
	var out []*limiterv1.KeyState
	for _, r := range refs {
		if st, ok := c.lim.State(r.GetPolicy(), r.GetKey()); ok {
			out = append(out, &limiterv1.KeyState{Policy: r.GetPolicy(), Key: r.GetKey(), State: st})
		}
	}
	return out, nil
}

// Metadata a node sends with Fetch so the callee can join it.
const (
	mdFromNode   = "x-limiterd-from-node"
	mdFromGossip = "x-limiterd-from-gossip"
)

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// knows reports whether name is in this node's ring.
func (c *Cluster) knows(name string) bool {
	for _, m := range c.node.Ring().Members() {
		if m.Name == name {
			return true
		}
	}
	return false
}

// KeyLocal implements cluster.Handler: an Admin read or reset routed here.
// A reset on the owner is spread to the replicas, or the next merge would
// bring the hits back.
func (c *Cluster) KeyLocal(ctx context.Context, req *limiterv1.PeerKeyRequest) (*limiterv1.KeyInfo, error) {
	info, err := c.admin.LocalKey(ctx, req.GetPolicy(), req.GetKey(), req.GetForget())
	if err != nil && !(req.GetForget() && errors.Is(err, limiter.ErrKeyNotFound)) {
		return nil, toStatus(err)
	}
	if req.GetForget() && !req.GetLocalOnly() {
		for _, m := range c.node.Replicas(req.GetKey(), c.node.ReplicaCount()+1) {
			if m.Name == c.node.Name() {
				continue
			}
			r := &limiterv1.PeerKeyRequest{Policy: req.GetPolicy(), Key: req.GetKey(), Forget: true, LocalOnly: true}
			if i, err := c.node.Key(ctx, m, r); err == nil && info == nil {
				info = i
			}
		}
	}
	if info == nil {
		return nil, toStatus(err)
	}
	return info, nil
}

// key answers Admin GetKey and ResetKey on the key's owner.
func (c *Cluster) key(ctx context.Context, policyName, key string, reset bool) (*limiterv1.KeyInfo, error) {
	req := &limiterv1.PeerKeyRequest{Policy: policyName, Key: key, Forget: reset}
	owner, self := c.node.Owner(key)
	if self {
		info, err := c.KeyLocal(ctx, req)
		if s, ok := status.FromError(err); ok && err != nil {
			return nil, &cluster.RemoteError{Peer: c.node.Name(), Code: s.Code(), Msg: s.Message()}
		}
		return info, err
	}
	return c.node.Key(ctx, owner, req)
}

// members lists the cluster for Admin ListMembers.
func (c *Cluster) members() []*limiterv1.Member {
	var out []*limiterv1.Member
	for _, m := range c.node.Members() {
		state := "alive"
		if !m.Alive {
			state = "dead"
		}
		out = append(out, &limiterv1.Member{Name: m.Name, GossipAddr: m.GossipAddr, GrpcAddr: m.GRPCAddr, State: state, Self: m.Name == c.node.Name()})
	}
	return out
}

// replicateLoop runs the replication rounds that decisions do not
// (replicateIfDue): its timer fires lullRounds intervals after the last
// round, in a lull after the last changes. After a round with nothing to
// send it sleeps until a key changes: every wake-up of an idle process
// costs CPU (about 70 us on a small VM), and 100 of them a second made up
// most of an idle node's CPU.
//
// Decisions do not push the timer back: resetting a Go timer to fire
// sooner than the runtime's poller was going to wake up wakes a thread to
// watch it (runtime.wakeNetPoller), which on an owner that sleeps between
// batches was a wake-up per round. The timer resets itself when it fires
// after a round that a decision ran.
func (c *Cluster) replicateLoop() {
	defer c.done.Done()
	iv := c.cfg.ReplicationInterval
	t := time.NewTimer(iv)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			c.replicateOnce(true)
			return
		case <-t.C:
		}
		if wait := time.Duration(c.lastRound.Load() + int64(iv) - c.cfg.Now().UnixNano()); wait > 0 {
			// A decision ran a round since; run the one after if none does.
			t.Reset(wait + (lullRounds-1)*iv)
			continue
		}
		if c.round() {
			t.Reset(lullRounds * iv)
			continue
		}
		// Nothing changed in a whole round: sleep until something does.
		select {
		case <-c.stop:
			c.replicateOnce(true)
			return
		case <-c.lim.Changes():
		}
		c.round()
		t.Reset(lullRounds * iv)
	}
}

// lullRounds is how many replication intervals replicateLoop lets pass
// after the last round before it runs one. Decisions run a round whenever
// one is due, so the hits not yet sent are still those of at most one
// interval (made before the next was due); in a lull they wait this long
// to go out.
const lullRounds = 4

// replicateIfDue runs a replication round on the calling goroutine, right
// after a decision, once an interval has passed since the last round
// began. On a node that decides calls, rounds thus ride on wake-ups it has
// anyway, instead of a ticker's (replicateLoop's timer, which fires
// lullRounds intervals after the last round). Every decision made an interval or more
// after the last round starts one, so the hits not yet sent are never more
// than those of one interval, as with a ticker.
func (c *Cluster) replicateIfDue() {
	if c.cfg.Now().UnixNano()-c.lastRound.Load() < int64(c.cfg.ReplicationInterval) {
		return
	}
	c.round()
}

// round runs one replication round (replicateOnce) unless one is under way
// or the cluster stopped; it reports whether there may be more to send.
func (c *Cluster) round() bool {
	if !c.roundMu.TryLock() {
		return true
	}
	defer c.roundMu.Unlock()
	select {
	case <-c.stop:
		return false // Stop sends the last round
	default:
	}
	c.lastRound.Store(c.cfg.Now().UnixNano())
	return c.replicateOnce(false)
}

// replicateOnce sends every key changed since the last call, one batch per
// replica. The batches go without waiting (Node.ReplicateAsync: a replica
// answers only failures, so a round costs it no write and this node no
// wake-up for its answer), except in a final round (before stopping or
// leaving), which waits for every replica's answer. States a replica may
// not have are sent again next round (requeue). It reports whether there
// was anything to send.
func (c *Cluster) replicateOnce(final bool) (busy bool) {
	select {
	case <-c.lim.Changes(): // taken below; a key queued from here on leaves a new token
	default:
	}
	changed := c.lim.TakeChanged(c.node.Ring().Len() > 1)
	if len(changed) == 0 {
		return false
	}
	start := time.Now()
	batches := map[string][]*limiterv1.KeyState{}
	targets := map[string]cluster.Member{}
	msgs := make([]limiterv1.KeyState, len(changed)) // one allocation for the round
	var reps []cluster.Member
	self, ring := c.node.Name(), c.node.Ring()
	for i, ks := range changed {
		st := &msgs[i]
		st.Policy, st.Key, st.State = ks.Policy, ks.Key, ks.State
		reps = ring.AppendReplicas(reps[:0], ks.Key, c.node.ReplicaCount())
		for _, m := range reps {
			if m.Name != self {
				batches[m.Name] = append(batches[m.Name], st)
				targets[m.Name] = m
			}
		}
	}
	// The keys of states a replica may not have go again next round: a
	// replica that missed a degraded decision would undercount when it
	// owns the key.
	sent := func(name string, lost []*limiterv1.KeyState, err error) {
		if err != nil {
			c.cfg.Logger.Debug("replicate", "member", name, "keys", len(lost), "err", err)
			c.requeue(lost)
			return
		}
		c.cfg.Metrics.ReplicationLag(time.Since(start))
	}
	if !final {
		// ReplicateAsync writes a replica's batch on this goroutine when
		// its connection takes it at once, and on a goroutine of its own
		// otherwise, so that a replica whose connection is stuck (a write
		// can take up to a second) holds up no other, nor the forwarded
		// calls this goroutine may be answering. While one batch is still
		// being written, that replica's keys wait for the next round, which
		// keeps each replica's updates in order.
		for name, states := range batches {
			if !c.startSend(name) {
				c.requeue(states)
				continue
			}
			c.node.ReplicateAsync(targets[name], states, func(lost []*limiterv1.KeyState, err error) { sent(name, lost, err) },
				func() { c.endSend(name) })
		}
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for name, states := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lost []*limiterv1.KeyState
			err := c.node.Replicate(ctx, targets[name], states)
			if err != nil {
				lost = states
			}
			sent(name, lost, err)
		}()
	}
	wg.Wait()
	return true
}

// startSend claims the right to write a replica batch to member; false
// while the last one is still being written.
func (c *Cluster) startSend(member string) bool {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.sending[member] {
		return false
	}
	if c.sending == nil {
		c.sending = map[string]bool{}
	}
	c.sending[member] = true
	return true
}

func (c *Cluster) endSend(member string) {
	c.sendMu.Lock()
	delete(c.sending, member)
	c.sendMu.Unlock()
}

// requeue has the keys of states a member may not have sent again in the
// next round, with the state they have then (Limiter.Requeue).
func (c *Cluster) requeue(states []*limiterv1.KeyState) {
	for _, st := range states {
		c.lim.Requeue(st.GetPolicy(), st.GetKey())
	}
}

// OnChange is the cluster.Config.OnChange callback: it starts a new
// membership epoch (keys are merged with their peers' copies on first use)
// and pushes the keys this node no longer owns to their new owners.
func (c *Cluster) OnChange(ch cluster.Change) {
	// With rendezvous hashing another member's arrival moves keys only to
	// it, never to this node; a departure may move its keys here. (This
	// node's own arrival is counted by Start.)
	// If this node was alone, the arrival is this node joining a cluster
	// (a join that failed at start and succeeded later, or a healed
	// partition): its keys may have a past elsewhere.
	if ch.After != nil && ch.Member.Name == ch.After.Self() || !c.nodeReady.Load() {
		return // this node's own arrival (Start counts it), or before Start
	}
	joinedCluster := ch.Kind == cluster.MemberJoined && ch.Before != nil && ch.Before.Len() <= 1
	switch {
	case ch.Kind == cluster.MemberLeft, joinedCluster && c.peersHoldState(context.Background()):
		c.changedAt.Store(time.Now().UnixNano())
		c.epoch.Add(1)
	case joinedCluster:
		// Members joined this node, which started alone, holding no state:
		// no key of this node's has a past elsewhere, so its first
		// decisions need no merge (as Joined finds for a node that joins).
		c.epoch.CompareAndSwap(1, 0)
	}
	if ch.Before == nil || ch.After == nil || ch.After.Len() == 0 {
		return
	}
	self := ch.After.Self()
	moved := map[string][]*limiterv1.KeyState{}
	owners := map[string]cluster.Member{}
	for _, ks := range c.lim.Export(func(_, key string) bool {
		before, wasOwner := ch.Before.Owner(key)
		after, isOwner := ch.After.Owner(key)
		return wasOwner && !isOwner && before.Name != after.Name
	}) {
		after, _ := ch.After.Owner(ks.Key)
		if after.Name == "" || after.Name == self {
			continue
		}
		moved[after.Name] = append(moved[after.Name], &limiterv1.KeyState{Policy: ks.Policy, Key: ks.Key, State: ks.State})
		owners[after.Name] = after
	}
	c.push(moved, owners)
}

// Leave takes this node out of the cluster without losing a hit: it stops
// deciding (calls wait on the gate), sends the last changes to the
// replicas, leaves the gossip ring, pushes every key to its owner among the
// remaining members, and only then lets the waiting calls go, with
// UNAVAILABLE, so their nodes retry on the new owner, which has the state.
// Call it after Service.Drain, while the Peer service still answers.
func (c *Cluster) Leave(ctx context.Context) error {
	c.leaving.Store(true)
	c.gate.Lock()
	defer c.gate.Unlock()
	c.replicateOnce(true)
	err := c.node.Leave(ctx)
	moved := map[string][]*limiterv1.KeyState{}
	owners := map[string]cluster.Member{}
	for _, ks := range c.lim.Export(nil) {
		m, self := c.node.Owner(ks.Key)
		if self || m.Name == "" {
			continue
		}
		moved[m.Name] = append(moved[m.Name], &limiterv1.KeyState{Policy: ks.Policy, Key: ks.Key, State: ks.State})
		owners[m.Name] = m
	}
	c.push(moved, owners)
	return err
}

func (c *Cluster) push(moved map[string][]*limiterv1.KeyState, owners map[string]cluster.Member) {
	if len(moved) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.HandoffTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for name, states := range moved {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.node.PushState(ctx, owners[name], states)
			c.cfg.Logger.Info("handed keys to their new owner", "member", name, "keys", len(states), "err", err)
		}()
	}
	wg.Wait()
}

// OnPolicy is the cluster.Config.OnPolicy callback: a policy change made on
// another node (or learned by anti-entropy) is applied here when newer.
func (c *Cluster) OnPolicy(e cluster.PolicyEntry) {
	rec := policy.Record{Policy: policy.Policy{Name: e.Name}, Version: e.Version, Deleted: e.Deleted}
	if !e.Deleted {
		if err := rec.UnmarshalBinary(e.Data); err != nil {
			c.cfg.Logger.Warn("bad policy from a peer", "policy", e.Name, "err", err)
			return
		}
		rec.Version = e.Version
	}
	if _, err := c.lim.ApplyPolicyRecord(context.Background(), rec); err != nil {
		c.cfg.Logger.Warn("apply policy from a peer", "policy", e.Name, "err", err)
	}
}

// publish spreads a policy change made here.
func (c *Cluster) publish(rec policy.Record) {
	var err error
	if rec.Deleted {
		err = c.node.DeletePolicy(rec.Policy.Name, rec.Version)
	} else {
		var b []byte
		if b, err = rec.MarshalBinary(); err == nil {
			err = c.node.SetPolicy(rec.Policy.Name, b, rec.Version)
		}
	}
	if err != nil && !errors.Is(err, cluster.ErrStaleVersion) {
		c.cfg.Logger.Warn("spread policy change", "policy", rec.Policy.Name, "err", err)
	}
}

// PublishPolicies spreads every policy change this node knows of (from its
// store), so the cluster converges on the newest version of each.
func (c *Cluster) PublishPolicies() {
	for _, rec := range c.lim.PolicyRecords() {
		c.publish(rec)
	}
}

var _ cluster.Handler = (*Cluster)(nil)
