package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/limiterd/limiterd/internal/testcluster"
)

// TestRunRoute runs limiterbench against one node of a 3-node cluster,
// without and with --route: the run without forwards calls (so the count
// this test reads is live), the routed one forwards none, and both pass the
// accuracy check with no errors.
func TestRunRoute(t *testing.T) {
	nodes := testcluster.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, route := range []bool{false, true} {
		args := []string{"--addr", nodes[0].GRPCAddr(), "--requests", "900", "--keys", "60", "--workers", "8", "--conns", "2", "--json"}
		if route {
			args = append(args, "--route")
		}
		before := testcluster.Forwarded(t, nodes)
		var out, errb bytes.Buffer
		if code := run(ctx, args, &out, &errb); code != 0 {
			t.Fatalf("route=%t: run() = %d; stderr: %s", route, code, errb.String())
		}
		var r report
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("route=%t: decode %q: %v", route, out.String(), err)
		}
		if r.Requests != 900 || r.Errors != 0 || !r.Pass || r.Allowed != 900 {
			t.Errorf("route=%t: requests %d, allowed %d, errors %d, pass %t; want 900 allowed, no errors, pass", route, r.Requests, r.Allowed, r.Errors, r.Pass)
		}
		fw := testcluster.Forwarded(t, nodes) - before
		switch {
		case !route && fw == 0:
			t.Errorf("no call forwarded without --route; want about 2/3 of 900")
		case route && fw != 0:
			t.Errorf("%v calls forwarded with --route, want 0 (stderr: %s)", fw, errb.String())
		}
	}
}
