package cluster

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// Forward asks member, the owner of req's key, to run req, and returns its
// answer. Concurrent forwards to the same member share AllowBatch RPCs (see
// Config.BatchSize and Config.BatchWait) over one long-lived connection.
// ctx's deadline travels with the call (Config.ForwardTimeout when it has
// none); Forward returns as soon as ctx ends.
//
// Errors: ErrNoMembers for a zero Member; ErrOwnerUnavailable when member
// cannot be reached (try the next replica); ErrDeadline (which also matches
// context.DeadlineExceeded) when time ran out; a *RemoteError (matching
// ErrRemote) when the owner answered the item with an error status;
// context.Canceled when ctx was cancelled. It is safe for concurrent use.
func (n *Node) Forward(ctx context.Context, member Member, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
	return n.ForwardWithin(ctx, member, req, 0)
}

// ForwardWithin is Forward that gives up after wait (when positive and
// sooner than ctx's deadline; zero is Forward) with an error matching ErrOwnerUnavailable,
// so that the caller can fail over to another replica. It costs less than
// Forward under a context.WithTimeout: a timer context per call, registered
// with its parent, was 2.6% of a forwarding node's CPU.
func (n *Node) ForwardWithin(ctx context.Context, member Member, req *limiterv1.AllowRequest, wait time.Duration) (*limiterv1.PeerDecision, error) {
	p, err := n.fw.peer(member)
	if err != nil {
		return nil, fmt.Errorf("forward %q to %s: %w", req.GetKey(), member.Name, err)
	}
	return submit(ctx, p.allow, req, n.cfg.ForwardTimeout, member.Name, wait)
}

// ForwardRelease is Forward for Release: member must own the key the lease
// id names. Batched with other releases to the same member.
func (n *Node) ForwardRelease(ctx context.Context, member Member, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error) {
	p, err := n.fw.peer(member)
	if err != nil {
		return nil, fmt.Errorf("forward release to %s: %w", member.Name, err)
	}
	return submit(ctx, p.release, req, n.cfg.ForwardTimeout, member.Name, 0)
}

// Replicate sends state updates to member, a replica of the keys, and waits
// for it to apply them. Errors are classified like Forward's. The caller
// does its own batching and runs it off the request path.
func (n *Node) Replicate(ctx context.Context, member Member, states []*limiterv1.KeyState) error {
	p, err := n.fw.peer(member)
	for _, chunk := range chunks(states) {
		if err != nil {
			break
		}
		req := &limiterv1.ReplicateRequest{States: chunk}
		if p.wire != nil {
			err = p.wire.request(ctx, frameReplicate, req)
			continue
		}
		_, err = p.client.Replicate(ctx, req)
		err = callError(ctx, member.Name, err)
	}
	if err != nil {
		return fmt.Errorf("replicate %d keys to %s: %w", len(states), member.Name, err)
	}
	return nil
}

// ReplicateAsync is Replicate without the wait, for the replication loop:
// it returns at once, without waiting on the connection, calls written
// once the states are written (or failed to be), and calls done once,
// with nil when member has applied every state, or with the states it may
// not have and why. On the peer wire the updates go quiet: member answers
// only a failure, and the next answer it writes on the connection, for a
// forwarded batch or a confirmation asked for after quietConfirmAfter,
// confirms them. That spares member a write and this node a wake-up per
// update. When the connection can take the update at once it is written
// on the calling goroutine; otherwise (no connection yet, a write under
// way, a full socket buffer, TLS, more than one chunk) on a goroutine of
// its own. done and written may run on the connection's reader or on the
// caller's goroutine before ReplicateAsync returns: they must not block.
func (n *Node) ReplicateAsync(member Member, states []*limiterv1.KeyState, done func(lost []*limiterv1.KeyState, err error), written func()) {
	p, err := n.fw.peer(member)
	if err != nil {
		done(states, fmt.Errorf("replicate %d keys to %s: %w", len(states), member.Name, err))
		written()
		return
	}
	if p.wire == nil {
		go func() {
			defer written()
			ctx, cancel := context.WithTimeout(context.Background(), wireQuietTimeout)
			defer cancel()
			if err := n.Replicate(ctx, member, states); err != nil {
				done(states, err)
				return
			}
			done(nil, nil)
		}()
		return
	}
	parts := chunks(states)
	if len(parts) == 0 {
		done(nil, nil)
		written()
		return
	}
	var mu sync.Mutex
	left := len(parts)
	var lost []*limiterv1.KeyState
	var first error
	confirm := func(chunk []*limiterv1.KeyState) func(error) {
		return func(err error) {
			mu.Lock()
			if err != nil {
				lost = append(lost, chunk...)
				first = cmp.Or(first, err)
			}
			left--
			last := left == 0
			mu.Unlock()
			if !last {
				return
			}
			if first != nil {
				done(lost, fmt.Errorf("replicate %d keys to %s: %w", len(lost), member.Name, first))
				return
			}
			done(nil, nil)
		}
	}
	if len(parts) == 1 && p.wire.trySendQuiet(&limiterv1.ReplicateRequest{States: parts[0]}, confirm(parts[0]), written) {
		return
	}
	go func() {
		defer written()
		for _, chunk := range parts {
			p.wire.sendQuiet(&limiterv1.ReplicateRequest{States: chunk}, confirm(chunk))
		}
	}()
}

// PushState hands keys to member, their new owner (for example before this
// node leaves), and waits for it to apply them. Errors as for Replicate.
func (n *Node) PushState(ctx context.Context, member Member, states []*limiterv1.KeyState) error {
	p, err := n.fw.peer(member)
	for _, chunk := range chunks(states) {
		if err != nil {
			break
		}
		_, err = p.client.PushState(ctx, &limiterv1.PushStateRequest{States: chunk})
		err = callError(ctx, member.Name, err)
	}
	if err != nil {
		return fmt.Errorf("push %d keys to %s: %w", len(states), member.Name, err)
	}
	return nil
}

// Fetch asks member for the state it holds for refs; keys it does not know
// are left out of the result. Errors as for Replicate.
func (n *Node) Fetch(ctx context.Context, member Member, refs []*limiterv1.KeyRef) ([]*limiterv1.KeyState, error) {
	p, err := n.fw.peer(member)
	var resp *limiterv1.FetchStateResponse
	if err == nil {
		resp, err = p.client.FetchState(ctx, &limiterv1.FetchStateRequest{Refs: refs})
		err = callError(ctx, member.Name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %d keys from %s: %w", len(refs), member.Name, err)
	}
	return resp.GetStates(), nil
}

// maxChunkBytes bounds one Replicate or PushState message, well under the
// 64 KiB a limiterd server accepts per message.
const maxChunkBytes = 32 << 10

// chunks splits states into runs whose encoding stays under maxChunkBytes.
func chunks(states []*limiterv1.KeyState) [][]*limiterv1.KeyState {
	var out [][]*limiterv1.KeyState
	start, size := 0, 0
	for i, st := range states {
		n := proto.Size(st) + 8
		if i > start && size+n > maxChunkBytes {
			out = append(out, states[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(states) {
		out = append(out, states[start:])
	}
	return out
}

// KeysHeld asks member how many keys it holds state for (a Handler that
// implements KeysHeld() int64 answers; others report 0).
func (n *Node) KeysHeld(ctx context.Context, member Member) (int64, error) {
	p, err := n.fw.peer(member)
	var resp *limiterv1.FetchStateResponse
	if err == nil {
		resp, err = p.client.FetchState(ctx, &limiterv1.FetchStateRequest{})
		err = callError(ctx, member.Name, err)
	}
	if err != nil {
		return 0, fmt.Errorf("keys held by %s: %w", member.Name, err)
	}
	return resp.GetKeysHeld(), nil
}

// Key reads or resets one key on member (Admin calls). Errors as for
// Replicate.
func (n *Node) Key(ctx context.Context, member Member, req *limiterv1.PeerKeyRequest) (*limiterv1.KeyInfo, error) {
	p, err := n.fw.peer(member)
	var resp *limiterv1.PeerKeyResponse
	if err == nil {
		resp, err = p.client.Key(ctx, req)
		err = callError(ctx, member.Name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("key %q on %s: %w", req.GetKey(), member.Name, err)
	}
	return resp.GetKey(), nil
}

// forwarder owns one client connection and one pair of batchers per peer.
type forwarder struct {
	size int
	wait time.Duration
	opts []grpc.DialOption
	log  *slog.Logger

	mu     sync.Mutex
	peers  map[string]*peer
	closed bool

	faults  *Faults     // test-only fault injection (fault.go); nil in production
	self    string      // this node's name, for faults
	onBatch func(n int) // Config.OnBatch
	onWire  func(WireEvent)

	wire       bool // this node speaks the wire (Config.WireAddr set)
	wireTLS    *tls.Config
	wireSecret string
}

func newForwarder(cfg Config, log *slog.Logger) *forwarder {
	// Defaults first: Config.DialOptions come after them, so their transport
	// credentials (TLS) replace the plain-text default.
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	}, cfg.DialOptions...)
	return &forwarder{size: cfg.BatchSize, wait: cfg.BatchWait, opts: opts, log: log, peers: make(map[string]*peer),
		faults: cfg.Faults, self: cfg.NodeName, onBatch: cfg.OnBatch, onWire: cfg.OnWire,
		wire: cfg.WireAddr != "", wireTLS: cfg.WireDialTLS, wireSecret: cfg.WireSecret}
}

// peer is the client side of one member.
type peer struct {
	name    string
	addr    string
	wireTo  string      // the member's wire address; "" for gRPC only
	wire    *wireClient // nil for gRPC only
	conn    *grpc.ClientConn
	client  limiterv1.PeerClient
	onBatch func(n int)
	allow   *batcher[*limiterv1.AllowRequest, *limiterv1.PeerDecision]
	release *batcher[*limiterv1.ReleaseRequest, *limiterv1.ReleaseResponse]
	// policy is the policy name of the last decision decoded from the
	// peer wire (decodeAllowAnswers), whose string the next ones share.
	policy atomic.Pointer[string]
}

// peer returns the client for m, connecting lazily; a changed gRPC address
// replaces the old connection.
func (f *forwarder) peer(m Member) (*peer, error) {
	if m.Name == "" || m.GRPCAddr == "" {
		return nil, ErrNoMembers
	}
	if f.faults != nil && f.faults.callCut(f.self, m.Name) { // test-only fault injection (fault.go)
		return nil, fmt.Errorf("%w: %s is across an injected partition", ErrOwnerUnavailable, m.Name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	if p, ok := f.peers[m.Name]; ok {
		if p.addr == m.GRPCAddr && p.wireTo == m.WireAddr {
			return p, nil
		}
		delete(f.peers, m.Name)
		go p.close()
	}
	conn, err := grpc.NewClient(m.GRPCAddr, f.opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %v", ErrOwnerUnavailable, m.GRPCAddr, err)
	}
	p := &peer{name: m.Name, addr: m.GRPCAddr, wireTo: m.WireAddr, conn: conn, client: limiterv1.NewPeerClient(conn), onBatch: f.onBatch}
	sendAllow := inBackground(p.sendAllow)
	if m.WireAddr != "" && f.wire {
		p.wire = newWireClient(m.Name, m.WireAddr, f.wireTLS, f.wireSecret, f.log, f.onWire)
		sendAllow = p.sendAllowWire
	}
	p.allow = &batcher[*limiterv1.AllowRequest, *limiterv1.PeerDecision]{size: f.size, wait: f.wait, send: sendAllow}
	p.release = &batcher[*limiterv1.ReleaseRequest, *limiterv1.ReleaseResponse]{size: f.size, wait: f.wait, send: inBackground(p.sendRelease)}
	f.peers[m.Name] = p
	return p, nil
}

// Reconnect makes the connection to member name try again at once if it
// is waiting out a reconnect backoff: the member was just heard from (it
// asked this node for state after a restart), so calls to it should stop
// failing over to replicas now rather than when the backoff ends.
func (n *Node) Reconnect(name string) {
	n.fw.mu.Lock()
	p := n.fw.peers[name]
	n.fw.mu.Unlock()
	if p != nil {
		// Only while failing: grpc-go's ResetConnectBackoff reads the
		// connection's subchannel map unlocked, racing with the creation
		// of a subchannel on a new or waking connection (seen with -race).
		if p.conn.GetState() == connectivity.TransientFailure {
			p.conn.ResetConnectBackoff()
		}
		if p.wire != nil {
			p.wire.resetBackoff()
		}
	}
}

// close closes the member's connections; calls waiting on them fail with
// ErrOwnerUnavailable.
func (p *peer) close() {
	_ = p.conn.Close()
	if p.wire != nil {
		p.wire.close()
	}
}

// closePeer drops the connection to a member that left. Calls still queued
// for it fail with ErrOwnerUnavailable.
func (f *forwarder) closePeer(name string) {
	f.mu.Lock()
	p, ok := f.peers[name]
	delete(f.peers, name)
	f.mu.Unlock()
	if ok {
		p.close()
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	peers := f.peers
	f.peers = nil
	f.closed = true
	f.mu.Unlock()
	for _, p := range peers {
		p.close()
	}
}

// call is one caller waiting in a batch.
type call[Q, R any] struct {
	req      Q
	deadline time.Time
	done     chan outcome[R] // buffered: the sender never blocks
}

type outcome[R any] struct {
	resp R
	err  error
}

// batcher coalesces calls to one peer, Nagle-style. A call goes at once
// when no batch to the peer is in flight, after one yield of its goroutine
// (runtime.Gosched, which returns at once when nothing else is ready to
// run): calls arrive in bursts, several in one read of a client's
// connection, and the rest of a burst joins the first call's batch, which
// spares the peer a wake-up per call that joins. Otherwise it waits in the buffer,
// and the buffer goes as soon as it holds size calls, the batch in flight
// returns, or wait has passed since the first call in it, whichever comes
// first. An idle peer thus costs no added latency, a busy one gets big
// batches, and a slow batch delays the next by at most wait.
type batcher[Q, R any] struct {
	size int
	wait time.Duration
	// send answers every call of batch, then calls done; it may return
	// before (the wire answers from the connection's reader).
	send func(batch []*call[Q, R], done func())
	// yield lets other goroutines run before the first call to an idle
	// peer goes; nil is runtime.Gosched (tests replace it).
	yield func()

	mu       sync.Mutex
	buf      []*call[Q, R]
	inflight int
	yielding bool   // a caller yields before sending the buffer
	gen      uint64 // counts buffers taken, so a stale timer sends nothing
	// timer sends the buffer wait after its first call, unless the buffer
	// went before; it is stopped then, so that it costs no goroutine (an
	// AfterFunc runs its func on a new one) when the batch in flight
	// returns first, as it mostly does.
	timer    *time.Timer
	timerGen uint64 // gen of the buffer the timer is for
}

func (b *batcher[Q, R]) add(c *call[Q, R]) {
	b.mu.Lock()
	b.buf = append(b.buf, c)
	waits := len(b.buf) < b.size && b.wait > 0 // may this buffer wait at all
	switch {
	case waits && b.inflight == 0 && !b.yielding:
		// Let the calls that are ready to run join this one first.
		b.yielding = true
		b.mu.Unlock()
		if b.yield != nil {
			b.yield()
		} else {
			runtime.Gosched()
		}
		b.mu.Lock()
		b.yielding = false
		if b.inflight > 0 || len(b.buf) == 0 {
			b.mu.Unlock() // it went while this caller yielded
			return
		}
	case waits:
		// A batch is in flight, or a caller yields and sends this buffer.
		if b.inflight > 0 && len(b.buf) == 1 {
			b.timerGen = b.gen
			if b.timer == nil {
				b.timer = time.AfterFunc(b.wait, b.flush)
			} else {
				b.timer.Reset(b.wait)
			}
		}
		b.mu.Unlock()
		return
	}
	batch := b.take()
	b.mu.Unlock()
	b.start(batch)
}

// take empties the buffer into a batch that is about to go; b.mu must be
// held.
func (b *batcher[Q, R]) take() []*call[Q, R] {
	batch := b.buf
	b.buf = nil
	b.gen++
	if b.timer != nil {
		b.timer.Stop()
	}
	b.inflight++
	return batch
}

// flush sends the buffer when its timer fires, unless it went already.
func (b *batcher[Q, R]) flush() {
	b.mu.Lock()
	if b.timerGen != b.gen || len(b.buf) == 0 {
		b.mu.Unlock()
		return
	}
	batch := b.take()
	b.mu.Unlock()
	b.start(batch)
}

// start sends batch; once it is answered, whatever queued up meanwhile
// goes if nothing else is in flight.
func (b *batcher[Q, R]) start(batch []*call[Q, R]) {
	b.send(batch, b.finished)
}

func (b *batcher[Q, R]) finished() {
	b.mu.Lock()
	b.inflight--
	var next []*call[Q, R]
	if b.inflight == 0 && len(b.buf) > 0 {
		next = b.take()
	}
	b.mu.Unlock()
	if next != nil {
		b.start(next)
	}
}

// inBackground adapts a send that blocks until the batch is answered: it
// runs on a goroutine of its own.
func inBackground[Q, R any](send func([]*call[Q, R])) func([]*call[Q, R], func()) {
	return func(batch []*call[Q, R], done func()) {
		go func() {
			send(batch)
			done()
		}()
	}
}

// submit queues req on b and waits for its answer or for ctx, or, when
// wait is positive, at most about wait: the call then fails with
// ErrOwnerUnavailable and carries wait's deadline to the owner.
//
// The bound needs no timer per call: the call's deadline goes with it, the
// batch it goes in gives up at the latest deadline of its calls (a timer
// per batch, or the RPC's deadline), and one still queued when its
// deadline passes is answered as the batch is formed (prepareBatch). A
// call thus gives up at most the spread of its batch's arrivals late. A
// timer per call cost a forwarding node a timer reset and a three-way
// select per call, and a reset may wake an idle thread to watch the timer
// (runtime.wakeNetPoller).
func submit[Q, R any](ctx context.Context, b *batcher[Q, R], req Q, dflt time.Duration, peer string, wait time.Duration) (R, error) {
	var zero R
	if err := ctx.Err(); err != nil {
		return zero, ctxError("forward to "+peer, err)
	}
	now := time.Now()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = now.Add(dflt)
	}
	bounded := wait > 0 && now.Add(wait).Before(deadline)
	if bounded {
		deadline = now.Add(wait)
	}
	c := &call[Q, R]{req: req, deadline: deadline, done: make(chan outcome[R], 1)}
	b.add(c)
	select {
	case o := <-c.done:
		if o.err != nil && bounded && errors.Is(o.err, ErrDeadline) && ctx.Err() == nil {
			// The owner, the batch or the queue ran out the shorter budget.
			return zero, fmt.Errorf("%w: %s did not answer within %v", ErrOwnerUnavailable, peer, wait)
		}
		return o.resp, o.err
	case <-ctx.Done():
		return zero, ctxError("forward to "+peer, ctx.Err())
	}
}

// sendBatch is the shared body of sendAllow and sendRelease: it drops
// expired calls, sends the rest with their remaining budgets in one RPC
// whose deadline is the latest of theirs, and hands out the results.
func sendBatch[Q, R, I, P any](
	peer string, batch []*call[Q, R],
	item func(Q, *durationpb.Duration) I,
	rpc func(context.Context, []I) ([]P, error),
	result func(P) (R, *limiterv1.ItemStatus),
) {
	live, items, latest := prepareBatch(peer, batch, item)
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), latest)
	defer cancel()
	results, err := rpc(ctx, items)
	deliver(peer, live, results, rpcError(peer, err), result)
}

// prepareBatch answers the calls of batch whose deadline has passed and
// returns the others, their items and the latest of their deadlines.
func prepareBatch[Q, R, I any](peer string, batch []*call[Q, R], item func(Q, *durationpb.Duration) I) (live []*call[Q, R], items []I, latest time.Time) {
	now := time.Now()
	live = make([]*call[Q, R], 0, len(batch))
	items = make([]I, 0, len(batch))
	timeouts := make([]durationpb.Duration, len(batch)) // one allocation, not one per call
	for _, c := range batch {
		left := c.deadline.Sub(now)
		if left <= 0 {
			c.done <- outcome[R]{err: deadlineError("forward to "+peer, nil)}
			continue
		}
		d := &timeouts[len(live)]
		d.Seconds, d.Nanos = int64(left/time.Second), int32(left%time.Second)
		live = append(live, c)
		items = append(items, item(c.req, d))
		if c.deadline.After(latest) {
			latest = c.deadline
		}
	}
	return live, items, latest
}

// deliver answers each call of live with its result, or all with err.
func deliver[Q, R, P any](peer string, live []*call[Q, R], results []P, err error, result func(P) (R, *limiterv1.ItemStatus)) {
	if err == nil && len(results) != len(live) {
		err = fmt.Errorf("%w: peer answered %d of %d items", ErrOwnerUnavailable, len(results), len(live))
	}
	if err != nil {
		for _, c := range live {
			c.done <- outcome[R]{err: fmt.Errorf("forward to %s: %w", peer, err)}
		}
		return
	}
	for i, c := range live {
		resp, st := result(results[i])
		switch {
		case st != nil:
			c.done <- outcome[R]{err: itemError(peer, st)}
		default:
			c.done <- outcome[R]{resp: resp}
		}
	}
}

func (p *peer) sendAllow(batch []*call[*limiterv1.AllowRequest, *limiterv1.PeerDecision]) {
	if p.onBatch != nil {
		p.onBatch(len(batch))
	}
	sendBatch(p.name, batch, allowItem,
		func(ctx context.Context, items []*limiterv1.PeerAllowItem) ([]*limiterv1.PeerAllowResult, error) {
			resp, err := p.client.AllowBatch(ctx, &limiterv1.PeerAllowBatchRequest{Items: items})
			return resp.GetResults(), err
		},
		allowResult)
}

// sendAllowWire sends batch over the peer wire and returns; the
// connection's reader answers the calls, or a timer at the latest of their
// deadlines gives up on them.
func (p *peer) sendAllowWire(batch []*call[*limiterv1.AllowRequest, *limiterv1.PeerDecision], done func()) {
	if p.onBatch != nil {
		p.onBatch(len(batch))
	}
	// The items come in one allocation per batch rather than one per call.
	slab := make([]limiterv1.PeerAllowItem, len(batch))
	live, items, latest := prepareBatch(p.name, batch, func(q *limiterv1.AllowRequest, d *durationpb.Duration) *limiterv1.PeerAllowItem {
		it := &slab[0]
		slab = slab[1:]
		it.Request, it.Timeout = q, d
		return it
	})
	if len(live) == 0 {
		done()
		return
	}
	id := p.wire.newID()
	timer := time.AfterFunc(time.Until(latest), func() {
		p.wire.cancel(id, deadlineError("forward to "+p.name, nil))
	})
	p.wire.send(id, frameAllow, &limiterv1.PeerAllowBatchRequest{Items: items}, func(typ frameType, payload []byte, err error) {
		timer.Stop()
		var answers []allowAnswer
		switch {
		case err != nil:
		case typ == frameAllowResult:
			var derr error
			if answers, derr = decodeAllowAnswers(payload, &p.policy); derr != nil {
				err = fmt.Errorf("%w: %s sent an undecodable batch answer: %v", ErrOwnerUnavailable, p.name, derr)
			}
		default:
			err = answerError(p.name, typ, payload)
		}
		deliver(p.name, live, answers, err, func(a allowAnswer) (*limiterv1.PeerDecision, *limiterv1.ItemStatus) {
			if a.decision != nil {
				return a.decision, nil
			}
			return nil, statusOrMissing(a.status)
		})
		done()
	})
}

func allowItem(q *limiterv1.AllowRequest, d *durationpb.Duration) *limiterv1.PeerAllowItem {
	return &limiterv1.PeerAllowItem{Request: q, Timeout: d}
}

func allowResult(r *limiterv1.PeerAllowResult) (*limiterv1.PeerDecision, *limiterv1.ItemStatus) {
	if resp := r.GetDecision(); resp != nil {
		return resp, nil
	}
	return nil, statusOrMissing(r.GetStatus())
}

func (p *peer) sendRelease(batch []*call[*limiterv1.ReleaseRequest, *limiterv1.ReleaseResponse]) {
	sendBatch(p.name, batch,
		func(q *limiterv1.ReleaseRequest, d *durationpb.Duration) *limiterv1.PeerReleaseItem {
			return &limiterv1.PeerReleaseItem{Request: q, Timeout: d}
		},
		func(ctx context.Context, items []*limiterv1.PeerReleaseItem) ([]*limiterv1.PeerReleaseResult, error) {
			resp, err := p.client.ReleaseBatch(ctx, &limiterv1.PeerReleaseBatchRequest{Items: items})
			return resp.GetResults(), err
		},
		func(r *limiterv1.PeerReleaseResult) (*limiterv1.ReleaseResponse, *limiterv1.ItemStatus) {
			if resp := r.GetResponse(); resp != nil {
				return resp, nil
			}
			return nil, statusOrMissing(r.GetStatus())
		})
}

// statusOrMissing turns an empty result (neither response nor status) into
// an Internal status, so a caller never sees a nil response without error.
func statusOrMissing(st *limiterv1.ItemStatus) *limiterv1.ItemStatus {
	if st == nil || st.GetCode() == int32(codes.OK) {
		return &limiterv1.ItemStatus{Code: int32(codes.Internal), Message: "peer sent an empty result"}
	}
	return st
}

// itemError converts a peer's per-item status.
func itemError(peer string, st *limiterv1.ItemStatus) error {
	return &RemoteError{Peer: peer, Code: codes.Code(st.GetCode()), Msg: st.GetMessage()}
}

// rpcError converts the error of a whole RPC to a peer: a deadline becomes
// ErrDeadline, failures to reach the peer become ErrOwnerUnavailable, and a
// status the peer chose becomes a *RemoteError.
func rpcError(peer string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrOwnerUnavailable) || errors.Is(err, ErrDeadline) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return deadlineError("rpc to "+peer, nil)
		}
		if errors.Is(err, context.Canceled) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrOwnerUnavailable, err)
	}
	switch st.Code() {
	case codes.DeadlineExceeded:
		return deadlineError("rpc to "+peer, nil)
	case codes.Unavailable, codes.Canceled:
		return fmt.Errorf("%w: %s", ErrOwnerUnavailable, st.Message())
	}
	return &RemoteError{Peer: peer, Code: st.Code(), Msg: st.Message()}
}

// callError is rpcError for a unary call made with the caller's ctx: when
// ctx ended, its error wins.
func callError(ctx context.Context, peer string, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctxError("rpc to "+peer, ctx.Err())
	}
	return rpcError(peer, err)
}
