package main

import "syscall"

// sysProcAttr makes the kernel kill a limiterd when limiterchaos dies, even
// by SIGKILL, so no node outlives a run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
