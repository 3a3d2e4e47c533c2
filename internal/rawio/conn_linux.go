package rawio

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// enabled turns wrapping on; LIMITERD_RAW_IO=off turns it off, for A/B
// measurements.
var enabled = os.Getenv("LIMITERD_RAW_IO") != "off"

// setUserTimeout sets TCP_USER_TIMEOUT on a TCP connection.
func setUserTimeout(c net.Conn, d time.Duration) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d/time.Millisecond))
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set TCP_USER_TIMEOUT: %w", serr)
	}
	return nil
}

// tcpUserTimeout is TCP_USER_TIMEOUT, which package syscall lacks.
const tcpUserTimeout = 0x12

// Conn is a net.Conn whose Read and Write are raw system calls. Like a
// net.Conn it is safe for concurrent use: Reads are serialized, as are
// Writes, and a Read and a Write may run at once. Read blocks until data,
// EOF, an error or the read deadline; Write until all of b is written, an
// error or the write deadline.
type Conn struct {
	net.Conn // Close, addresses and deadlines
	rc       syscall.RawConn

	rmu   sync.Mutex // one Read at a time (its state below)
	rbuf  []byte
	rn    int
	rerr  error
	rfunc func(fd uintptr) bool

	wmu   sync.Mutex // one Write at a time
	wbuf  []byte
	wn    int
	werr  error
	wfunc func(fd uintptr) bool
	nfunc func(fd uintptr) bool // WriteNow's
}

// syscallConn is what *net.TCPConn and *net.UnixConn share.
type syscallConn interface {
	net.Conn
	SyscallConn() (syscall.RawConn, error)
}

// Wrap returns c with raw reads and writes when c is a TCP or Unix-domain
// connection, and c itself otherwise.
func Wrap(c net.Conn) net.Conn {
	if !enabled {
		return c
	}
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c
	}
	rc, err := c.(syscallConn).SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{Conn: c, rc: rc}
	// The callbacks are made once: a method value built per call would
	// allocate on every Read and Write.
	w.rfunc = w.readFD
	w.wfunc = w.writeFD
	w.nfunc = w.writeNowFD
	return w
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = b, 0, nil
	err := c.rc.Read(c.rfunc)
	n, rerr := c.rn, c.rerr
	c.rbuf = nil
	if err == nil {
		err = rerr
	}
	if err != nil && err != io.EOF {
		err = c.opError("read", err)
	}
	return n, err
}

func (c *Conn) readFD(fd uintptr) bool {
	for {
		n, errno := sysRead(fd, c.rbuf)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			return false // wait until readable
		case errno != 0:
			c.rerr = os.NewSyscallError("read", errno)
		case n == 0:
			c.rerr = io.EOF
		default:
			c.rn = int(n)
		}
		return true
	}
}

// Write implements net.Conn: it writes all of b unless an error stops it.
func (c *Conn) Write(b []byte) (int, error) { return c.write(b, c.wfunc) }

// WriteNow writes as much of b as the socket takes without waiting, and
// returns how much that was: less than len(b) (maybe 0) when its send
// buffer is full, that is when the peer reads slower than it is sent to.
// The error is the write's, not a full buffer's.
func (c *Conn) WriteNow(b []byte) (int, error) { return c.write(b, c.nfunc) }

// write writes b with f, writeFD or writeNowFD.
func (c *Conn) write(b []byte, f func(fd uintptr) bool) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werr = b, 0, nil
	var err error
	if len(b) > 0 {
		err = c.rc.Write(f)
	}
	n, werr := c.wn, c.werr
	c.wbuf = nil
	if err == nil {
		err = werr
	}
	if err != nil {
		err = c.opError("write", err)
	}
	return n, err
}

func (c *Conn) writeFD(fd uintptr) bool { return c.writeSome(fd, false) }

// writeNowFD is writeFD that stops at a full buffer instead of waiting.
func (c *Conn) writeNowFD(fd uintptr) bool { return c.writeSome(fd, true) }

// writeSome writes the rest of c.wbuf until it is all written, an error
// stops it or the socket's buffer is full; then it returns false (wait
// until writable, then go on) unless now is set.
func (c *Conn) writeSome(fd uintptr, now bool) bool {
	for c.wn < len(c.wbuf) {
		n, errno := sysWrite(fd, c.wbuf[c.wn:])
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			return now
		case errno != 0:
			c.werr = os.NewSyscallError("write", errno)
			return true
		}
		c.wn += int(n)
	}
	return true
}

// opError wraps err as net.Conn's methods do, so callers that look for a
// *net.OpError, a timeout or net.ErrClosed see the same errors.
func (c *Conn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		// The raw connection names its ops "raw-read" and "raw-write".
		e := *oe
		e.Op = op
		return &e
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Unwrap returns the wrapped connection.
func (c *Conn) Unwrap() net.Conn { return c.Conn }
