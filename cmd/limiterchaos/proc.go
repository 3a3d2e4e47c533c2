package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// buildLimiterd builds ./cmd/limiterd of the module around the working
// directory into dir and returns the binary's path.
func buildLimiterd(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build limiterd: %w (put go on PATH or pass --limiterd)", err)
	}
	bin := filepath.Join(dir, "limiterd")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/limiterd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/limiterd in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// moduleRoot walks up from the working directory to the first go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory; pass --limiterd")
		}
		dir = parent
	}
}

// writePolicy writes the config file with the one policy, "chaos".
func writePolicy(dir string, limit int64, window time.Duration) (string, error) {
	path := filepath.Join(dir, "policies.yaml")
	body := fmt.Sprintf("policies:\n  - name: %s\n    limit: %d\n    window: %s\n", policyName, limit, window)
	return path, os.WriteFile(path, []byte(body), 0o600)
}

// policyName is the policy every call uses.
const policyName = "chaos"

// node is one member of the cluster: a name, a data directory and a gossip
// address kept across restarts, as a deployment's would be. Only the
// scenario goroutine touches its fields.
type node struct {
	name   string
	dir    string
	gossip string // empty until the first start picked a port
	cur    *proc  // the running process, nil while down
}

// proc is one run of limiterd. Load workers hold it while in rotation, so
// the fields other than inflight never change after start returns.
type proc struct {
	name  string
	cmd   *exec.Cmd
	grpc  string
	conn  *grpc.ClientConn
	lim   limiterv1.LimiterClient
	admin limiterv1.AdminClient
	done  chan struct{} // closed when the process has exited
	err   error         // exit status; read after done
	tail  *tailLog
	// inflight counts calls sent to this process and not yet answered.
	inflight atomic.Int64
}

// procConfig is what every start needs.
type procConfig struct {
	bin, cfgFile string
	extra        []string
}

// start runs limiterd for n, joining join when not empty, and waits until it
// serves. The process gets loopback listeners on free ports, except gossip,
// which keeps the address of the first start.
func (n *node) start(ctx context.Context, pc procConfig, join string) (*proc, error) {
	gossip := n.gossip
	if gossip == "" {
		gossip = "127.0.0.1:0"
	}
	args := []string{
		"--node-name", n.name, "--data-dir", n.dir, "--config", pc.cfgFile,
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--gossip-addr", gossip,
		"--log-format", "json",
	}
	if join != "" {
		args = append(args, "--join", join)
	}
	args = append(args, pc.extra...)
	if err := os.MkdirAll(n.dir, 0o750); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(filepath.Join(n.dir, "limiterd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(pc.bin, args...)
	cmd.SysProcAttr = sysProcAttr()
	cmd.Stdout = logFile
	pipe, err := cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	p := &proc{name: n.name, cmd: cmd, done: make(chan struct{}), tail: &tailLog{}}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", n.name, err)
	}
	serving := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			p.tail.add(line)
			var rec struct {
				Msg    string `json:"msg"`
				GRPC   string `json:"grpc"`
				Gossip string `json:"gossip"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "limiterd serving" {
				select {
				case serving <- [2]string{rec.GRPC, rec.Gossip}:
				default:
				}
			}
		}
		_, _ = io.Copy(logFile, pipe) // a line longer than the buffer
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case a := <-serving:
		p.grpc, n.gossip = a[0], a[1]
	case <-p.done:
		return nil, fmt.Errorf("%s exited before serving: %v\n%s", n.name, p.err, p.tail)
	case <-timer.C:
		p.kill()
		return nil, fmt.Errorf("%s did not serve within 30s\n%s", n.name, p.tail)
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	}
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.kill()
		return nil, err
	}
	p.conn, p.lim, p.admin = conn, limiterv1.NewLimiterClient(conn), limiterv1.NewAdminClient(conn)
	n.cur = p
	return p, nil
}

// signal sends sig to the process; a process that already exited is fine.
func (p *proc) signal(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
}

// wait waits up to d for the process to exit and returns its exit status.
func (p *proc) wait(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.err
	case <-timer.C:
		return fmt.Errorf("%s still running after %v", p.name, d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// kill sends SIGKILL (which also ends a stopped process) and waits for the
// exit.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tailLog keeps the last lines of a process's log for error messages. It is
// safe for concurrent use.
type tailLog struct {
	mu    sync.Mutex
	lines []string
}

const tailLines = 20

func (t *tailLog) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == tailLines {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, line)
}

func (t *tailLog) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
