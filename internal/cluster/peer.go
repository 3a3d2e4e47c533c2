package cluster

import (
	"context"
	"errors"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// Handler is what the Peer service calls on the owner of a key: the
// server's local decision path and its state store. It is declared here
// because this package calls it, as memberlist declares its Delegate.
//
// Methods are called concurrently, including for the same key. An error
// should be a gRPC status error (status.Error): its code and message reach
// the forwarding node as a *RemoteError. A plain error arrives as
// codes.Unknown, and context errors as DeadlineExceeded or Canceled.
type Handler interface {
	// AllowLocal decides req on this node, as the key's owner.
	AllowLocal(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error)
	// Immediate reports whether AllowLocal(req) answers without waiting:
	// no call to a peer, no fsync. The Peer service decides such items one
	// after another on the batch's own goroutine, and every other item on a
	// goroutine of its own. When unsure, report false.
	Immediate(req *limiterv1.AllowRequest) bool
	// ReleaseLocal ends a lease held on this node.
	ReleaseLocal(ctx context.Context, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error)
	// ApplyReplica merges key states sent by Replicate or PushState into
	// the local store; of two states for a key the higher Version wins.
	ApplyReplica(ctx context.Context, states []*limiterv1.KeyState) error
	// ExportState returns the states this node holds for refs, leaving out
	// keys it does not know.
	ExportState(ctx context.Context, refs []*limiterv1.KeyRef) ([]*limiterv1.KeyState, error)
	// KeyLocal reads or resets one key on this node (Admin calls routed to
	// the key's owner, or a reset spread to a replica).
	KeyLocal(ctx context.Context, req *limiterv1.PeerKeyRequest) (*limiterv1.KeyInfo, error)
}

// RegisterPeerService registers the limiter.v1.Peer service on s (the same
// server as limiter.v1.Limiter), answering with h. Call it before
// s.Serve, and start serving before Join.
func (n *Node) RegisterPeerService(s grpc.ServiceRegistrar, h Handler) {
	ps := &peerServer{h: h}
	limiterv1.RegisterPeerServer(s, ps)
	if n.wire != nil && n.wire.ps.Swap(ps) == nil {
		n.wire.wg.Add(1)
		go n.wire.serve()
	}
}

// peerServer implements limiterv1.PeerServer over a Handler.
type peerServer struct {
	limiterv1.UnimplementedPeerServer
	h Handler
}

// AllowBatch runs every item under its own deadline: those the handler
// decides at once (Handler.Immediate) one after another on this goroutine,
// each other one on a goroutine of its own, started first. Nearly every
// item is immediate, and a goroutine per item cost more than the decisions
// themselves: on a small VM each hand-off that wakes a thread costs tens of
// microseconds.
func (s *peerServer) AllowBatch(ctx context.Context, req *limiterv1.PeerAllowBatchRequest) (*limiterv1.PeerAllowBatchResponse, error) {
	inline, _ := s.immediate(req.GetItems())
	return s.allowBatch(ctx, req.GetItems(), inline), nil
}

// immediate reports which items the handler decides at once, and whether
// all of them are.
func (s *peerServer) immediate(items []*limiterv1.PeerAllowItem) (inline []bool, all bool) {
	inline = make([]bool, len(items))
	all = true
	for i, it := range items {
		r := it.GetRequest()
		inline[i] = r != nil && s.h.Immediate(r)
		all = all && inline[i]
	}
	return inline, all
}

// allowBatch runs items, those marked inline (immediate) on this
// goroutine.
func (s *peerServer) allowBatch(ctx context.Context, items []*limiterv1.PeerAllowItem, inline []bool) *limiterv1.PeerAllowBatchResponse {
	results := make([]*limiterv1.PeerAllowResult, len(items))
	// The results and their decision wrappers come in two allocations for
	// the batch rather than two per item.
	slab := make([]limiterv1.PeerAllowResult, len(items))
	decided := make([]limiterv1.PeerAllowResult_Decision, len(items))
	immediate := slices.Clone(inline)
	run := func(i int) {
		resp, st := runItem(ctx, items[i].GetTimeout(), items[i].GetRequest(), s.h.AllowLocal, immediate[i])
		results[i] = &slab[i]
		if st != nil {
			slab[i].Result = &limiterv1.PeerAllowResult_Status{Status: st}
		} else {
			decided[i].Decision = resp
			slab[i].Result = &decided[i]
		}
	}
	if len(items) == 1 {
		inline[0] = true // a goroutine would only add a hand-off
	}
	var wg sync.WaitGroup
	for i, ok := range inline {
		if ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(i)
		}()
	}
	for i, ok := range inline {
		if ok {
			run(i)
		}
	}
	wg.Wait()
	return &limiterv1.PeerAllowBatchResponse{Results: results}
}

// ReleaseBatch is AllowBatch for releases.
func (s *peerServer) ReleaseBatch(ctx context.Context, req *limiterv1.PeerReleaseBatchRequest) (*limiterv1.PeerReleaseBatchResponse, error) {
	items := req.GetItems()
	results := make([]*limiterv1.PeerReleaseResult, len(items))
	runAll(len(items), func(i int) {
		resp, st := runItem(ctx, items[i].GetTimeout(), items[i].GetRequest(), s.h.ReleaseLocal, false)
		if st != nil {
			results[i] = &limiterv1.PeerReleaseResult{Result: &limiterv1.PeerReleaseResult_Status{Status: st}}
		} else {
			results[i] = &limiterv1.PeerReleaseResult{Result: &limiterv1.PeerReleaseResult_Response{Response: resp}}
		}
	})
	return &limiterv1.PeerReleaseBatchResponse{Results: results}, nil
}

// Replicate applies replica updates.
func (s *peerServer) Replicate(ctx context.Context, req *limiterv1.ReplicateRequest) (*limiterv1.ReplicateResponse, error) {
	if err := s.h.ApplyReplica(ctx, req.GetStates()); err != nil {
		return nil, toRPCStatus(err)
	}
	return &limiterv1.ReplicateResponse{}, nil
}

// PushState applies handed-off state.
func (s *peerServer) PushState(ctx context.Context, req *limiterv1.PushStateRequest) (*limiterv1.PushStateResponse, error) {
	if err := s.h.ApplyReplica(ctx, req.GetStates()); err != nil {
		return nil, toRPCStatus(err)
	}
	return &limiterv1.PushStateResponse{}, nil
}

// FetchState exports state.
func (s *peerServer) FetchState(ctx context.Context, req *limiterv1.FetchStateRequest) (*limiterv1.FetchStateResponse, error) {
	states, err := s.h.ExportState(ctx, req.GetRefs())
	if err != nil {
		return nil, toRPCStatus(err)
	}
	resp := &limiterv1.FetchStateResponse{States: states}
	if kh, ok := s.h.(interface{ KeysHeld() int64 }); ok {
		resp.KeysHeld = kh.KeysHeld()
	}
	return resp, nil
}

// runAll calls f(0..n-1), concurrently when there is more than one.
func runAll(n int, f func(int)) {
	if n == 1 {
		f(0)
		return
	}
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

// runItem runs one forwarded call under the caller's remaining budget.
// Exactly one of the results is non-nil. An immediate call (one the
// handler answers without waiting, Handler.Immediate) gets no context of
// its own: a budget left is all it needs, and a timer context per item was
// 3.5% of an owner's CPU under load.
func runItem[Q comparable, R any](ctx context.Context, timeout *durationpb.Duration, req Q, fn func(context.Context, Q) (*R, error), immediate bool) (*R, *limiterv1.ItemStatus) {
	var zero Q
	if req == zero {
		return nil, &limiterv1.ItemStatus{Code: int32(codes.InvalidArgument), Message: "cluster: item without a request"}
	}
	if timeout != nil {
		d := timeout.AsDuration()
		if d <= 0 {
			return nil, &limiterv1.ItemStatus{Code: int32(codes.DeadlineExceeded), Message: "cluster: deadline ran out before the owner got the call"}
		}
		if !immediate {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
	}
	resp, err := fn(ctx, req)
	if err != nil {
		st := status.Convert(toRPCStatus(err))
		return nil, &limiterv1.ItemStatus{Code: int32(st.Code()), Message: st.Message()}
	}
	if resp == nil {
		return nil, &limiterv1.ItemStatus{Code: int32(codes.Internal), Message: "cluster: handler returned no response"}
	}
	return resp, nil
}

// toRPCStatus keeps a status error's code, maps bare context errors to
// their codes and everything else to Unknown.
func toRPCStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unknown, err.Error())
}

// Key runs an Admin key read or reset on this node.
func (s *peerServer) Key(ctx context.Context, req *limiterv1.PeerKeyRequest) (*limiterv1.PeerKeyResponse, error) {
	info, err := s.h.KeyLocal(ctx, req)
	if err != nil {
		return nil, toRPCStatus(err)
	}
	return &limiterv1.PeerKeyResponse{Key: info}, nil
}
