// Command wakecost measures what one message costs a Go server process in
// CPU when the process is idle between messages, as the owners of a
// limiterd cluster are while one node takes all the load.
//
// It starts a TCP echo server in a child process (itself, with -serve), sends
// it 300-byte messages over loopback, paced at each of the given rates and
// then back to back, and prints the child's CPU per message (getrusage in the
// child, read over the same connection before and after each run). The echo
// does no work besides reading and writing: what it costs is the kernel and
// Go runtime path of a process that goes idle, is woken by the network, and
// goes idle again. On a machine where that is expensive (a small VM, where
// an idle vCPU halts and every wake-up is an interrupt and a context
// switch), it is the floor under any per-message design; see the README's
// Performance section.
//
//	go run ./bench/wakecost                 # rates 250,1000,4000 per second, 3 s each
//	go run ./bench/wakecost -rates 1000 -d 5s
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const payload = 300

func main() {
	serve := flag.Bool("serve", false, "run as the echo server (internal)")
	rates := flag.String("rates", "250,1000,4000", "comma-separated message rates per second, paced")
	dur := flag.Duration("d", 3*time.Second, "duration of each run")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("wakecost: ")
	if *serve {
		if err := echo(); err != nil {
			log.Fatal(err)
		}
		return
	}
	var rs []int
	for _, f := range strings.Split(*rates, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			log.Fatalf("-rates: %q is not a positive number", f)
		}
		rs = append(rs, r)
	}
	if *dur <= 0 {
		log.Fatalf("-d: %v must be positive", *dur)
	}
	if err := run(rs, *dur); err != nil {
		log.Fatal(err)
	}
}

// run starts the server child and measures each rate, then back to back.
func run(rates []int, dur time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-serve")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return fmt.Errorf("server address: %w", err)
	}
	conn, err := net.Dial("tcp", strings.TrimSpace(addr))
	if err != nil {
		return err
	}
	defer conn.Close()
	c := &client{conn: conn, r: bufio.NewReader(conn), msg: make([]byte, 4+payload)}
	binary.BigEndian.PutUint32(c.msg, payload)

	fmt.Printf("%-14s %10s %22s\n", "pacing", "messages", "server CPU per message")
	for _, r := range append(rates, 0) {
		n, cpu, err := c.measure(r, dur)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%d/s", r)
		if r == 0 {
			name = "back to back"
		}
		fmt.Printf("%-14s %10d %19.1f us\n", name, n, float64(cpu.Nanoseconds())/1e3/float64(n))
	}
	return nil
}

type client struct {
	conn net.Conn
	r    *bufio.Reader
	msg  []byte
}

// measure sends messages at rate per second (0: each as soon as the last
// came back) for dur, and returns how many and the server's CPU for them.
func (c *client) measure(rate int, dur time.Duration) (int, time.Duration, error) {
	before, err := c.serverCPU()
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	n := 0
	for time.Since(start) < dur {
		if rate > 0 {
			next := start.Add(time.Duration(n) * time.Second / time.Duration(rate))
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
		}
		if _, err := c.conn.Write(c.msg); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c.r, c.msg); err != nil {
			return 0, 0, err
		}
		n++
	}
	after, err := c.serverCPU()
	if err != nil {
		return 0, 0, err
	}
	return n, after - before, nil
}

// serverCPU asks the server for its CPU time so far (an empty message).
func (c *client) serverCPU() (time.Duration, error) {
	var b [8]byte
	if _, err := c.conn.Write(b[:4]); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c.r, b[:]); err != nil {
		return 0, err
	}
	return time.Duration(binary.BigEndian.Uint64(b[:])), nil
}

// echo serves one connection: a message comes back as it came; an empty
// one gets this process's CPU time (user+system, ns).
func echo() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	buf := make([]byte, 4+payload)
	for {
		if _, err := io.ReadFull(r, buf[:4]); err != nil {
			return nil // the client is done
		}
		n := binary.BigEndian.Uint32(buf[:4])
		if n == 0 {
			var ru syscall.Rusage
			if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
				return err
			}
			binary.BigEndian.PutUint64(buf[:8], uint64(ru.Utime.Nano()+ru.Stime.Nano()))
			if _, err := conn.Write(buf[:8]); err != nil {
				return err
			}
			continue
		}
		if n > payload {
			return fmt.Errorf("message of %d bytes, want at most %d", n, payload)
		}
		if _, err := io.ReadFull(r, buf[4:4+n]); err != nil {
			return err
		}
		if _, err := conn.Write(buf[:4+n]); err != nil {
			return err
		}
	}
}
