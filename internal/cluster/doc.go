// Package cluster turns several limiterd processes into one limiter: it
// keeps the member list (hashicorp/memberlist gossip), decides which member
// owns each key, forwards calls to owners, and spreads the policy map.
//
// A Node is created with New from a Config, registers the internal
// limiter.v1.Peer service on the server's gRPC server with
// RegisterPeerService, and joins the others with Join. Each member gossips
// its gRPC address in its node metadata.
//
// Ownership uses rendezvous (highest random weight) hashing over the
// routable members: every member scores every key and the highest score
// owns it; the next ones in score order are its replicas (Replicas). A
// member joining or leaving moves only the keys it wins or held, about 1/N.
// Ring is the immutable snapshot used for those answers; OnChange hands out
// the rings before and after each change so the server can hand keys off.
//
// Forward and ForwardRelease send a call to the owner. Concurrent calls to
// the same member are coalesced into one AllowBatch or ReleaseBatch batch
// over a single long-lived connection; each item carries what is left of
// its caller's deadline, and each result is either a response or a status
// that becomes a *RemoteError here. Replicate, PushState and Fetch move
// opaque, versioned key state between members; what the state means is the
// server's business (the Handler interface).
//
// With Config.WireAddr set, a node also serves the peer wire (wire.go) and
// gossips its address: Allow batches and Replicate calls to members that
// gossip one travel over one TCP connection per member, in frames of the
// same messages, decided and answered on the connection's goroutine;
// ReplicateAsync's updates there are answered only when they fail, and
// confirmed by the member's next answer on the connection.
// Everything else, and everything to members without a wire address, is
// the gRPC service.
//
// SetPolicy and DeletePolicy change a small versioned map that memberlist
// broadcasts and also exchanges whole during push/pull, so a member that
// joins late or missed a message converges; the highest version wins.
//
// This package returns its own errors (ErrOwnerUnavailable, ErrDeadline,
// *RemoteError, ...), never gRPC statuses; the server maps them to codes.
//
// # Caveats
//
//   - Ownership follows each node's own view of membership. While gossip
//     converges (normally well under a second on a LAN), two nodes may
//     disagree about an owner and a key can be decided in two places.
//   - A member is routable until memberlist declares it dead, including
//     while suspected. Callers should treat ErrOwnerUnavailable as a hint to
//     try the next replica; this package does not do that itself, nor does
//     it mark a peer down after failures.
//   - A peer whose host drops packets instead of refusing connections makes
//     forwards wait for their deadline (ErrDeadline) rather than fail fast.
//   - A forward whose caller gave up may still run on the owner if its
//     batch had already gone; the owner skips items whose budget ran out
//     before it got them.
//   - Policy entries that do not fit in one gossip packet (about 1 KB)
//     spread only by push/pull, every Config.PushPullInterval. Tombstones of
//     deleted policies are kept for the life of the process.
//   - A node that left gracefully may come back under the same name at a
//     different gossip address at once; one that crashed only once the
//     others have held it dead for 5s (memberlist's conflict rule).
//   - Shutdown must not be called from an OnChange or OnPolicy callback.
package cluster
