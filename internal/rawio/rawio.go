// Package rawio does a connection's socket reads and writes as raw system
// calls, so that they do not wake the Go runtime's monitor thread.
//
// Why: a goroutine entering a system call through package syscall tells
// the runtime, which wakes its sysmon thread if that was asleep because
// every P was idle. A server that answers a message and goes idle again,
// thousands of times a second, thus pays two extra thread switches per
// message. On a small VM a thread switch costs tens of microseconds: in a
// 3-node limiterd cluster under load sysmon was 21% of an owner node's CPU
// and 12% of the forwarding node's (perf, bench/loadtest.sh's cluster
// cell). A read or write on a non-blocking socket never blocks, so it does
// not need the runtime's system call bookkeeping: Conn makes it with
// syscall.RawSyscall inside the runtime poller's callback (net.Conn's
// SyscallConn), which waits for the socket exactly as net.Conn does, and
// honours its deadlines.
//
// Measured: that cluster's CPU per call fell from 84-87 to 66-67 us
// (-22%), its throughput rose by 11%.
//
// Only Linux TCP and Unix-domain connections are wrapped; Wrap returns
// every other connection unchanged. LIMITERD_RAW_IO=off in the
// environment turns wrapping off (to compare). Under the race detector an
// atomic counter stands in for package syscall's annotations of socket
// I/O (sys_race.go).
package rawio

import (
	"net"
	"time"
)

// Listener wraps every connection it accepts (see Wrap); it is as safe
// for concurrent use as the listener it wraps.
type Listener struct {
	net.Listener
	// TCPUserTimeout, when positive, is set as TCP_USER_TIMEOUT on every
	// accepted TCP connection (Linux), as grpc-go's server does on the
	// *net.TCPConn it can no longer see: unacknowledged data then breaks
	// the connection after this long. grpc-go uses its keepalive timeout,
	// 20 s by default.
	TCPUserTimeout time.Duration
}

// Accept implements net.Listener.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.TCPUserTimeout > 0 {
		if err := setUserTimeout(c, l.TCPUserTimeout); err != nil {
			c.Close()
			return nil, err
		}
	}
	return Wrap(c), nil
}
