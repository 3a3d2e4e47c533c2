package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// clusterConfig says how to start the cluster.
type clusterConfig struct {
	bin, dir, cfgFile string
	n                 int
	extra             []string
	log               io.Writer
}

// cluster is the set of limiterd nodes and the rotation clients use.
// Starting, stopping and rotation changes happen on the scenario goroutine;
// load workers only read the rotation.
type cluster struct {
	pc    procConfig
	log   io.Writer
	nodes []*node

	// rotation holds the processes clients send calls to.
	rotation atomic.Pointer[[]*proc]

	mu    sync.Mutex
	procs []*proc // every process ever started, for close
}

// startCluster starts cfg.n nodes, the first alone and the others joining
// it, and waits until every node lists all of them alive.
func startCluster(ctx context.Context, cfg clusterConfig) (*cluster, error) {
	c := &cluster{pc: procConfig{bin: cfg.bin, cfgFile: cfg.cfgFile, extra: cfg.extra}, log: cfg.log}
	c.rotation.Store(&[]*proc{})
	for i := range cfg.n {
		n := &node{name: fmt.Sprintf("node-%d", i), dir: filepath.Join(cfg.dir, fmt.Sprintf("node-%d", i))}
		c.nodes = append(c.nodes, n)
		join := ""
		if i > 0 {
			join = c.nodes[0].gossip
		}
		if err := c.start(ctx, n, join); err != nil {
			c.close()
			return nil, err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, why := c.membersOK(ctx)
		if ok {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.close()
			return nil, fmt.Errorf("cluster did not form within 30s: %s", why)
		}
		sleep(ctx, 50*time.Millisecond)
	}
	for _, n := range c.nodes {
		c.setRotation(n, true)
	}
	return c, nil
}

// start runs n, joining join (or any other running node when empty and n is
// not the only one).
func (c *cluster) start(ctx context.Context, n *node, join string) error {
	if join == "" {
		for _, o := range c.nodes {
			if o != n && o.cur != nil && o.gossip != "" {
				join = o.gossip
				break
			}
		}
	}
	p, err := n.start(ctx, c.pc, join)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return nil
}

// setRotation puts n's current process in or out of the clients' rotation.
func (c *cluster) setRotation(n *node, in bool) {
	var next []*proc
	for _, p := range *c.rotation.Load() {
		if p.name != n.name {
			next = append(next, p)
		}
	}
	if in && n.cur != nil {
		next = append(next, n.cur)
		slices.SortFunc(next, func(a, b *proc) int { return strings.Compare(a.name, b.name) })
	}
	c.rotation.Store(&next)
}

// drain takes n out of the rotation and waits, up to 2s, until the calls
// already sent to it have been answered, as a load balancer drains a
// backend before it is stopped.
func (c *cluster) drain(ctx context.Context, n *node) {
	c.setRotation(n, false)
	if n.cur == nil {
		return
	}
	// A worker may have read the old rotation just before the change;
	// give it a moment to register its call.
	sleep(ctx, 20*time.Millisecond)
	deadline := time.Now().Add(2 * time.Second)
	for n.cur.inflight.Load() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		sleep(ctx, 5*time.Millisecond)
	}
}

// membersOK reports whether every node runs and lists exactly the cluster's
// nodes as alive, each at the gRPC address of its current process; when not,
// it says why.
func (c *cluster) membersOK(ctx context.Context) (bool, string) {
	want := map[string]string{}
	for _, n := range c.nodes {
		if n.cur == nil || n.cur.exited() {
			return false, n.name + " is not running"
		}
		want[n.name] = n.cur.grpc
	}
	for _, n := range c.nodes {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		res, err := n.cur.admin.ListMembers(cctx, &limiterv1.ListMembersRequest{})
		cancel()
		if err != nil {
			return false, fmt.Sprintf("%s: ListMembers: %v", n.name, err)
		}
		alive := 0
		for _, m := range res.GetMembers() {
			if m.GetState() != "alive" {
				continue
			}
			if want[m.GetName()] != m.GetGrpcAddr() {
				return false, fmt.Sprintf("%s lists %s at %s, want %s", n.name, m.GetName(), m.GetGrpcAddr(), want[m.GetName()])
			}
			alive++
		}
		if alive != len(want) {
			return false, fmt.Sprintf("%s lists %d alive members, want %d", n.name, alive, len(want))
		}
	}
	return true, ""
}

// ownerOf returns the node that owns key, asking the nodes in rotation.
func (c *cluster) ownerOf(ctx context.Context, key string) (*node, error) {
	var last error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, p := range *c.rotation.Load() {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			info, err := p.admin.GetKey(cctx, &limiterv1.GetKeyRequest{Policy: policyName, Key: key})
			cancel()
			if err != nil {
				last = err
				continue
			}
			for _, n := range c.nodes {
				if n.name == info.GetKey().GetOwner() {
					return n, nil
				}
			}
			last = fmt.Errorf("owner %q is not a node of the cluster", info.GetKey().GetOwner())
		}
		sleep(ctx, 50*time.Millisecond)
	}
	return nil, fmt.Errorf("owner of %q: %v", key, last)
}

// describe lists the nodes and their addresses.
func (c *cluster) describe() string {
	var parts []string
	for _, n := range c.nodes {
		if n.cur != nil {
			parts = append(parts, fmt.Sprintf("%s grpc=%s gossip=%s", n.name, n.cur.grpc, n.gossip))
		}
	}
	return strings.Join(parts, "; ")
}

// close kills every process still running and closes the connections.
func (c *cluster) close() {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	for _, p := range procs {
		p.kill()
		if p.conn != nil {
			p.conn.Close()
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
