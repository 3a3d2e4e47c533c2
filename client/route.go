package client

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/limiterd/limiterd/internal/cluster"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// DefaultRoutingRefresh is how often a routing client re-reads the member
// list when WithRouting is given zero.
const DefaultRoutingRefresh = time.Second

// WithRouting sends each Allow straight to the node that owns its key,
// instead of to the target, which would forward it there: one network hop
// and one node's work less per call. The client reads the member list from
// the target (Admin/ListMembers; any client token may call it) now and
// every refresh (zero: DefaultRoutingRefresh), hashes keys to members as
// the nodes do, and keeps one connection per member, dialed with the same
// options as the target.
//
// Routing is an optimization, never a condition for a right answer. A call
// goes to the target when the member list is not known yet or could not be
// read, when the owner's connection is not ready, and when the owner
// answers UNAVAILABLE (it is draining or gone; such a call was not
// decided). While membership changes the client's view may lag the nodes':
// a node that no longer owns a key forwards the call to the one that does.
// The gRPC address each member gossips (its --grpc-addr listener)
// must be reachable from the client; a member whose connection never
// becomes ready is simply not routed to. Release always goes to the target.
func WithRouting(refresh time.Duration) Option {
	return func(o *options) {
		if refresh <= 0 {
			refresh = DefaultRoutingRefresh
		}
		o.routing = refresh
	}
}

// router keeps the ring and a connection per member.
type router struct {
	admin limiterv1.AdminClient
	dial  []grpc.DialOption
	every time.Duration

	routes atomic.Pointer[routes]
	mu     sync.Mutex // serializes refresh and close
	closed bool
	ctx    context.Context // canceled by close, so Close never waits out a ListMembers
	cancel context.CancelFunc
	done   chan struct{}
	err    atomic.Pointer[error] // the last refresh's error, nil when it worked
}

// routes is one immutable view of the cluster.
type routes struct {
	ring  *cluster.Ring
	conns map[string]*memberConn // by member name
}

type memberConn struct {
	addr    string
	conn    *grpc.ClientConn
	limiter limiterv1.LimiterClient
}

func newRouter(admin limiterv1.AdminClient, dial []grpc.DialOption, every time.Duration) *router {
	r := &router{admin: admin, dial: dial, every: every, done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	go r.run()
	return r
}

func (r *router) run() {
	defer close(r.done)
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		r.refresh()
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refresh reads the member list and swaps in a new view. On an error the
// old view stays.
func (r *router) refresh() {
	ctx, cancel := context.WithTimeout(r.ctx, max(r.every, time.Second))
	defer cancel()
	res, err := r.admin.ListMembers(ctx, &limiterv1.ListMembersRequest{})
	if err != nil {
		if r.ctx.Err() == nil {
			r.err.Store(&err)
		}
		return
	}
	r.err.Store(nil)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	old := r.routes.Load()
	next := &routes{conns: map[string]*memberConn{}}
	var members []cluster.Member
	for _, m := range res.GetMembers() {
		if m.GetState() != "alive" || m.GetName() == "" || m.GetGrpcAddr() == "" {
			continue
		}
		members = append(members, cluster.Member{Name: m.GetName(), GRPCAddr: m.GetGrpcAddr(), Alive: true})
		if old != nil {
			if mc := old.conns[m.GetName()]; mc != nil && mc.addr == m.GetGrpcAddr() {
				next.conns[m.GetName()] = mc
				continue
			}
		}
		conn, err := grpc.NewClient(m.GetGrpcAddr(), r.dial...)
		if err != nil {
			continue // an address gRPC cannot parse: not routed to
		}
		conn.Connect()
		next.conns[m.GetName()] = &memberConn{addr: m.GetGrpcAddr(), conn: conn, limiter: limiterv1.NewLimiterClient(conn)}
	}
	next.ring = cluster.NewRing("", members, nil)
	r.routes.Store(next)
	if old != nil {
		for name, mc := range old.conns {
			if next.conns[name] != mc {
				// Calls in flight on it fail UNAVAILABLE and go to the
				// target (see Allow).
				_ = mc.conn.Close()
			}
		}
	}
}

// pick returns the limiter client of key's owner when its connection is
// ready, else nil.
func (r *router) pick(key string) limiterv1.LimiterClient {
	rt := r.routes.Load()
	if rt == nil || rt.ring.Len() == 0 {
		return nil
	}
	m, _ := rt.ring.Owner(key)
	mc := rt.conns[m.Name]
	if mc == nil {
		return nil
	}
	switch mc.conn.GetState() {
	case connectivity.Ready:
		return mc.limiter
	case connectivity.Idle:
		mc.conn.Connect()
	}
	return nil
}

func (r *router) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	r.cancel()
	r.mu.Unlock()
	<-r.done
	if rt := r.routes.Load(); rt != nil {
		for _, mc := range rt.conns {
			_ = mc.conn.Close()
		}
	}
}

// LimiterFor returns the raw limiter.v1.Limiter client that Allow would use
// for key now: its owner's with WithRouting and a ready connection to it,
// else the target's.
func (c *Client) LimiterFor(key string) limiterv1.LimiterClient {
	if c.router != nil {
		if l := c.router.pick(key); l != nil {
			return l
		}
	}
	return c.limiter
}

// RoutingError returns why the member list could not be read at the last
// attempt, or nil (also without WithRouting).
func (c *Client) RoutingError() error {
	if c.router == nil {
		return nil
	}
	if p := c.router.err.Load(); p != nil {
		return *p
	}
	return nil
}

// allow runs one Allow on key's owner when routing picks one, falling back
// to the target when the owner answers UNAVAILABLE.
func (c *Client) allow(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.AllowResponse, error) {
	if c.router != nil {
		if l := c.router.pick(req.GetKey()); l != nil {
			res, err := l.Allow(ctx, req)
			if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
				return res, err
			}
		}
	}
	return c.limiter.Allow(ctx, req)
}
