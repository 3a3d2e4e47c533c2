//go:build linux && race

package rawio

import (
	"errors"
	"syscall"
)

// Under the race detector reads and writes go through package syscall,
// whose annotations tell the detector that what one goroutine wrote to a
// socket happens before another reads it. Raw system calls carry none, and
// tests that hand data between goroutines over a socket would report
// races. Everything else in Conn is the same.

func sysRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), b)
	return max(n, 0), errnoOf(err)
}

func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), b)
	return max(n, 0), errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if err != nil && !errors.As(err, &errno) {
		return syscall.EIO
	}
	return errno
}
