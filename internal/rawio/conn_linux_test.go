package rawio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair returns both ends of a loopback connection on network ("tcp" or
// "unix"), each wrapped.
func pair(t *testing.T, network string) (client, server net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s.sock")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := Listener{Listener: ln}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client = Wrap(c)
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	for _, c := range []net.Conn{client, server} {
		if _, ok := c.(*Conn); !ok {
			t.Fatalf("%T was not wrapped", c)
		}
	}
	return client, server
}

// TestCopiesBytesBothWays sends 8 MiB each way at once, far more than the
// socket buffers hold, so writes stop part-way and wait for the poller,
// and reads get every size of chunk.
func TestCopiesBytesBothWays(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			a, b := pair(t, network)
			send := func(c net.Conn, data []byte, errs chan<- error) {
				n, err := c.Write(data)
				if err == nil && n != len(data) {
					err = io.ErrShortWrite
				}
				errs <- err
			}
			recv := func(c net.Conn, n int) []byte {
				buf := make([]byte, 0, n)
				small := make([]byte, 1000) // odd sizes, to split writes
				for len(buf) < n {
					k, err := c.Read(small[:min(len(small), n-len(buf))])
					if err != nil {
						t.Errorf("read after %d bytes: %v", len(buf), err)
						break
					}
					buf = append(buf, small[:k]...)
				}
				return buf
			}
			ab, ba := random(t, 8<<20), random(t, 8<<20)
			errs := make(chan error, 2)
			go send(a, ab, errs)
			go send(b, ba, errs)
			var wg sync.WaitGroup
			var atB, atA []byte
			wg.Add(2)
			go func() { defer wg.Done(); atB = recv(b, len(ab)) }()
			go func() { defer wg.Done(); atA = recv(a, len(ba)) }()
			wg.Wait()
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(atB, ab) || !bytes.Equal(atA, ba) {
				t.Fatal("bytes differ from what was sent")
			}
		})
	}
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEOFAfterPeerCloses(t *testing.T) {
	a, b := pair(t, "tcp")
	if _, err := a.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "bye" {
		t.Fatalf("ReadAll = %q, %v; want bye, nil", got, err)
	}
	if n, err := b.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestDeadlines(t *testing.T) {
	a, b := pair(t, "tcp")
	if err := b.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := b.Read(make([]byte, 4))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline = %v; want a timeout", err)
	}
	// A deadline that passes while the read waits for data.
	if err := b.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read that waited past its deadline = %v; want a timeout", err)
	}
	// Cleared, the connection works again.
	if err := b.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Read(make([]byte, 4)); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want 1, nil", n, err)
	}
	// A write that cannot finish (nobody reads) ends at its deadline,
	// having written part of the data.
	big := make([]byte, 64<<20)
	if err := a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := a.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 64<<20 {
		t.Fatalf("blocked Write = %d, %v; want part of it and a timeout", n, err)
	}
}

func TestClosedConn(t *testing.T) {
	a, _ := pair(t, "tcp")
	a.Close()
	if _, err := a.Read(make([]byte, 4)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close = %v; want net.ErrClosed", err)
	}
	var oe *net.OpError
	if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("Write after Close = %v; want a write *net.OpError matching net.ErrClosed", err)
	}
}

// TestCloseEndsWaitingRead checks that a Read waiting for data returns
// when another goroutine closes the connection, as with net.Conn.
func TestCloseEndsWaitingRead(t *testing.T) {
	_, b := pair(t, "tcp")
	done := make(chan error, 1)
	go func() {
		_, err := b.Read(make([]byte, 4))
		done <- err
	}()
	// Whether or not the reader is waiting yet, Close ends its Read.
	b.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read ended by Close = %v; want net.ErrClosed", err)
	}
}

func TestEmptyReadAndWrite(t *testing.T) {
	a, _ := pair(t, "tcp")
	if n, err := a.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
	if n, err := a.Write(nil); n != 0 || err != nil {
		t.Fatalf("Write(nil) = %d, %v", n, err)
	}
}

func TestListenerSetsUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := Listener{Listener: ln, TCPUserTimeout: 1500 * time.Millisecond}
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*Conn).Unwrap().(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	rc.Control(func(fd uintptr) { got, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout) })
	if gerr != nil || got != 1500 {
		t.Fatalf("TCP_USER_TIMEOUT = %d ms, %v; want 1500", got, gerr)
	}
}

func TestWrapLeavesOtherConns(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if Wrap(p) != p {
		t.Fatal("a net.Pipe end was wrapped")
	}
}

// TestWriteNowStopsAtFullBuffer writes to a peer that does not read until
// the socket takes no more: WriteNow must then return short instead of
// waiting, and every byte it reported written must arrive, in order.
func TestWriteNowStopsAtFullBuffer(t *testing.T) {
	client, server := pair(t, "tcp")
	c := client.(*Conn)
	chunk := make([]byte, 64<<10)
	var sent bytes.Buffer
	short := false
	for i := 0; i < 4096 && !short; i++ { // 256 MiB at most: far over any socket buffer
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		n, err := c.WriteNow(chunk)
		if err != nil {
			t.Fatalf("WriteNow: %v", err)
		}
		sent.Write(chunk[:n])
		short = n < len(chunk)
	}
	if !short {
		t.Fatal("WriteNow never returned short to a peer that does not read")
	}
	want := sent.Bytes()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatalf("read what was sent: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the peer read other bytes than WriteNow reported written")
	}
	// With room again it writes whole buffers.
	if n, err := c.WriteNow([]byte("after")); err != nil || n != 5 {
		t.Errorf("WriteNow after the peer read = %d, %v; want 5, nil", n, err)
	}
	client.Close()
	if _, err := c.WriteNow([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteNow on a closed conn = %v, want net.ErrClosed", err)
	}
}
