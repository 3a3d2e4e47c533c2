package cluster

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// memberlist forgets a member it declared dead, and a partition that lasted
// longer than its failure detection never heals by itself: each side keeps
// the other for dead. Like serf, a Node therefore remembers members that
// died (not those that left gracefully) and keeps trying to join them, and
// its Config.Join addresses while it is alone, every ReconnectInterval until
// ReconnectTimeout has passed since the member was lost.

// lost records a member that failed; called with n.mu held.
func (n *Node) lostLocked(nd *memberlist.Node) {
	if nd.State == memberlist.StateLeft || nd.Name == n.cfg.NodeName {
		delete(n.lost, nd.Name)
		return
	}
	n.lost[nd.Name] = lostMember{addr: nd.FullAddress().Addr, since: time.Now()}
}

type lostMember struct {
	addr  string
	since time.Time
}

// reconnectLoop tries to join lost members until the node leaves or shuts
// down.
func (n *Node) reconnectLoop() {
	defer close(n.reconnectDone)
	t := time.NewTicker(n.cfg.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-n.reconnectStop:
			return
		case <-t.C:
			if addrs := n.reconnectTargets(); len(addrs) > 0 {
				if k, err := n.ml.Join(addrs); err == nil {
					n.log.Info("rejoined members", "contacted", k)
				}
			}
		}
	}
}

// reconnectTargets returns the gossip addresses worth a join attempt now.
func (n *Node) reconnectTargets() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.left {
		return nil
	}
	var addrs []string
	for name, l := range n.lost {
		if _, back := n.members[name]; back {
			delete(n.lost, name)
			continue
		}
		if time.Since(l.since) > n.cfg.ReconnectTimeout {
			delete(n.lost, name)
			continue
		}
		addrs = append(addrs, l.addr)
	}
	if len(n.members) <= 1 {
		addrs = append(addrs, n.cfg.Join...)
	}
	return addrs
}
