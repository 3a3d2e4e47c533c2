package cluster

// The peer wire carries the two peer calls made for every forwarded or
// replicated decision, Allow batches and replica updates, over one TCP
// connection (TLS when configured) per pair of nodes, instead of one gRPC
// RPC each. Everything else between nodes (releases, state fetches and
// hand-offs, Admin key calls) stays on gRPC.
//
// Why: on a small VM, what a message costs is mostly the threads it wakes.
// A gRPC unary call hands each message between three goroutines on each
// side (transport reader, handler, writer); measured here, an empty gRPC
// handler costs 240 µs of CPU per call at 750 calls/s, a bare TCP echo 80
// µs. On the wire the owner reads a batch, decides it and writes the
// answer on one goroutine, and the caller's side writes from the calling
// goroutine and answers the waiting calls from the connection's reader.
//
// Format. A connection opens with a hello from the dialer: the 8 bytes
// wireMagic, a version byte, and the peer secret as a uvarint length and
// its bytes (empty when the cluster has none). The server answers with one
// frame: frameDone to accept, frameError to refuse (then it closes). Then
// both sides exchange frames: a 4-byte big-endian length of what follows,
// a type byte, an 8-byte big-endian id and a protobuf payload. A request
// (frameAllow, frameReplicate) is answered by one frame with its id
// (frameAllowResult, frameDone or frameError), in any order. A
// frameReplicateQuiet is answered only when it fails (frameError); the
// server applies it before reading the next frame, so the answer to any
// request written after it confirms it (see wireClient.sendQuiet).

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/limiterd/limiterd/internal/rawio"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

const (
	wireMagic   = "LMTDPEER"
	wireVersion = 1
	// wireMaxFrame bounds one frame, as the gRPC server bounds peer
	// messages.
	wireMaxFrame = 8 << 20
	// wireMaxSecret bounds the secret in a hello.
	wireMaxSecret = 4 << 10
	// wireHandshake bounds the TLS handshake and hello on a new connection.
	wireHandshake = 5 * time.Second
	// wireDialTimeout bounds connecting to a peer.
	wireDialTimeout = time.Second
	// wireWriteTimeout bounds writing one frame: a peer that stops reading
	// (frozen, or its host gone) has its connection closed after this long,
	// which fails what waits on it over to the next replica.
	wireWriteTimeout = time.Second
	// wireQuietTimeout bounds waiting for the confirmation of quiet replica
	// updates; past it they fail (and are sent again).
	wireQuietTimeout = time.Second
	// wireMaxQuiet bounds the quiet replica updates on a connection that
	// the peer has not confirmed yet (at 10 ms a round and a confirmation
	// within quietConfirmAfter, about 20 in the normal case).
	wireMaxQuiet = 64
)

// frameType is the kind of a frame.
type frameType byte

const (
	frameAllow       frameType = 1 // PeerAllowBatchRequest
	frameAllowResult frameType = 2 // PeerAllowBatchResponse, for a frameAllow
	frameReplicate   frameType = 3 // ReplicateRequest
	frameDone        frameType = 4 // no payload: the request succeeded
	frameError       frameType = 5 // ItemStatus: the request failed as a whole
	// frameReplicateQuiet is a ReplicateRequest answered only on failure.
	frameReplicateQuiet frameType = 6
)

// quietConfirmAfter is how long a quiet replica update may wait for a
// later answered request on its connection before the client asks for one
// (an empty frameReplicate), so that an idle connection, too, learns what
// arrived. A confirmation costs both nodes a wake-up and only bounds what
// a broken connection makes this node send again, so it is asked for
// rarely.
const quietConfirmAfter = 200 * time.Millisecond

// errBadFrame marks input that is not the wire format.
var errBadFrame = errors.New("cluster: bad peer wire frame")

// readFrame reads one frame into buf (grown as needed) and returns its
// type, id and payload, which aliases buf.
func readFrame(r *bufio.Reader, buf []byte) (frameType, uint64, []byte, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, nil, buf, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 9 || n > wireMaxFrame {
		return 0, 0, nil, buf, fmt.Errorf("%w: length %d", errBadFrame, n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, nil, buf, err
	}
	return frameType(buf[0]), binary.BigEndian.Uint64(buf[1:9]), buf[9:], buf, nil
}

// appendFrame appends the frame (typ, id, msg) to b; a nil msg is an empty
// payload.
func appendFrame(b []byte, typ frameType, id uint64, msg proto.Message) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, byte(typ))
	b = binary.BigEndian.AppendUint64(b, id)
	switch m := msg.(type) {
	case nil:
	case *limiterv1.PeerAllowBatchResponse:
		b = appendAllowAnswers(b, m.GetResults()) // an owner's every answer
	default:
		var err error
		if b, err = (proto.MarshalOptions{}).MarshalAppend(b, msg); err != nil {
			return b[:start], fmt.Errorf("cluster: encode peer wire frame: %w", err)
		}
	}
	n := len(b) - start - 4
	if n > wireMaxFrame {
		return b[:start], fmt.Errorf("cluster: peer wire frame of %d bytes is over the %d limit", n, wireMaxFrame)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(n))
	return b, nil
}

// appendHello appends the dialer's hello.
func appendHello(b []byte, secret string) []byte {
	b = append(b, wireMagic...)
	b = append(b, wireVersion)
	b = binary.AppendUvarint(b, uint64(len(secret)))
	return append(b, secret...)
}

// readHello reads a dialer's hello and returns the secret in it.
func readHello(r *bufio.Reader) (string, error) {
	var head [len(wireMagic) + 1]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return "", err
	}
	if string(head[:len(wireMagic)]) != wireMagic {
		return "", fmt.Errorf("%w: not a limiterd peer", errBadFrame)
	}
	if v := head[len(wireMagic)]; v != wireVersion {
		return "", fmt.Errorf("%w: version %d, want %d", errBadFrame, v, wireVersion)
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return "", fmt.Errorf("%w: secret length: %v", errBadFrame, err)
	}
	if n > wireMaxSecret {
		return "", fmt.Errorf("%w: secret of %d bytes", errBadFrame, n)
	}
	secret := make([]byte, n)
	if _, err := io.ReadFull(r, secret); err != nil {
		return "", err
	}
	return string(secret), nil
}

// frameWriter writes whole frames to a connection, one at a time.
type frameWriter struct {
	mu  sync.Mutex
	c   net.Conn
	buf []byte
	seq uint64 // frames written so far
}

func (w *frameWriter) write(typ frameType, id uint64, msg proto.Message) error {
	return w.writeSeq(typ, id, msg, nil)
}

// writeSeq is write that, when seq is not nil, stores there the frame's
// place among the frames written on the connection (1 for the first)
// before writing it, so that whoever reads the answer sees it.
func (w *frameWriter) writeSeq(typ frameType, id uint64, msg proto.Message, seq *atomic.Uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.encode(typ, id, msg, seq); err != nil {
		return err
	}
	_ = w.c.SetWriteDeadline(time.Now().Add(wireWriteTimeout))
	_, err := w.c.Write(w.buf)
	if cap(w.buf) > 64<<10 {
		w.buf = nil // keep no rare large buffer
	}
	return err
}

// encode puts the frame (typ, id, msg) in w.buf and, when seq is not nil,
// stores there its place among the frames written on the connection;
// w.mu is held.
func (w *frameWriter) encode(typ frameType, id uint64, msg proto.Message, seq *atomic.Uint64) error {
	var err error
	if w.buf, err = appendFrame(w.buf[:0], typ, id, msg); err != nil {
		return err
	}
	w.seq++
	if seq != nil {
		seq.Store(w.seq)
	}
	return nil
}

// nowWriter is a connection that can write without waiting
// (rawio.Conn).
type nowWriter interface {
	WriteNow(b []byte) (int, error)
}

// writeSeqNow is writeSeq for a caller that must not wait on the
// connection, and it must be called with w.mu held, which it releases.
// It writes what the socket takes at once. When that is not the whole
// frame (the socket's buffer is full: the peer reads slowly or not at
// all), a new goroutine writes the rest under the usual deadline, holding
// w.mu until it is done, so that frames stay whole and in order. finish
// gets the write's error once the whole frame is written or the write
// failed; at once, unless the rest went to that goroutine.
func (w *frameWriter) writeSeqNow(now nowWriter, typ frameType, id uint64, msg proto.Message, seq *atomic.Uint64, finish func(error)) {
	if err := w.encode(typ, id, msg, seq); err != nil {
		w.mu.Unlock()
		finish(err)
		return
	}
	n, err := now.WriteNow(w.buf)
	if err != nil || n == len(w.buf) {
		w.mu.Unlock()
		finish(err)
		return
	}
	go func() {
		_ = w.c.SetWriteDeadline(time.Now().Add(wireWriteTimeout))
		_, err := w.c.Write(w.buf[n:])
		w.buf = nil
		w.mu.Unlock()
		finish(err)
	}()
}

// statusFrame is the payload of a frameError.
func statusFrame(code codes.Code, msg string) *limiterv1.ItemStatus {
	return &limiterv1.ItemStatus{Code: int32(code), Message: msg}
}

// wireServer serves the peer wire for a Handler.
type wireServer struct {
	ln   net.Listener
	tls  *tls.Config
	auth func(secret string) error
	log  *slog.Logger

	ps   atomic.Pointer[peerServer] // set by RegisterPeerService
	mu   sync.Mutex
	conn map[net.Conn]struct{}
	done bool
	wg   sync.WaitGroup
}

func listenWire(addr string, cfg Config, log *slog.Logger) (*wireServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: peer wire listener %s: %w", addr, err)
	}
	ln = rawio.Listener{Listener: ln}
	return &wireServer{ln: ln, tls: cfg.WireTLS, auth: cfg.WireAuth, log: log, conn: map[net.Conn]struct{}{}}, nil
}

// Addr returns the bound address.
func (s *wireServer) Addr() string { return s.ln.Addr().String() }

// serve accepts connections until close; call it once a handler is set.
func (s *wireServer) serve() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			done := s.done
			s.mu.Unlock()
			if done || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("peer wire accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conn[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

// close stops accepting, closes every connection and waits for their
// goroutines.
func (s *wireServer) close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	s.done = true
	for c := range s.conn {
		_ = c.Close()
	}
	s.mu.Unlock()
	_ = s.ln.Close()
	s.wg.Wait()
}

// handle runs one connection: hello, then frames until either side closes.
func (s *wireServer) handle(raw net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conn, raw)
		s.mu.Unlock()
		_ = raw.Close()
	}()
	c := raw
	_ = c.SetDeadline(time.Now().Add(wireHandshake))
	if s.tls != nil {
		tc := tls.Server(c, s.tls)
		if err := tc.Handshake(); err != nil {
			s.log.Debug("peer wire TLS handshake", "remote", raw.RemoteAddr(), "err", err)
			return
		}
		c = tc
	}
	r := bufio.NewReaderSize(c, 32<<10)
	w := &frameWriter{c: c}
	secret, err := readHello(r)
	if err != nil {
		s.log.Debug("peer wire hello", "remote", raw.RemoteAddr(), "err", err)
		_ = w.write(frameError, 0, statusFrame(codes.InvalidArgument, err.Error()))
		return
	}
	if s.auth != nil {
		if err := s.auth(secret); err != nil {
			s.log.Warn("peer wire refused a connection", "remote", raw.RemoteAddr(), "err", err)
			_ = w.write(frameError, 0, statusFrame(codes.Unauthenticated, err.Error()))
			return
		}
	}
	if err := w.write(frameDone, 0, nil); err != nil {
		return
	}
	_ = c.SetDeadline(time.Time{})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // ends the items still running for a peer that went away
	var buf []byte
	var policy atomic.Pointer[string] // the policy name last decoded (decodeAllowItems, decodeKeyStates)
	for {
		var typ frameType
		var id uint64
		var payload []byte
		typ, id, payload, buf, err = readFrame(r, buf)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("peer wire read", "remote", raw.RemoteAddr(), "err", err)
			}
			return
		}
		s.frame(ctx, w, typ, id, payload, &policy)
	}
}

// frame answers one request frame. Batches whose items all answer at once
// (Handler.Immediate) and replica updates run here, on the connection's
// goroutine; other batches get a goroutine of their own so that the
// connection keeps reading.
func (s *wireServer) frame(ctx context.Context, w *frameWriter, typ frameType, id uint64, payload []byte, policy *atomic.Pointer[string]) {
	defer s.recover(w, id)
	ps := s.ps.Load()
	switch typ {
	case frameAllow:
		items, err := decodeAllowItems(payload, policy)
		if err != nil {
			s.answer(w, id, nil, statusFrame(codes.InvalidArgument, fmt.Sprintf("decode allow batch: %v", err)))
			return
		}
		inline, all := ps.immediate(items)
		run := func() {
			defer s.recover(w, id)
			s.answer(w, id, ps.allowBatch(ctx, items, inline), nil)
		}
		if all {
			run()
		} else {
			go run()
		}
	case frameReplicate, frameReplicateQuiet:
		// Applied here, before the next frame is read: the client counts
		// on it to confirm quiet updates (wireClient.sendQuiet).
		states, err := decodeKeyStates(payload, policy)
		if err != nil {
			s.answer(w, id, nil, statusFrame(codes.InvalidArgument, fmt.Sprintf("decode replicate: %v", err)))
			return
		}
		if err := ps.h.ApplyReplica(ctx, states); err != nil {
			st := status.Convert(toRPCStatus(err))
			s.answer(w, id, nil, statusFrame(st.Code(), st.Message()))
			return
		}
		if typ == frameReplicate {
			s.answer(w, id, nil, nil)
		}
	default:
		s.answer(w, id, nil, statusFrame(codes.Unimplemented, fmt.Sprintf("peer wire frame type %d", typ)))
	}
}

// answer writes the reply to request id: resp (a frameAllowResult), st (a
// frameError) or, with neither, a frameDone. A write error closes the
// connection, which ends its read loop.
func (s *wireServer) answer(w *frameWriter, id uint64, resp *limiterv1.PeerAllowBatchResponse, st *limiterv1.ItemStatus) {
	var err error
	switch {
	case st != nil:
		err = w.write(frameError, id, st)
	case resp != nil:
		err = w.write(frameAllowResult, id, resp)
	default:
		err = w.write(frameDone, id, nil)
	}
	if err != nil {
		_ = w.c.Close()
	}
}

// recover turns a handler panic into an Internal answer, as the gRPC
// server's interceptor does, and logs it. Deferred by every goroutine that
// answers a frame.
func (s *wireServer) recover(w *frameWriter, id uint64) {
	if p := recover(); p != nil {
		s.log.Error("panic answering a peer wire request", "panic", p)
		s.answer(w, id, nil, statusFrame(codes.Internal, "internal error"))
	}
}

// wireCall is a request waiting for its answer.
type wireCall struct {
	conn *wireConn // nil while the connection is being made
	id   uint64
	typ  frameType
	msg  proto.Message
	seq  atomic.Uint64 // its place on conn (frameWriter.writeSeq); 0 before it is written
	// done gets the answer, or err; exactly once, never with a lock held.
	done func(typ frameType, payload []byte, err error)
}

// wireConn is the client side of one connection.
type wireConn struct {
	c net.Conn
	r *bufio.Reader
	w frameWriter
}

// WireEvent is what Config.OnWire is told.
type WireEvent string

// The WireEvents.
const (
	WireDialed     WireEvent = "dialed"      // a connection was made and said hello
	WireDialFailed WireEvent = "dial_failed" // a dial or its handshake failed
	WireBroken     WireEvent = "broken"      // a connection in use broke (its calls fail over)
)

// wireClient is the client side of one peer's wire: it dials lazily,
// writes requests from the calling goroutine and answers them from the
// connection's reader. A call fails with ErrOwnerUnavailable when the
// connection cannot be made or breaks.
type wireClient struct {
	name, addr string
	tls        *tls.Config
	secret     string
	log        *slog.Logger
	onEvent    func(WireEvent) // Config.OnWire; may be nil

	next atomic.Uint64 // request ids

	mu      sync.Mutex
	conn    *wireConn
	dialing bool
	retryAt time.Time     // no dial before this, after a failed one
	backoff time.Duration // the wait after the next failure
	pending map[uint64]*wireCall
	quiet   []*wireCall // frameReplicateQuiet calls not yet confirmed (also in pending)
	noQuiet bool        // the peer does not know frameReplicateQuiet
	pinging bool        // a confirmation is due or under way (ping)
	// confirmAfter is quietConfirmAfter (tests set it).
	confirmAfter time.Duration
	closed       bool
	readerWG     sync.WaitGroup
}

func newWireClient(name, addr string, tlsCfg *tls.Config, secret string, log *slog.Logger, onEvent func(WireEvent)) *wireClient {
	return &wireClient{name: name, addr: addr, tls: tlsCfg, secret: secret, log: log, onEvent: onEvent, pending: map[uint64]*wireCall{}, confirmAfter: quietConfirmAfter}
}

func (wc *wireClient) event(e WireEvent) {
	if wc.onEvent != nil {
		wc.onEvent(e)
	}
}

// newID returns a fresh request id.
func (wc *wireClient) newID() uint64 { return wc.next.Add(1) }

// send writes request id (from newID) and calls done with its answer.
func (wc *wireClient) send(id uint64, typ frameType, msg proto.Message, done func(frameType, []byte, error)) {
	wc.sendCall(&wireCall{id: id, typ: typ, msg: msg, done: done})
}

func (wc *wireClient) sendCall(call *wireCall) {
	done := call.done
	wc.mu.Lock()
	switch {
	case wc.closed:
		wc.mu.Unlock()
		done(0, nil, fmt.Errorf("%w: connection to %s closed", ErrOwnerUnavailable, wc.name))
		return
	case wc.conn == nil && time.Now().Before(wc.retryAt):
		wc.mu.Unlock()
		done(0, nil, fmt.Errorf("%w: %s unreachable, retrying in %v", ErrOwnerUnavailable, wc.name, time.Until(wc.retryAt).Round(time.Millisecond)))
		return
	}
	if call.typ == frameReplicateQuiet && wc.noQuiet {
		call.typ = frameReplicate
	}
	if call.typ == frameReplicateQuiet && len(wc.quiet) >= wireMaxQuiet {
		// The peer confirms nothing (frozen, or far behind): send it no
		// more until it does, rather than fill its socket, on which a full
		// buffer would hold up forwarded calls too. The caller sends the
		// keys again later.
		wc.mu.Unlock()
		done(0, nil, fmt.Errorf("%w: %s has not confirmed %d replica updates", ErrOwnerUnavailable, wc.name, wireMaxQuiet))
		return
	}
	wc.addPending(call)
	c := wc.conn
	if c == nil {
		if !wc.dialing {
			wc.dialing = true
			go wc.dial()
		}
		wc.mu.Unlock()
		return // written once connected
	}
	call.conn = c
	wc.mu.Unlock()
	wc.write(c, call)
}

// addPending notes call as waiting for its answer and, for a quiet
// update, for its confirmation; wc.mu is held.
func (wc *wireClient) addPending(call *wireCall) {
	wc.pending[call.id] = call
	if call.typ == frameReplicateQuiet {
		wc.quiet = append(wc.quiet, call)
		if !wc.pinging {
			wc.pinging = true
			time.AfterFunc(wc.confirmAfter, wc.ping)
		}
	}
}

// write writes call, already pending on c, and notes its place on c.
func (wc *wireClient) write(c *wireConn, call *wireCall) bool {
	if err := c.w.writeSeq(call.typ, call.id, call.msg, &call.seq); err != nil {
		wc.broken(c, err)
		return false
	}
	return true
}

// sendQuiet writes a replica update that the peer answers only if it
// fails, and calls done once: nil when the answer to a request written
// after it on the same connection arrives (the peer applied the update
// before reading that request), or the error when the update failed, its
// connection broke or a confirmation did not come within timeout. Quiet
// updates spare the peer a write and this node a wake-up per update; a
// connection with nothing else to answer gets an empty frameReplicate,
// quietConfirmAfter after the first unconfirmed update, to confirm them;
// that one is bounded by wireQuietTimeout.
func (wc *wireClient) sendQuiet(msg *limiterv1.ReplicateRequest, done func(error)) {
	wc.sendCall(&wireCall{id: wc.newID(), typ: frameReplicateQuiet, msg: msg, done: quietDone(wc.name, done)})
}

// quietDone adapts sendQuiet's done to a wireCall's.
func quietDone(peer string, done func(error)) func(frameType, []byte, error) {
	return func(t frameType, payload []byte, err error) {
		if err == nil && t != frameDone {
			err = answerError(peer, t, payload)
		}
		done(err)
	}
}

// trySendQuiet is sendQuiet for a caller that must not wait: a
// replication round run on the goroutine that answers a connection's
// forwarded calls, which a peer that stopped reading must not hold up. It
// returns false, having done nothing, unless the update can go out at
// once: a connection is up and able to write without waiting (not TLS),
// no other frame is being written on it, and sendQuiet would send it (the
// client is open and the peer has confirmed enough). Otherwise it calls
// written once the update is written or has failed, which is at once
// unless the socket's buffer was full, and done as sendQuiet does.
func (wc *wireClient) trySendQuiet(msg *limiterv1.ReplicateRequest, done func(error), written func()) bool {
	wc.mu.Lock()
	c := wc.conn
	var now nowWriter
	ok := c != nil && !wc.closed && !wc.noQuiet && len(wc.quiet) < wireMaxQuiet
	if ok {
		now, ok = c.c.(nowWriter)
	}
	if !ok || !c.w.mu.TryLock() {
		wc.mu.Unlock()
		return false
	}
	call := &wireCall{id: wc.newID(), typ: frameReplicateQuiet, msg: msg, conn: c, done: quietDone(wc.name, done)}
	wc.addPending(call)
	wc.mu.Unlock()
	c.w.writeSeqNow(now, call.typ, call.id, call.msg, &call.seq, func(err error) {
		if err != nil {
			wc.broken(c, err)
		}
		written()
	})
	return true
}

// ping asks the peer to answer an empty replica update, which confirms the
// quiet updates written before it; when that fails, they fail with it.
func (wc *wireClient) ping() {
	wc.mu.Lock()
	if len(wc.quiet) == 0 || wc.closed {
		wc.pinging = false
		wc.mu.Unlock()
		return
	}
	waiting := append([]*wireCall(nil), wc.quiet...)
	wc.mu.Unlock()
	id := wc.newID()
	timer := time.AfterFunc(wireQuietTimeout, func() {
		wc.cancel(id, fmt.Errorf("%w: %s did not confirm replica updates within %v", ErrOwnerUnavailable, wc.name, wireQuietTimeout))
	})
	wc.send(id, frameReplicate, &limiterv1.ReplicateRequest{}, func(t frameType, payload []byte, err error) {
		timer.Stop()
		if err == nil && t != frameDone {
			err = answerError(wc.name, t, payload)
		}
		var failed []*wireCall
		wc.mu.Lock()
		if err != nil {
			for _, q := range waiting {
				if wc.pending[q.id] == q {
					delete(wc.pending, q.id)
					failed = append(failed, q)
				}
			}
			wc.dropQuiet(func(q *wireCall) bool { return wc.pending[q.id] != q })
		}
		again := len(wc.quiet) > 0 && !wc.closed
		wc.pinging = again
		wc.mu.Unlock()
		for _, q := range failed {
			q.done(0, nil, err)
		}
		if again {
			time.AfterFunc(wc.confirmAfter, wc.ping)
		}
	})
}

// dropQuiet removes the quiet calls for which drop returns true; wc.mu is
// held.
func (wc *wireClient) dropQuiet(drop func(*wireCall) bool) {
	kept := wc.quiet[:0]
	for _, q := range wc.quiet {
		if !drop(q) {
			kept = append(kept, q)
		}
	}
	clear(wc.quiet[len(kept):])
	wc.quiet = kept
}

// confirmed takes the quiet calls written on c before the frame at seq,
// which was answered; wc.mu is held.
func (wc *wireClient) confirmed(c *wireConn, seq uint64) []*wireCall {
	var out []*wireCall
	wc.dropQuiet(func(q *wireCall) bool {
		if s := q.seq.Load(); q.conn == c && s != 0 && s < seq {
			delete(wc.pending, q.id)
			out = append(out, q)
			return true
		}
		return false
	})
	return out
}

// request sends a request and waits for its frameDone, or ctx.
func (wc *wireClient) request(ctx context.Context, typ frameType, msg proto.Message) error {
	ch := make(chan error, 1)
	id := wc.newID()
	wc.send(id, typ, msg, func(t frameType, payload []byte, err error) {
		if err == nil && t != frameDone {
			err = answerError(wc.name, t, payload)
		}
		ch <- err
	})
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		if !wc.cancel(id, ctx.Err()) {
			return <-ch // answered meanwhile
		}
		return ctxError("wire request to "+wc.name, ctx.Err())
	}
}

// cancel gives up on request id (its deadline passed): its answer, if it
// comes, is dropped. It reports whether the call was still waiting; done
// is then called with err.
func (wc *wireClient) cancel(id uint64, err error) bool {
	wc.mu.Lock()
	call := wc.pending[id]
	delete(wc.pending, id)
	wc.mu.Unlock()
	if call == nil {
		return false
	}
	call.done(0, nil, err)
	return true
}

// dial connects, then writes the requests that waited for it.
func (wc *wireClient) dial() {
	c, err := wc.connect()
	wc.mu.Lock()
	wc.dialing = false
	var queued []*wireCall
	if err == nil && wc.closed {
		err = ErrClosed
		_ = c.c.Close()
	}
	if err != nil {
		wc.retryAt = time.Now().Add(wc.backoff)
		wc.backoff = min(max(wc.backoff*8/5, 50*time.Millisecond), 250*time.Millisecond)
		for id, call := range wc.pending {
			if call.conn == nil {
				delete(wc.pending, id)
				queued = append(queued, call)
			}
		}
		wc.dropQuiet(func(q *wireCall) bool { return q.conn == nil })
		wc.mu.Unlock()
		if !errors.Is(err, ErrClosed) {
			wc.event(WireDialFailed)
		}
		wc.log.Debug("peer wire dial", "member", wc.name, "addr", wc.addr, "err", err)
		for _, call := range queued {
			call.done(0, nil, fmt.Errorf("%w: dial %s: %v", ErrOwnerUnavailable, wc.addr, err))
		}
		return
	}
	wc.conn = c
	wc.backoff = 0
	for _, call := range wc.pending {
		if call.conn == nil {
			call.conn = c
			queued = append(queued, call)
		}
	}
	slices.SortFunc(queued, func(a, b *wireCall) int { return cmp.Compare(a.id, b.id) }) // in the order sent
	wc.readerWG.Add(1)
	wc.mu.Unlock()
	wc.event(WireDialed)
	go wc.read(c)
	for _, call := range queued {
		if !wc.write(c, call) {
			return
		}
	}
}

// connect dials, shakes hands and says hello.
func (wc *wireClient) connect() (*wireConn, error) {
	raw, err := net.DialTimeout("tcp", wc.addr, wireDialTimeout)
	if err != nil {
		return nil, err
	}
	raw = rawio.Wrap(raw)
	c := raw
	_ = c.SetDeadline(time.Now().Add(wireHandshake))
	if wc.tls != nil {
		cfg := wc.tls.Clone()
		if cfg.ServerName == "" {
			if host, _, err := net.SplitHostPort(wc.addr); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c = tc
	}
	if _, err := c.Write(appendHello(nil, wc.secret)); err != nil {
		_ = raw.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(c, 32<<10)
	typ, _, payload, _, err := readFrame(r, nil)
	if err == nil && typ == frameError {
		var st limiterv1.ItemStatus
		_ = proto.Unmarshal(payload, &st)
		err = fmt.Errorf("refused: %s: %s", codes.Code(st.GetCode()), st.GetMessage())
	} else if err == nil && typ != frameDone {
		err = fmt.Errorf("%w: hello answered with frame type %d", errBadFrame, typ)
	}
	if err != nil {
		_ = raw.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	conn := &wireConn{c: c, r: r}
	conn.w.c = c
	return conn, nil
}

// read answers requests until the connection breaks.
func (wc *wireClient) read(c *wireConn) {
	defer wc.readerWG.Done()
	var buf []byte
	for {
		typ, id, payload, b, err := readFrame(c.r, buf)
		buf = b
		if err != nil {
			wc.broken(c, err)
			return
		}
		wc.mu.Lock()
		call := wc.pending[id]
		delete(wc.pending, id)
		var confirmed []*wireCall
		if call != nil && len(wc.quiet) > 0 {
			if call.typ == frameReplicateQuiet { // it failed
				wc.dropQuiet(func(q *wireCall) bool { return q == call })
				if typ == frameError && isUnimplemented(payload) {
					wc.noQuiet = true // an older peer; ask for answers from now on
				}
			} else {
				confirmed = wc.confirmed(c, call.seq.Load())
			}
		}
		wc.mu.Unlock()
		if call != nil {
			call.done(typ, payload, nil)
		}
		for _, q := range confirmed {
			q.done(frameDone, nil, nil)
		}
	}
}

// broken fails every request written on c and forgets c, so the next
// request dials again.
func (wc *wireClient) broken(c *wireConn, err error) {
	_ = c.c.Close()
	wc.mu.Lock()
	current := wc.conn == c && !wc.closed
	if wc.conn == c {
		wc.conn = nil
	}
	var failed []*wireCall
	for id, call := range wc.pending {
		if call.conn == c {
			delete(wc.pending, id)
			failed = append(failed, call)
		}
	}
	wc.dropQuiet(func(q *wireCall) bool { return q.conn == c })
	wc.mu.Unlock()
	if current {
		wc.event(WireBroken)
	}
	for _, call := range failed {
		call.done(0, nil, fmt.Errorf("%w: connection to %s: %v", ErrOwnerUnavailable, wc.name, err))
	}
}

// resetBackoff lets the next request dial at once.
func (wc *wireClient) resetBackoff() {
	wc.mu.Lock()
	wc.retryAt = time.Time{}
	wc.backoff = 0
	wc.mu.Unlock()
}

// close fails every waiting request and closes the connection.
func (wc *wireClient) close() {
	wc.mu.Lock()
	wc.closed = true
	c := wc.conn
	wc.mu.Unlock()
	if c != nil {
		wc.broken(c, ErrClosed)
	}
	wc.readerWG.Wait()
	wc.mu.Lock()
	var failed []*wireCall
	for id, call := range wc.pending {
		delete(wc.pending, id)
		failed = append(failed, call)
	}
	wc.dropQuiet(func(*wireCall) bool { return true })
	wc.mu.Unlock()
	for _, call := range failed {
		call.done(0, nil, fmt.Errorf("%w: connection to %s closed", ErrOwnerUnavailable, wc.name))
	}
}

// isUnimplemented reports whether a frameError's payload says the peer
// does not know the frame's type.
func isUnimplemented(payload []byte) bool {
	var st limiterv1.ItemStatus
	return proto.Unmarshal(payload, &st) == nil && codes.Code(st.GetCode()) == codes.Unimplemented
}

// answerError turns an answer frame that is not the expected one into an
// error: a frameError's status as a *RemoteError, anything else as a
// protocol error.
func answerError(peer string, typ frameType, payload []byte) error {
	if typ == frameError {
		var st limiterv1.ItemStatus
		if err := proto.Unmarshal(payload, &st); err != nil {
			return fmt.Errorf("%w: %s sent an undecodable error: %v", ErrOwnerUnavailable, peer, err)
		}
		return itemError(peer, statusOrMissing(&st))
	}
	return fmt.Errorf("%w: %s answered with frame type %d", ErrOwnerUnavailable, peer, typ)
}
