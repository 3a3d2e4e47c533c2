#!/usr/bin/env bash
# bench/clustercpu.sh: where a 3-node cluster's CPU goes, per node, for A/B
# runs of one change. Starts three limiterd nodes joined over gossip, sends
# a ghz warm-up and then a measured ghz run to the first node (2/3 of the
# calls are forwarded, as in bench/loadtest.sh), and prints, per node and
# in total, server CPU µs per call, context switches per call (summed
# over the node's threads, from /proc) and, per node, read and write system
# calls per call (/proc/PID/io: sockets, and the store's pwrite). On a small
# VM a context switch and the work around it cost about as much as a call,
# so the second figure often explains the first.
#
#   bash bench/clustercpu.sh                      # the working tree
#   bash bench/clustercpu.sh --bin /tmp/a/limiterd -- --replicas 1
#
# Options: --bin PATH (a limiterd binary; default: build the working tree),
# -n CALLS (measured calls, default 60000), --warmup CALLS (default 10000;
# use at least the key count so that every key is known before measuring),
# -c C (ghz concurrency, default 50), --keys N (default 10000), --perf FILE
# (also `perf record -g` the three nodes during the measured run), --rps R
# (ghz sends at most R calls a second: CPU per call falls as the rate, and
# with it the batch size, rises, so A/B runs at one fixed rate compare the
# change rather than the throughput it happened to reach), --lb DURATION
# (the measured run is cmd/limiterbench for DURATION instead of ghz: 64
# workers on 4 connections, as in bench/loadtest.sh, at a throughput ghz
# cannot reach here). Flags
# after -- go to every node. Single runs vary by several µs per call: compare
# pairs of runs, alternating A and B.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="" CALLS=60000 WARM=10000 C=50 KEYS=10000 PERF="" RPS=0 LB=""
while (($#)); do
	case $1 in
	--bin) BIN=$2; shift ;;
	-n) CALLS=$2; shift ;;
	--warmup) WARM=$2; shift ;;
	-c) C=$2; shift ;;
	--keys) KEYS=$2; shift ;;
	--perf) PERF=$2; shift ;;
	--rps) RPS=$2; shift ;;
	--lb) LB=$2; shift ;;
	--) shift; break ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "clustercpu: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done
NODEFLAGS=("$@")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/limiterd-clustercpu.XXXXXX")
PIDS=()
cleanup() {
	((${#PIDS[@]})) && kill "${PIDS[@]}" 2>/dev/null && wait "${PIDS[@]}" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

GHZ=$(command -v ghz || echo "$(go env GOPATH)/bin/ghz")
if [[ ! -x $GHZ ]]; then
	echo "installing ghz v0.121.0" >&2
	go install github.com/bojand/ghz/cmd/ghz@v0.121.0
	GHZ=$(go env GOPATH)/bin/ghz
fi
if [[ -z $BIN ]]; then
	(cd "$ROOT" && go build -o "$TMP/limiterd" ./cmd/limiterd)
	BIN=$TMP/limiterd
fi
[[ -z $LB ]] || (cd "$ROOT" && go build -o "$TMP/limiterbench" ./cmd/limiterbench)

free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	echo "clustercpu: no free port" >&2
	return 1
}

seed="" first=""
for i in 1 2 3; do
	g=127.0.0.1:$(free_port)
	extra=(--node-name "n$i" --gossip-addr "$g")
	[[ -z $seed ]] || extra+=(--join "$seed")
	http=""
	[[ $i != 1 ]] || http=127.0.0.1:0
	"$BIN" --grpc-addr 127.0.0.1:0 --http-addr "$http" --log-format json --config "$ROOT/bench/admit-all.yaml" \
		--data-dir "$TMP/data-$i" "${extra[@]}" ${NODEFLAGS[@]+"${NODEFLAGS[@]}"} 2>"$TMP/n$i.log" &
	PIDS+=($!)
	addr=""
	for _ in $(seq 150); do
		addr=$(grep -o '"grpc":"[^"]*"' "$TMP/n$i.log" | head -1 | cut -d'"' -f4 || true)
		[[ -n $addr ]] && break
		kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$TMP/n$i.log" >&2; exit 1; }
		sleep 0.1
	done
	[[ -n $addr ]] || { echo "clustercpu: node $i did not serve" >&2; cat "$TMP/n$i.log" >&2; exit 1; }
	if [[ -z $first ]]; then
		first=$addr
		metrics=http://$(grep -o '"http":"[^"]*"' "$TMP/n$i.log" | head -1 | cut -d'"' -f4)/metrics
	fi
	[[ -n $seed ]] || seed=$g
done
# Gossip joins within a few hundred ms on loopback; ListMembers needs grpcurl.
sleep 3

# ticks PID: utime+stime in clock ticks; switches PID: voluntary and
# involuntary context switches of its live threads.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
# syscalls PID: read and write system calls so far (/proc/PID/io).
syscalls() { awk '/^syscr/ { r = $2 } /^syscw/ { w = $2 } END { print r + 0 "," w + 0 }' "/proc/$1/io"; }

ghz_run() {
	"$GHZ" --insecure --call limiter.v1.Limiter/Allow -d "{\"key\":\"key-{{randomInt 0 $KEYS}}\"}" \
		-n "$1" -c "$C" -r "$RPS" -t 10s -O json "$first" >"$2"
}
ghz_run "$WARM" "$TMP/warmup.json"
# batches: node 1's forwarded calls and the batches they went in (sum and
# count of limiterd_forward_batch_size).
batches() {
	curl -s "$metrics" | awk '/^limiterd_forward_batch_size_sum/ { s += $2 } /^limiterd_forward_batch_size_count/ { c += $2 } END { print s + 0, c + 0 }'
}
read -r B0 N0 < <(batches)
declare -a T0 S0 T1 S1 IO0 IO1
for i in 0 1 2; do T0[i]=$(ticks "${PIDS[i]}"); S0[i]=$(switches "${PIDS[i]}"); IO0[i]=$(syscalls "${PIDS[i]}"); done
if [[ -n $PERF ]]; then
	perf record -F 999 -g -o "$PERF" -p "$(IFS=,; echo "${PIDS[*]}")" 2>/dev/null &
	PERFPID=$!
fi
if [[ -n $LB ]]; then
	"$TMP/limiterbench" --addr "$first" --conns 4 --workers 64 --keys "$KEYS" --key-prefix "key-" \
		--duration "$LB" --json >"$TMP/run.json"
	CALLS=$(grep -o '"requests": [0-9]*' "$TMP/run.json" | awk '{ print $2 }')
	C=64
else
	ghz_run "$CALLS" "$TMP/run.json"
fi
for i in 0 1 2; do T1[i]=$(ticks "${PIDS[i]}"); S1[i]=$(switches "${PIDS[i]}"); IO1[i]=$(syscalls "${PIDS[i]}"); done
read -r B1 N1 < <(batches)
if [[ -n $PERF ]]; then kill -INT "$PERFPID"; wait "$PERFPID" || true; fi

hz=$(getconf CLK_TCK)
rps=$(grep -o '"rps": *[0-9.]*' "$TMP/run.json" | head -1 | sed 's/.*: *//')
printf '%-8s %14s %16s %18s\n' node "CPU us/call" "switches/call" "reads,writes/call"
tt=0 ts=0
for i in 0 1 2; do
	dt=$((T1[i] - T0[i])) ds=$((S1[i] - S0[i]))
	tt=$((tt + dt)) ts=$((ts + ds))
	awk -v n="node$((i + 1))" -v t="$dt" -v s="$ds" -v hz="$hz" -v c="$CALLS" -v a="${IO0[i]}" -v b="${IO1[i]}" \
		'BEGIN { split(a, x, ","); split(b, y, ",")
			printf "%-8s %14.1f %16.2f %11.2f,%.2f\n", n, t / hz * 1e6 / c, s / c, (y[1] - x[1]) / c, (y[2] - x[2]) / c }'
done
awk -v t="$tt" -v s="$ts" -v hz="$hz" -v c="$CALLS" -v r="$rps" \
	'BEGIN { printf "%-8s %14.1f %16.2f   (%.0f req/s, %d calls at c='"$C"')\n", "total", t / hz * 1e6 / c, s / c, r, c }'
awk -v b="$((B1 - B0))" -v n="$((N1 - N0))" 'BEGIN { if (n > 0) printf "node 1 forwarded %d calls in %d batches: %.2f calls a batch\n", b, n, b / n }'
