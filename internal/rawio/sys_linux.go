package rawio

import (
	"syscall"
	"unsafe"
)

// sysRead reads into b (not empty) with a raw system call.
func sysRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	raceAcquire()
	return int(n), errno
}

// sysWrite writes b (not empty) with a raw system call.
func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	raceRelease()
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), errno
}
