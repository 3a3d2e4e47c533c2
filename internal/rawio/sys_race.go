//go:build linux && race

package rawio

import "sync/atomic"

// Package syscall tells the race detector that what one goroutine wrote to
// a socket happens before another reads it (syscall.Write releases a
// shared sync point, syscall.Read acquires it). Raw system calls carry no
// such annotation, and tests that hand data between goroutines over a
// socket would report races; an atomic counter stands in for it, under
// the race detector only.
var ioSync atomic.Uint64

func raceRelease() { ioSync.Add(1) }

func raceAcquire() { ioSync.Load() }
