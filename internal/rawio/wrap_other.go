//go:build !linux

package rawio

import (
	"net"
	"time"
)

// Wrap returns c: raw socket I/O is only done on Linux.
func Wrap(c net.Conn) net.Conn { return c }

func setUserTimeout(net.Conn, time.Duration) error { return nil }
