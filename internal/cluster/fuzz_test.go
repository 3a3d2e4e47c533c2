package cluster

import (
	"testing"

	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// FuzzGossipMessages feeds arbitrary bytes to every decoder of what peers
// send over gossip: node metadata, policy broadcasts and push/pull state.
// Bad input is dropped; nothing panics, and whatever the node accepted it
// can encode and decode again.
func FuzzGossipMessages(f *testing.F) {
	meta, _ := proto.Marshal(&limiterv1.PeerMeta{Version: 1, GrpcAddr: "127.0.0.1:8081"})
	entry, _ := proto.Marshal(&limiterv1.PolicyEntry{Name: "p", Data: []byte(`{"name":"p"}`), Version: 3})
	snap, _ := proto.Marshal(&limiterv1.PolicySnapshot{Entries: []*limiterv1.PolicyEntry{{Name: "q", Version: 1, Deleted: true}}})
	f.Add(meta)
	f.Add(append([]byte{msgPolicy}, entry...))
	f.Add(append([]byte{stateFormat}, snap...))
	f.Add([]byte{})
	f.Add([]byte{9, 9, 9})

	cfg := testConfig("fuzz")
	cfg.GRPCAddr = "127.0.0.1:1" // never dialled: the node stays alone
	n, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { n.Shutdown() })
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = decodeMeta(b)
		n.handleMsg(b)
		n.mergePolicyState(b)
		state := n.policyState()
		var snap limiterv1.PolicySnapshot
		if len(state) == 0 || proto.Unmarshal(state[1:], &snap) != nil {
			t.Fatalf("the node's own state does not decode after input %x", b)
		}
	})
}
