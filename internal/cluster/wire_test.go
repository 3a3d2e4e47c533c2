package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

func withWire(c *Config) { c.WireAddr = "127.0.0.1:0" }

// TestWireMixed: a node without the wire and one with it still talk, over
// gRPC, whichever of them forwards.
func TestWireMixed(t *testing.T) {
	plain := startNode(t, "plain", nil)
	wired := startNode(t, "wired", withWire)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct{ from, to *testNode }{{plain, wired}, {wired, plain}} {
		resp, err := tc.from.Forward(ctx, tc.to.Self(), &limiterv1.AllowRequest{Key: "k"})
		if err != nil || resp.GetPolicy() != tc.to.Name() {
			t.Errorf("%s Forward() to %s = %v, %v, want its answer", tc.from.Name(), tc.to.Name(), resp, err)
		}
		checkTransport(t, tc.to, "AllowBatch", false)
	}
}

func TestWireSecret(t *testing.T) {
	to := startNode(t, "to", func(c *Config) {
		withWire(c)
		c.WireAuth = func(secret string) error {
			if secret != "right" {
				return errors.New("wrong peer secret")
			}
			return nil
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct {
		secret string
		ok     bool
	}{{"wrong", false}, {"", false}, {"right", true}} {
		from := startNode(t, "from-"+tc.secret, func(c *Config) { withWire(c); c.WireSecret = tc.secret })
		resp, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "k"})
		switch {
		case tc.ok && (err != nil || resp.GetPolicy() != "to"):
			t.Errorf("secret %q: Forward() = %v, %v, want the owner's answer", tc.secret, resp, err)
		case !tc.ok && !errors.Is(err, ErrOwnerUnavailable):
			t.Errorf("secret %q: Forward() = %v, %v, want ErrOwnerUnavailable", tc.secret, resp, err)
		}
	}
	checkTransport(t, to, "AllowBatch", true)
}

// TestWireOwnerRestarts: when the owner's connection breaks, calls fail
// over at once (ErrOwnerUnavailable), and once it serves again the next
// calls reconnect.
func TestWireOwnerRestarts(t *testing.T) {
	var mu sync.Mutex
	events := map[WireEvent]int{}
	from := startNode(t, "from", func(c *Config) {
		withWire(c)
		c.OnWire = func(e WireEvent) {
			mu.Lock()
			events[e]++
			mu.Unlock()
		}
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	start := func() *testNode {
		return startNode(t, "to", func(c *Config) { c.WireAddr = addr })
	}
	to := start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := &limiterv1.AllowRequest{Key: "k"}
	if _, err := from.Forward(ctx, to.Self(), req); err != nil {
		t.Fatalf("Forward() = %v", err)
	}
	if err := to.Shutdown(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if _, err := from.Forward(ctx, to.Self(), req); !errors.Is(err, ErrOwnerUnavailable) {
		t.Errorf("Forward() to a stopped owner = %v, want ErrOwnerUnavailable", err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("Forward() to a stopped owner took %v, want a fast failure", took)
	}
	to = start()
	from.Reconnect("to") // as when the restarted owner asks this node for state
	waitFor(t, 5*time.Second, "forwards to the restarted owner to succeed", func() bool {
		resp, err := from.Forward(ctx, to.Self(), req)
		return err == nil && resp.GetPolicy() == "to"
	})
	// Dialed, broken by the shutdown, dialed again: what the metrics show.
	mu.Lock()
	defer mu.Unlock()
	if events[WireDialed] < 2 || events[WireBroken] < 1 {
		t.Errorf("wire events = %v, want dialed >= 2, broken >= 1", events)
	}
}

// TestWireDialFailedEvent: a dial to an address nobody listens on fails the
// call over and is reported to Config.OnWire.
func TestWireDialFailedEvent(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	got := make(chan WireEvent, 4)
	wc := newWireClient("gone", addr, nil, "", slog.New(slog.DiscardHandler), func(e WireEvent) { got <- e })
	defer wc.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := wc.request(ctx, frameReplicate, &limiterv1.ReplicateRequest{}); !errors.Is(err, ErrOwnerUnavailable) {
		t.Fatalf("request() to a dead address = %v, want ErrOwnerUnavailable", err)
	}
	if e := <-got; e != WireDialFailed {
		t.Errorf("event = %q, want %q", e, WireDialFailed)
	}
	// A quiet update that waited for the failed dial fails with it, and
	// does not stay counted against the connection.
	wc.resetBackoff()
	lost := make(chan error, 1)
	wc.sendQuiet(&limiterv1.ReplicateRequest{}, func(err error) { lost <- err })
	if err := <-lost; !errors.Is(err, ErrOwnerUnavailable) {
		t.Errorf("quiet update to a dead address = %v, want ErrOwnerUnavailable", err)
	}
	wc.mu.Lock()
	left := len(wc.quiet)
	wc.mu.Unlock()
	if left != 0 {
		t.Errorf("%d quiet updates still unconfirmed after the dial failed, want 0", left)
	}
}

// TestWireRefusesStrangers: a connection that does not start with a
// limiterd hello is answered with an error and closed, and the listener
// goes on serving peers.
func TestWireRefusesStrangers(t *testing.T) {
	to := startNode(t, "to", withWire)
	for _, hello := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		append([]byte(wireMagic), 99, 0),                              // unknown version
		append(append([]byte(wireMagic), wireVersion), 0xff, 0xff, 3), // secret too long
	} {
		c, err := net.Dial("tcp", to.Self().WireAddr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		typ, _, payload, _, err := readFrame(bufio.NewReader(c), nil)
		var st limiterv1.ItemStatus
		if err != nil || typ != frameError || proto.Unmarshal(payload, &st) != nil || st.GetCode() != int32(codes.InvalidArgument) {
			t.Errorf("hello %q: answer %d %q, %v; want an InvalidArgument frameError", hello, typ, st.GetMessage(), err)
		}
		c.Close()
	}
	from := startNode(t, "from", withWire)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "k"}); err != nil {
		t.Errorf("Forward() after strangers = %v", err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	msg := &limiterv1.ReplicateRequest{States: []*limiterv1.KeyState{{Policy: "p", Key: "k", State: []byte{1, 2, 3}}}}
	b, err := appendFrame(nil, frameReplicate, 42, msg)
	if err != nil {
		t.Fatal(err)
	}
	b, err = appendFrame(b, frameDone, 43, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(bytes.NewReader(b))
	typ, id, payload, buf, err := readFrame(r, nil)
	var got limiterv1.ReplicateRequest
	if err != nil || typ != frameReplicate || id != 42 || proto.Unmarshal(payload, &got) != nil || !proto.Equal(&got, msg) {
		t.Fatalf("readFrame() = %d, %d, %v, %v; want the replicate frame back", typ, id, &got, err)
	}
	if typ, id, payload, _, err = readFrame(r, buf); err != nil || typ != frameDone || id != 43 || len(payload) != 0 {
		t.Fatalf("readFrame() = %d, %d, %x, %v; want an empty frameDone 43", typ, id, payload, err)
	}
	for _, bad := range [][]byte{{0, 0, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0}, {0xff, 0, 0, 0, 1}, {0, 0, 0, 20, 1}} {
		if _, _, _, _, err := readFrame(bufio.NewReader(bytes.NewReader(bad)), nil); err == nil {
			t.Errorf("readFrame(%x) = nil error, want one", bad)
		}
	}
	if secret, err := readHello(bufio.NewReader(bytes.NewReader(appendHello(nil, "s3cret")))); err != nil || secret != "s3cret" {
		t.Errorf("readHello(appendHello(s3cret)) = %q, %v", secret, err)
	}
}

// discardConn is a net.Conn that drops what is written to it.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error)      { return len(b), nil }
func (discardConn) Close() error                     { return nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzWireFrames feeds arbitrary bytes to the peer wire's decoders: the
// hello, then frames, each answered by a server whose handler decides at
// once. Nothing may panic, and a frame that decodes re-encodes to itself.
func FuzzWireFrames(f *testing.F) {
	allow, _ := appendFrame(nil, frameAllow, 1, &limiterv1.PeerAllowBatchRequest{Items: []*limiterv1.PeerAllowItem{
		{Request: &limiterv1.AllowRequest{Key: "k", Policy: "p"}}, {},
	}})
	repl, _ := appendFrame(nil, frameReplicate, 2, &limiterv1.ReplicateRequest{States: []*limiterv1.KeyState{{Key: "k", State: []byte{1}}}})
	f.Add(append(appendHello(nil, "secret"), allow...))
	f.Add(append(appendHello(nil, ""), repl...))
	f.Add(append(append(appendHello(nil, ""), allow...), 0, 0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 1))
	f.Add([]byte(wireMagic))
	f.Add([]byte{})
	h := &fakeHandler{name: "fuzz", immediate: func(*limiterv1.AllowRequest) bool { return true }}
	s := &wireServer{log: testConfig("fuzz").Logger}
	s.ps.Store(&peerServer{h: h})
	w := &frameWriter{c: discardConn{}}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		if _, err := readHello(r); err != nil {
			r = bufio.NewReader(bytes.NewReader(b)) // frames without a hello
		}
		var buf []byte
		for range 16 {
			typ, id, payload, nbuf, err := readFrame(r, buf)
			buf = nbuf
			if err != nil {
				return
			}
			raw := append([]byte(nil), buf...)
			again, err := appendFrame(nil, typ, id, nil)
			if err != nil {
				t.Fatal(err)
			}
			again = append(again, payload...)
			if !bytes.Equal(again[4:], raw) {
				t.Fatalf("frame %x re-encodes as %x", raw, again[4:])
			}
			s.frame(context.Background(), w, typ, id, payload, new(atomic.Pointer[string]))
		}
	})
}

// TestWirePanicIsInternal: a handler that panics answers its batch with
// INTERNAL, as the gRPC server's recovery does, and the connection goes on.
func TestWirePanicIsInternal(t *testing.T) {
	from := startNode(t, "from", withWire)
	to := startNode(t, "to", withWire)
	to.h.immediate = func(*limiterv1.AllowRequest) bool { return true }
	to.h.allow = func(ctx context.Context, req *limiterv1.AllowRequest) (*limiterv1.PeerDecision, error) {
		if req.GetKey() == "boom" {
			panic("handler bug")
		}
		return &limiterv1.PeerDecision{Allowed: true, Policy: "to"}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "boom"})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != codes.Internal {
		t.Errorf("Forward(boom) = %v, want RemoteError Internal", err)
	}
	if resp, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "fine"}); err != nil || !resp.GetAllowed() {
		t.Errorf("Forward(fine) after a panic = %v, %v", resp, err)
	}
}

// TestReplicateQuiet: replica updates sent with ReplicateAsync get no
// answer of their own on the wire. The answer to a later request on the
// connection confirms them, or, on a connection with nothing else to say,
// an empty update the client asks to be answered; a failed update, or a
// connection that breaks first, reports the states that may be lost.
func TestReplicateQuiet(t *testing.T) {
	from := startNode(t, "from", withWire)
	to := startNode(t, "to", withWire)
	p, err := from.fw.peer(to.Self())
	if err != nil {
		t.Fatal(err)
	}
	p.wire.confirmAfter = time.Hour // no confirmation unless something else is answered
	type result struct {
		lost []*limiterv1.KeyState
		err  error
	}
	send := func(states ...*limiterv1.KeyState) chan result {
		ch := make(chan result, 1)
		from.ReplicateAsync(to.Self(), states, func(lost []*limiterv1.KeyState, err error) { ch <- result{lost, err} }, func() {})
		return ch
	}
	wait := func(what string, ch chan result) result {
		t.Helper()
		select {
		case r := <-ch:
			return r
		case <-time.After(5 * time.Second):
			t.Fatalf("no result for %s", what)
			return result{}
		}
	}
	held := func(key string) bool {
		to.h.mu.Lock()
		defer to.h.mu.Unlock()
		_, ok := to.h.states["default/"+key]
		return ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Confirmed by the answer to a forwarded call.
	ch := send(&limiterv1.KeyState{Policy: "default", Key: "a", State: []byte{1}, Version: 1})
	waitFor(t, 5*time.Second, "the replica to apply the quiet update", func() bool { return held("a") })
	select {
	case r := <-ch:
		t.Fatalf("quiet update reported %v before anything confirmed it", r)
	default:
	}
	if _, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "k"}); err != nil {
		t.Fatalf("Forward() = %v", err)
	}
	if r := wait("a confirmed update", ch); r.err != nil || r.lost != nil {
		t.Errorf("confirmed update: lost %v, err %v; want none", r.lost, r.err)
	}

	// A failed update reports its states and the replica's error.
	bad := &limiterv1.KeyState{Policy: "default"}
	r := wait("a refused update", send(bad))
	var re *RemoteError
	if !errors.As(r.err, &re) || re.Code != codes.InvalidArgument || len(r.lost) != 1 || r.lost[0] != bad {
		t.Errorf("refused update: lost %v, err %v; want the state and InvalidArgument", r.lost, r.err)
	}

	// On an idle connection the client asks for a confirmation.
	idle := startNode(t, "idle", withWire)
	q, err := idle.fw.peer(to.Self())
	if err != nil {
		t.Fatal(err)
	}
	q.wire.confirmAfter = time.Millisecond
	ch = make(chan result, 1)
	idle.ReplicateAsync(to.Self(), []*limiterv1.KeyState{{Policy: "default", Key: "b", State: []byte{2}, Version: 1}},
		func(lost []*limiterv1.KeyState, err error) { ch <- result{lost, err} }, func() {})
	if r := wait("an update on an idle connection", ch); r.err != nil {
		t.Errorf("idle connection: err %v, want a confirmation", r.err)
	}

	// A peer that confirms nothing gets at most wireMaxQuiet updates; the
	// next ones fail at once.
	var backlog []chan result
	for i := range wireMaxQuiet {
		backlog = append(backlog, send(&limiterv1.KeyState{Policy: "default", Key: fmt.Sprint("q", i), State: []byte{1}, Version: 1}))
	}
	if r := wait("an update over the backlog", send(&limiterv1.KeyState{Policy: "default", Key: "over", State: []byte{1}, Version: 1})); !errors.Is(r.err, ErrOwnerUnavailable) || len(r.lost) != 1 {
		t.Errorf("update over the backlog: lost %v, err %v; want it refused at once with ErrOwnerUnavailable", r.lost, r.err)
	}
	for i, ch := range backlog {
		select {
		case r := <-ch:
			t.Fatalf("backlog update %d reported %v before anything confirmed it", i, r)
		default:
		}
	}
	if _, err := from.Forward(ctx, to.Self(), &limiterv1.AllowRequest{Key: "k"}); err != nil {
		t.Fatalf("Forward() = %v", err)
	}
	for i, ch := range backlog {
		if r := wait("a backlog update", ch); r.err != nil {
			t.Errorf("backlog update %d: err %v, want it confirmed", i, r.err)
		}
	}

	// The connection breaks before any confirmation: the states are lost.
	c := &limiterv1.KeyState{Policy: "default", Key: "c", State: []byte{3}, Version: 1}
	ch = send(c)
	waitFor(t, 5*time.Second, "the replica to apply the last update", func() bool { return held("c") })
	if err := to.Shutdown(); err != nil {
		t.Fatal(err)
	}
	r = wait("an update on a broken connection", ch)
	if !errors.Is(r.err, ErrOwnerUnavailable) || len(r.lost) != 1 || r.lost[0] != c {
		t.Errorf("broken connection: lost %v, err %v; want the state and ErrOwnerUnavailable", r.lost, r.err)
	}
}

// TestReplicateQuietOlderPeer: a peer that does not know quiet updates
// refuses the first one (Unimplemented), and gets answered updates from
// then on, so a cluster can be upgraded one node at a time.
func TestReplicateQuietOlderPeer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	seen := make(chan frameType, 4)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		w := &frameWriter{c: c}
		if _, err := readHello(r); err != nil || w.write(frameDone, 0, nil) != nil {
			return
		}
		for {
			typ, id, _, _, err := readFrame(r, nil)
			if err != nil {
				return
			}
			seen <- typ
			if typ == frameReplicate {
				_ = w.write(frameDone, id, nil)
			} else {
				_ = w.write(frameError, id, statusFrame(codes.Unimplemented, "peer wire frame type 6"))
			}
		}
	}()
	wc := newWireClient("old", lis.Addr().String(), nil, "", slog.New(slog.DiscardHandler), nil)
	defer wc.close()
	wc.confirmAfter = time.Hour
	msg := &limiterv1.ReplicateRequest{States: []*limiterv1.KeyState{{Policy: "default", Key: "a"}}}
	for i, want := range []codes.Code{codes.Unimplemented, codes.OK} {
		got := make(chan error, 1)
		wc.sendQuiet(msg, func(err error) { got <- err })
		var err error
		select {
		case err = <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("update %d: no answer", i)
		}
		var re *RemoteError
		switch {
		case want == codes.OK && err != nil:
			t.Errorf("update %d = %v, want it answered and applied", i, err)
		case want != codes.OK && (!errors.As(err, &re) || re.Code != want):
			t.Errorf("update %d = %v, want %v", i, err, want)
		}
	}
	if a, b := <-seen, <-seen; a != frameReplicateQuiet || b != frameReplicate {
		t.Errorf("older peer saw frame types %d, %d; want %d then %d", a, b, frameReplicateQuiet, frameReplicate)
	}
}

// TestTrySendQuiet: a replica update goes out on the calling goroutine
// while the connection takes it at once; to a peer that stops reading, the
// frame the socket takes only part of is finished by a goroutine (written
// comes later), the writer stays busy meanwhile (trySendQuiet declines),
// and the peer gets every frame whole and in order once it reads again.
func TestTrySendQuiet(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	release := make(chan struct{})
	type frame struct {
		typ frameType
		id  uint64
	}
	frames := make(chan frame, 128)
	go func() {
		defer close(frames)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		if _, err := readHello(r); err != nil {
			return
		}
		w := &frameWriter{c: c}
		if w.write(frameDone, 0, nil) != nil {
			return
		}
		<-release // stop reading until told
		var buf []byte
		for {
			var typ frameType
			var id uint64
			if typ, id, _, buf, err = readFrame(r, buf); err != nil {
				return
			}
			frames <- frame{typ, id}
		}
	}()
	wc := newWireClient("peer", ln.Addr().String(), nil, "", slog.New(slog.DiscardHandler), nil)
	wc.confirmAfter = time.Hour
	defer wc.close()
	small := &limiterv1.ReplicateRequest{States: []*limiterv1.KeyState{{Policy: "default", Key: "a", State: []byte{1}}}}
	if wc.trySendQuiet(small, func(error) {}, func() {}) {
		t.Fatal("trySendQuiet went ahead with no connection up")
	}
	wc.sendQuiet(small, func(error) {}) // dials
	waitFor(t, 5*time.Second, "the connection", func() bool {
		wc.mu.Lock()
		defer wc.mu.Unlock()
		return wc.conn != nil
	})

	big := &limiterv1.ReplicateRequest{States: []*limiterv1.KeyState{{Policy: "default", Key: "b", State: make([]byte, 1<<20)}}}
	later := make(chan int, wireMaxQuiet)
	inline, sent, declined := 0, 1, false
	for i := 0; i < wireMaxQuiet-1 && !declined; i++ {
		var returned, now atomic.Bool
		ok := wc.trySendQuiet(big, func(error) {}, func() {
			if returned.Load() {
				later <- i
			} else {
				now.Store(true)
			}
		})
		returned.Store(true)
		if !ok {
			declined = true
			continue
		}
		sent++
		if now.Load() {
			inline++
		}
	}
	if inline == 0 {
		t.Error("no update was written on the calling goroutine")
	}
	if !declined {
		t.Fatalf("trySendQuiet never declined: %d MiB sent to a peer that does not read", sent)
	}
	close(release)
	select {
	case <-later:
	case <-time.After(5 * time.Second):
		t.Fatal("the frame the socket took part of was never finished")
	}
	var last uint64
	for i := range sent {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatalf("connection ended after %d of %d frames", i, sent)
			}
			if f.typ != frameReplicateQuiet || f.id <= last {
				t.Fatalf("frame %d: type %d id %d after id %d; want quiet updates in order", i, f.typ, f.id, last)
			}
			last = f.id
		case <-time.After(5 * time.Second):
			t.Fatalf("got %d of %d frames", i, sent)
		}
	}
}
