package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestChaosShort runs the --short chaos scenarios against a real 3-process
// cluster, as CI does: kill -9 of an owner, a rolling restart and a freeze,
// each within its over-admission tolerance and recovered. Timings only
// affect pass or fail through the tolerances and the recovery bound.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds limiterd and runs a 3-process cluster")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"--short", "--json"}, &stdout, &stderr)
	t.Logf("progress:\n%s", stderr.String())
	var out struct {
		Results []result `json:"results"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("run() = %d; output is not JSON: %v\n%s", code, err, stdout.String())
	}
	o, err := parseFlags([]string{"--short"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	if err := writeTable(&table, o, out.Results); err != nil {
		t.Fatal(err)
	}
	t.Logf("results:\n%s", table.String())
	if code != 0 {
		t.Fatalf("run() = %d, want 0", code)
	}
	if len(out.Results) != len(allScenarios) {
		t.Fatalf("got %d results, want %d", len(out.Results), len(allScenarios))
	}
	for _, r := range out.Results {
		if r.Calls == 0 || r.Admitted == 0 || len(r.Faults) == 0 {
			t.Errorf("%s: %d calls, %d admitted, %d faults; want some of each", r.Scenario, r.Calls, r.Admitted, len(r.Faults))
		}
		// A scenario in which no key reached its limit cannot show
		// over-admission. The freeze stalls clients for seconds, so it may
		// fall short on a slow machine.
		if r.Scenario != "freeze" && r.Accuracy.KeysAtLimit == 0 {
			t.Errorf("%s: no key reached its limit; the over-admission check proved nothing", r.Scenario)
		}
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    func(o options) bool
		wantErr bool
	}{
		{name: "defaults", args: nil, want: func(o options) bool {
			// 2000 calls/s for 20s over 12 keys: 3333 per key, half of it.
			// kill9: 2000/12 calls/s per key for 10ms is 1.67, rounded up, plus one.
			return o.duration == 20*time.Second && o.limit == 1666 && o.maxOver["freeze"] == 1666 && o.maxOver["kill9"] == 3 && len(o.scenarios) == 3
		}},
		{name: "kill9 tolerance follows the replication interval", args: []string{"--limiterd-arg=--replication-interval=60ms"}, want: func(o options) bool {
			return o.maxOver["kill9"] == 11 // 166.7/s x 60ms = 10, plus one
		}},
		{name: "bad replication interval", args: []string{"--limiterd-arg", "--replication-interval=soon"}, wantErr: true},
		{name: "short", args: []string{"--short"}, want: func(o options) bool {
			return o.duration == 3*time.Second && o.rate == 300 && o.keys == 6 && o.limit == 75
		}},
		{name: "short keeps explicit flags", args: []string{"--short", "--rate", "600", "--limit", "10"}, want: func(o options) bool {
			return o.duration == 3*time.Second && o.rate == 600 && o.limit == 10 && o.maxOver["freeze"] == 10
		}},
		{name: "one scenario", args: []string{"--scenarios", "rolling", "--max-over-rolling", "2"}, want: func(o options) bool {
			return len(o.scenarios) == 1 && o.scenarios[0] == "rolling" && o.maxOver["rolling"] == 2
		}},
		{name: "unknown scenario", args: []string{"--scenarios", "kill9,partition"}, wantErr: true},
		{name: "no scenario", args: []string{"--scenarios", ","}, wantErr: true},
		{name: "bad rate", args: []string{"--rate", "0"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, &bytes.Buffer{})
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseFlags(%q) error = %v, want error %v", tt.args, err, tt.wantErr)
			}
			if err == nil && !tt.want(o) {
				t.Errorf("parseFlags(%q) = %+v", tt.args, o)
			}
		})
	}
}
