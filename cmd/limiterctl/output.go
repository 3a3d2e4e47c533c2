package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/limiterd/limiterd/client"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// json prints m as indented protojson with every field, zero ones included,
// so scripts can rely on "allowed": false being there. protojson varies its
// whitespace on purpose; json.Indent makes it stable.
func (e *env) json(m proto.Message) {
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(m)
	var buf bytes.Buffer
	if err == nil {
		err = json.Indent(&buf, b, "", "  ")
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "limiterctl: %s: render json: %v\n", e.name, err)
		return
	}
	fmt.Fprintln(e.stdout, buf.String())
}

// pairs prints label/value pairs as two aligned columns.
func (e *env) pairs(kv ...string) {
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(tw, "%s\t%s\n", kv[i], kv[i+1])
	}
	tw.Flush()
}

// table prints rows as aligned columns; the first row is the header.
func (e *env) table(rows [][]string) {
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		for i, c := range r {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

func (e *env) printDecision(d *client.Decision) {
	verdict := "yes"
	if !d.Allowed {
		verdict = "no: " + strconv.Itoa(int(d.Code)) + " " + d.Response.GetError().GetError()
	}
	kv := []string{
		"allowed", verdict,
		"policy", d.Policy,
		"remaining", itoa(d.Remaining) + " of " + itoa(d.Limit),
	}
	if !d.Allowed {
		kv = append(kv, "retry after", dur(d.RetryAfter))
	}
	kv = append(kv, "reset after", dur(d.ResetAfter))
	if d.MaxConcurrent > 0 {
		kv = append(kv, "in flight", itoa(d.InFlight)+" of "+itoa(d.MaxConcurrent))
	}
	if d.LeaseID != "" {
		kv = append(kv, "lease", d.LeaseID)
	}
	if d.Degraded {
		kv = append(kv, "degraded", "yes")
	}
	if !d.Allowed {
		kv = append(kv, "message", d.Response.GetError().GetMessage(), "request id", d.RequestID)
	}
	e.pairs(kv...)
}

func (e *env) printPolicies(ps ...*limiterv1.Policy) {
	rows := [][]string{{"NAME", "LIMIT", "WINDOW", "BUCKETS", "MAX_CONCURRENT", "LEASE_TTL", "FAIL_OPEN", "SHADOW"}}
	for _, p := range ps {
		rows = append(rows, []string{
			p.GetName(), itoa(p.GetLimit()), dur(p.GetWindow().AsDuration()), strconv.Itoa(int(p.GetBuckets())),
			itoa(p.GetMaxConcurrent()), dur(p.GetLeaseTtl().AsDuration()),
			strconv.FormatBool(p.GetFailOpen()), strconv.FormatBool(p.GetShadow()),
		})
	}
	e.table(rows)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
