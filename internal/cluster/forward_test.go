package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

func TestForwardBatches(t *testing.T) { transports(t, testForwardBatches) }

func testForwardBatches(t *testing.T, transport func(*Config)) {
	var batches atomic.Int64
	tune := func(c *Config) {
		c.BatchWait = 20 * time.Millisecond
		c.BatchSize = 64
		c.OnBatch = func(int) { batches.Add(1) }
		transport(c)
	}
	from := startNode(t, "from", tune)
	to := startNode(t, "to", tune)

	const calls = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			key := fmt.Sprintf("key-%d", i)
			resp, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: key})
			switch {
			case err != nil:
				errs <- fmt.Errorf("Forward(%s) = %v", key, err)
			case !resp.GetAllowed() || resp.GetPolicy() != "to" || resp.GetRemaining() != int64(len(key)):
				errs <- fmt.Errorf("Forward(%s) = %v, want the answer of node to for this key", key, resp)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := to.h.allows.Load(); got != calls {
		t.Errorf("owner ran %d Allow calls, want %d", got, calls)
	}
	if n := batches.Load(); n >= calls || n < 1 {
		t.Errorf("%d forwards took %d batches, want fewer (coalesced)", calls, n)
	}
	checkTransport(t, to, "AllowBatch", from.Self().WireAddr != "")
	t.Logf("%d forwards in %d batches", calls, batches.Load())
}

// transports runs test once with peer calls over gRPC and once over the
// peer wire; test passes its argument to every startNode.
func transports(t *testing.T, test func(t *testing.T, transport func(*Config))) {
	for _, tr := range []struct {
		name string
		tune func(*Config)
	}{
		{"grpc", func(*Config) {}},
		{"wire", func(c *Config) { c.WireAddr = "127.0.0.1:0" }},
	} {
		t.Run(tr.name, func(t *testing.T) { test(t, tr.tune) })
	}
}

// checkTransport checks that the calls to method that to answered came
// over the transport the test chose: none over gRPC with the wire.
func checkTransport(t *testing.T, to *testNode, method string, wire bool) {
	t.Helper()
	if n := to.rpcs(method); wire && n != 0 {
		t.Errorf("%s got %d %s calls over gRPC, want them all over the peer wire", to.Name(), n, method)
	} else if !wire && n == 0 {
		t.Errorf("%s got no %s calls over gRPC", to.Name(), method)
	}
}

// TestBatcher drives the batcher with a send that the test releases by
// hand, so every rule can be checked in order.
func TestBatcher(t *testing.T) {
	type c = call[int, int]
	sent := make(chan []int, 10)
	release := make(chan struct{})
	b := &batcher[int, int]{size: 3, wait: time.Hour}
	b.send = inBackground(func(batch []*c) {
		ids := make([]int, len(batch))
		for i, x := range batch {
			ids[i] = x.req
		}
		sent <- ids
		<-release
		for _, x := range batch {
			x.done <- outcome[int]{resp: x.req}
		}
	})
	add := func(id int) *c {
		x := &c{req: id, done: make(chan outcome[int], 1)}
		b.add(x)
		return x
	}
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-sent:
			if fmt.Sprint(got) != want {
				t.Fatalf("sent %v, want %s", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("nothing sent, want %s", want)
		}
	}
	expectNothing := func() {
		t.Helper()
		select {
		case got := <-sent:
			t.Fatalf("sent %v, want nothing yet", got)
		default:
		}
	}

	first := add(1)
	expect("[1]") // idle peer: at once
	add(2)
	add(3)
	expectNothing() // in flight, buffer not full, wait is an hour
	add(4)
	expect("[2 3 4]") // full
	add(5)
	expectNothing()
	release <- struct{}{} // one of the two batches in flight returns
	release <- struct{}{} // and the other: now nothing is in flight
	expect("[5]")         // so the buffer goes
	release <- struct{}{}
	if o := <-first.done; o.resp != 1 {
		t.Errorf("call 1 answered %d, want 1", o.resp)
	}

	// With a short wait, a buffer goes after wait although a batch is
	// still in flight.
	b.wait = 10 * time.Millisecond
	add(6)
	expect("[6]")
	add(7)
	expect("[7]")
	close(release)
}

// TestBatcherYield: the first call to an idle peer yields before it goes,
// and the calls that run meanwhile join its batch, up to size.
func TestBatcherYield(t *testing.T) {
	type c = call[int, int]
	for _, tt := range []struct {
		name string
		size int
		want string
	}{
		{"calls during the yield join the first", 4, "[[1 2 3]]"},
		{"a full buffer goes without waiting for the yield", 2, "[[1 2]]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var sent [][]int
			b := &batcher[int, int]{size: tt.size, wait: time.Hour}
			b.send = func(batch []*c, _ func()) { // stays in flight
				var ids []int
				for _, x := range batch {
					ids = append(ids, x.req)
				}
				sent = append(sent, ids)
			}
			add := func(id int) { b.add(&c{req: id, done: make(chan outcome[int], 1)}) }
			b.yield = func() { add(2); add(3) } // what other goroutines do meanwhile
			add(1)
			if got := fmt.Sprint(sent); got != tt.want {
				t.Errorf("sent %s, want %s", got, tt.want)
			}
		})
	}
}

func TestForwardDeadline(t *testing.T) { transports(t, testForwardDeadline) }

func testForwardDeadline(t *testing.T, transport func(*Config)) {
	from := startNode(t, "from", transport)
	to := startNode(t, "to", transport)
	budget := make(chan time.Duration, 1)
	to.h.allow = func(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
		if d, ok := ctx.Deadline(); ok {
			budget <- time.Until(d)
		} else {
			budget <- -1
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	const timeout = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	_, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "slow"})
	took := time.Since(start)
	if !errorsIs(err, ErrDeadline, context.DeadlineExceeded) {
		t.Errorf("Forward() = %v, want ErrDeadline and context.DeadlineExceeded", err)
	}
	if took > time.Second {
		t.Errorf("Forward() took %v with a %v deadline", took, timeout)
	}
	if got := <-budget; got <= 0 || got > timeout {
		t.Errorf("owner saw a deadline %v away, want within (0, %v]", got, timeout)
	}
}

func TestForwardRemoteDeadlineStatus(t *testing.T) { transports(t, testForwardRemoteDeadlineStatus) }

func testForwardRemoteDeadlineStatus(t *testing.T, transport func(*Config)) {
	// The owner itself reports DeadlineExceeded before the caller's
	// deadline: the RemoteError must still read as a deadline.
	from := startNode(t, "from", transport)
	to := startNode(t, "to", transport)
	to.h.allow = func(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
		return nil, context.DeadlineExceeded
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "k"})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != codes.DeadlineExceeded || !errorsIs(err, ErrDeadline, context.DeadlineExceeded, ErrRemote) {
		t.Errorf("Forward() = %v, want a DeadlineExceeded RemoteError", err)
	}
}

func TestForwardOwnerDown(t *testing.T) { transports(t, testForwardOwnerDown) }

func testForwardOwnerDown(t *testing.T, transport func(*Config)) {
	from := startNode(t, "from", transport)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := Member{Name: "dead", GRPCAddr: lis.Addr().String(), WireAddr: lis.Addr().String()}
	lis.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = from.Forward(ctx, dead, &limiterv1.AllowRequest{Key: "k"})
	if !errors.Is(err, ErrOwnerUnavailable) {
		t.Errorf("Forward(dead) = %v, want ErrOwnerUnavailable", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Forward(dead) took %v, want a fast failure", took)
	}
	if _, err := from.ForwardRelease(ctx, dead, &limiterv1.ReleaseRequest{LeaseId: "x"}); !errors.Is(err, ErrOwnerUnavailable) {
		t.Errorf("ForwardRelease(dead) = %v, want ErrOwnerUnavailable", err)
	}
	if _, err := from.Forward(ctx, Member{}, &limiterv1.AllowRequest{Key: "k"}); !errors.Is(err, ErrNoMembers) {
		t.Errorf("Forward(zero Member) = %v, want ErrNoMembers", err)
	}
}

func TestForwardRemoteErrors(t *testing.T) {
	from := startNode(t, "from", nil)
	to := startNode(t, "to", nil)
	to.h.release = func(ctx context.Context, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error) {
		switch req.GetLeaseId() {
		case "unknown":
			return nil, status.Error(codes.NotFound, "no such lease")
		case "draining":
			return nil, status.Error(codes.Unavailable, "draining")
		case "plain":
			return nil, errors.New("boom")
		case "nil":
			return nil, nil
		}
		return &limiterv1.ReleaseResponse{InFlight: 3}, nil
	}
	tests := []struct {
		lease   string
		code    codes.Code
		matches []error
	}{
		{"ok", codes.OK, nil},
		{"unknown", codes.NotFound, []error{ErrRemote}},
		{"draining", codes.Unavailable, []error{ErrRemote, ErrOwnerUnavailable}},
		{"plain", codes.Unknown, []error{ErrRemote}},
		{"nil", codes.Internal, []error{ErrRemote}},
	}
	for _, tt := range tests {
		t.Run(tt.lease, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := from.ForwardRelease(ctx, to.Self(), &limiterv1.ReleaseRequest{LeaseId: tt.lease})
			if tt.code == codes.OK {
				if err != nil || resp.GetInFlight() != 3 {
					t.Errorf("ForwardRelease() = %v, %v, want in_flight 3", resp, err)
				}
				return
			}
			var re *RemoteError
			if !errors.As(err, &re) || re.Code != tt.code || re.Peer != "to" {
				t.Fatalf("ForwardRelease() = %v, want RemoteError with code %v from to", err, tt.code)
			}
			if !errorsIs(err, tt.matches...) {
				t.Errorf("ForwardRelease() = %v, want it to match %v", err, tt.matches)
			}
			if resp != nil {
				t.Errorf("ForwardRelease() response = %v with an error, want nil", resp)
			}
		})
	}
}

func TestForwardCancelled(t *testing.T) {
	from := startNode(t, "from", nil)
	to := startNode(t, "to", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "k"}); !errors.Is(err, context.Canceled) || errors.Is(err, ErrDeadline) {
		t.Errorf("Forward(cancelled) = %v, want context.Canceled", err)
	}
}

func TestReplicateFetchPush(t *testing.T) { transports(t, testReplicateFetchPush) }

func testReplicateFetchPush(t *testing.T, transport func(*Config)) {
	from := startNode(t, "from", transport)
	to := startNode(t, "to", transport)
	wire := from.Self().WireAddr != ""
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	states := []*limiterv1.KeyState{
		{Policy: "default", Key: "a", State: []byte{1}, Version: 1},
		{Policy: "default", Key: "b", State: []byte{2}, Version: 1},
	}
	if err := from.Replicate(ctx, to.Self(), states); err != nil {
		t.Fatalf("Replicate() = %v", err)
	}
	if err := from.PushState(ctx, to.Self(), []*limiterv1.KeyState{{Policy: "default", Key: "a", State: []byte{9}, Version: 2}}); err != nil {
		t.Fatalf("PushState() = %v", err)
	}
	got, err := from.Fetch(ctx, to.Self(), []*limiterv1.KeyRef{{Policy: "default", Key: "a"}, {Policy: "default", Key: "nope"}})
	if err != nil {
		t.Fatalf("Fetch() = %v", err)
	}
	if len(got) != 1 || got[0].GetKey() != "a" || got[0].GetVersion() != 2 || got[0].GetState()[0] != 9 {
		t.Errorf("Fetch() = %v, want key a at version 2", got)
	}
	err = from.Replicate(ctx, to.Self(), []*limiterv1.KeyState{{Policy: "default"}})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != codes.InvalidArgument || re.Peer != "to" {
		t.Errorf("Replicate(bad) = %v, want RemoteError InvalidArgument from to", err)
	}
	// Replicate travels on the wire when there is one; PushState and
	// FetchState always on gRPC.
	checkTransport(t, to, "Replicate", wire)
	if got := to.rpcs("PushState") + to.rpcs("FetchState"); got != 2 {
		t.Errorf("owner saw %d PushState and FetchState RPCs, want 2", got)
	}
}

func TestForwardAcrossCluster(t *testing.T) { transports(t, testForwardAcrossCluster) }

func testForwardAcrossCluster(t *testing.T, transport func(*Config)) {
	// Every node forwards every key to its owner; the answer must come
	// from the owner that all nodes agree on.
	nodes := startCluster(t, 3, transport)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 30 {
		key := fmt.Sprintf("key-%d", i)
		for _, tn := range nodes {
			owner, _ := tn.Owner(key)
			resp, err := tn.Forward(ctx, owner, &limiterv1.AllowRequest{Key: key})
			if err != nil || resp.GetPolicy() != owner.Name {
				t.Fatalf("%s Forward(%s) = %v, %v, want an answer from %s", tn.Name(), key, resp, err, owner.Name)
			}
		}
	}
}

func TestShutdownFailsForwards(t *testing.T) { transports(t, testShutdownFailsForwards) }

func testShutdownFailsForwards(t *testing.T, transport func(*Config)) {
	from := startNode(t, "from", transport)
	to := startNode(t, "to", transport)
	if err := from.Shutdown(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "k"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Forward after Shutdown = %v, want ErrClosed", err)
	}
	if err := from.Leave(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after Shutdown = %v, want ErrClosed", err)
	}
	if err := from.SetPolicy("p", nil, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("SetPolicy after Shutdown = %v, want ErrClosed", err)
	}
}

func BenchmarkForward(b *testing.B) {
	for _, bc := range []struct {
		wire bool
		wait time.Duration
		par  int // goroutines per GOMAXPROCS
	}{{false, 200 * time.Microsecond, 1}, {false, 200 * time.Microsecond, 16}, {true, 200 * time.Microsecond, 1}, {true, 200 * time.Microsecond, 16}} {
		transport := map[bool]string{false: "grpc", true: "wire"}[bc.wire]
		b.Run(fmt.Sprintf("%s/wait=%v/par=%d", transport, bc.wait, bc.par), func(b *testing.B) {
			var batches atomic.Int64
			tune := func(c *Config) {
				c.BatchWait = bc.wait
				c.OnBatch = func(int) { batches.Add(1) }
				if bc.wire {
					c.WireAddr = "127.0.0.1:0"
				}
			}
			from := startNode(b, "from", tune)
			to := startNode(b, "to", tune)
			to.h.immediate = func(*limiterv1.AllowRequest) bool { return true } // as a limiter owner answers
			owner := to.Self()
			req := &limiterv1.AllowRequest{Key: "tenant:42:/invoices"}
			b.SetParallelism(bc.par)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if _, err := from.Forward(ctx, owner, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(to.h.allows.Load())/float64(max(batches.Load(), 1)), "calls/batch")
		})
	}
}

func TestChunks(t *testing.T) {
	var states []*limiterv1.KeyState
	for i := range 2000 {
		states = append(states, &limiterv1.KeyState{Policy: "default", Key: fmt.Sprintf("key-%d", i), State: make([]byte, 90)})
	}
	got := chunks(states)
	n := 0
	for _, c := range got {
		if size := proto.Size(&limiterv1.ReplicateRequest{States: c}); size > maxChunkBytes {
			t.Errorf("chunk of %d states is %d bytes, want <= %d", len(c), size, maxChunkBytes)
		}
		n += len(c)
	}
	if n != len(states) || len(got) < 2 {
		t.Errorf("chunks() = %d chunks holding %d states, want all %d in several", len(got), n, len(states))
	}
	if len(chunks(nil)) != 0 {
		t.Errorf("chunks(nil) is not empty")
	}
}

// TestAllowBatchImmediate checks how the owner runs a batch: immediate
// items in order on the batch's goroutine, without waiting for the others,
// which run concurrently; a waiting item under its own deadline, an
// immediate one without a context of its own; results in item order.
func TestAllowBatchImmediate(t *testing.T) {
	var mu sync.Mutex
	var order []string
	quickDone := make(chan struct{})
	const quick = 3
	h := &fakeHandler{
		name:      "owner",
		immediate: func(req *limiterv1.AllowRequest) bool { return req.GetKey() != "slow" },
		allow: func(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
			if _, ok := ctx.Deadline(); ok != (req.GetKey() == "slow") {
				t.Errorf("AllowLocal(%s): has a deadline: %v, want %v", req.GetKey(), ok, req.GetKey() == "slow")
			}
			if req.GetKey() == "slow" {
				// Decided only after every immediate item: they must not wait for it.
				select {
				case <-quickDone:
				case <-time.After(5 * time.Second):
					t.Error("the immediate items waited for the slow one")
				}
				return &limiterv1.PeerDecision{Allowed: false, Policy: req.GetKey()}, nil
			}
			mu.Lock()
			order = append(order, req.GetKey())
			if len(order) == quick {
				close(quickDone)
			}
			mu.Unlock()
			return &limiterv1.PeerDecision{Allowed: true, Policy: req.GetKey()}, nil
		},
	}
	s := &peerServer{h: h}
	keys := []string{"a", "slow", "b", "c"}
	req := &limiterv1.PeerAllowBatchRequest{}
	for _, k := range keys {
		req.Items = append(req.Items, &limiterv1.PeerAllowItem{Request: &limiterv1.AllowRequest{Key: k}, Timeout: durationpb.New(time.Minute)})
	}
	resp, err := s.AllowBatch(context.Background(), req)
	if err != nil {
		t.Fatalf("AllowBatch() = %v", err)
	}
	if got, want := fmt.Sprint(order), "[a b c]"; got != want {
		t.Errorf("immediate items decided in order %s, want %s", got, want)
	}
	for i, r := range resp.GetResults() {
		if got := r.GetDecision().GetPolicy(); got != keys[i] {
			t.Errorf("result %d is for %q, want %q", i, got, keys[i])
		}
	}
	if n := len(resp.GetResults()); n != len(keys) {
		t.Errorf("AllowBatch() gave %d results, want %d", n, len(keys))
	}
}

func TestForwardWithin(t *testing.T) { transports(t, testForwardWithin) }

// testForwardWithin checks the failover bound: a slow owner is reported
// unavailable once wait has passed, with wait as the deadline it sees; a
// quick one answers; a caller's own shorter deadline stays a deadline.
func testForwardWithin(t *testing.T, transport func(*Config)) {
	from := startNode(t, "from", transport)
	to := startNode(t, "to", transport)
	budget := make(chan time.Duration, 1)
	to.h.allow = func(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
		if req.GetKey() != "slow" {
			return &limiterv1.PeerDecision{Allowed: true, Policy: "to"}, nil
		}
		d, _ := ctx.Deadline()
		select {
		case budget <- time.Until(d):
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 50 { // the pooled timer is reused
		if resp, err := from.ForwardWithin(ctx, to.Self(), &limiterv1.AllowRequest{Key: "quick"}, time.Second); err != nil || !resp.GetAllowed() {
			t.Fatalf("ForwardWithin(quick) = %v, %v", resp, err)
		}
	}
	const wait = 100 * time.Millisecond
	start := time.Now()
	_, err := from.ForwardWithin(ctx, to.Self(), &limiterv1.AllowRequest{Key: "slow"}, wait)
	if !errors.Is(err, ErrOwnerUnavailable) {
		t.Errorf("ForwardWithin(slow) = %v, want ErrOwnerUnavailable", err)
	}
	if took := time.Since(start); took < wait || took > 5*time.Second {
		t.Errorf("ForwardWithin(slow) took %v, want about %v", took, wait)
	}
	if got := <-budget; got <= 0 || got > wait {
		t.Errorf("owner saw a deadline %v away, want within (0, %v]", got, wait)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if _, err := from.ForwardWithin(short, to.Self(), &limiterv1.AllowRequest{Key: "slow"}, time.Second); !errorsIs(err, ErrDeadline, context.DeadlineExceeded) || errors.Is(err, ErrOwnerUnavailable) {
		t.Errorf("ForwardWithin under a shorter deadline = %v, want ErrDeadline", err)
	}
}
