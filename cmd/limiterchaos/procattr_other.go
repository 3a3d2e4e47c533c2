//go:build !linux

package main

import "syscall"

// sysProcAttr returns nil: only Linux can tie a child's life to its parent.
// Nodes are still killed when limiterchaos exits normally or on SIGINT.
func sysProcAttr() *syscall.SysProcAttr { return nil }
