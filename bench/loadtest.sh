#!/usr/bin/env bash
# bench/loadtest.sh: ghz load against the empty-handler baseline, one limiterd
# node and (once the cluster flags exist) a 3-node cluster, with each server's
# CPU time read from /proc before and after every run.
#
#   bash bench/loadtest.sh            # full: 3 rounds of 100k calls per run
#   bash bench/loadtest.sh --quick    # 1 round of 20k calls, under a minute
#
# Options: --quick, -n CALLS, --rounds R, --keys N (default 10000),
# --connections N (ghz connections, default 1), --rev REV (build limiterd
# from the committed revision REV, e.g. HEAD, via git archive, instead of
# the working tree), --no-cluster, --no-plot, --pprof (also save a CPU
# profile of limiterd-1 during each of its measured ghz runs, as
# bench/results/cpu-limiterd-1-cC.pprof; read it with
# `go tool pprof -top BINARY FILE`), -h.
#
# What it does, in order:
#   1. installs ghz v0.121.0 with `go install` unless ghz is on PATH or in
#      $(go env GOPATH)/bin;
#   2. builds limiterd, bench/baseline, cmd/limiterbench, bench/ghzstat and
#      bench/plot into a temporary directory;
#   3. starts every server on 127.0.0.1 port 0: the baseline, the baseline
#      with limiterd's raw socket I/O (baseline-raw, --raw-io), one limiterd
#      (fresh data dir, a "default" policy of 4294967295 hits per 5m, so every
#      call is allowed and counted: the cost measured is that of an admitted
#      call, the common case; denials count nothing) and, when limiterd has
#      the cluster flags, three limiterd nodes joined over gossip;
#   4. for concurrency 50 and 200, for each round, each server in turn (so
#      that a noisy neighbour hurts all of them alike): a short ghz warm-up,
#      then the measured ghz run (keys from the template
#      key-{{randomInt 0 KEYS}}, gRPC reflection, plain text), with the
#      server's utime+stime read from /proc/PID/stat before and after; then,
#      per round, limiterbench (closed loop, 64 workers, 4 connections)
#      against each server, the servers' CPU read around it too, and once
#      more against the cluster with --route (clients send each key to its
#      owner: cluster-3-routed);
#   5. measures the machine's CPU cost per wake-up of an idle process
#      (bench/wakecost, a bare TCP echo; 4 s, or 16 s in a full run);
#   6. prints one table and writes bench/results/summary.md, the ghz HTML
#      reports (ghz-*.html, git-ignored), limiterbench JSON, and
#      bench/results/loadtest.png.
#
# Server CPU per call is (Δ(utime+stime) / CLK_TCK) / calls: a tick is 10 ms,
# so a run needs a few hundred ms of server CPU to be read within a few per
# cent; the quick mode is at that edge. For the cluster the CPU of all three
# nodes is added up and all load goes to the first node.
#
# Everything listens on 127.0.0.1. Every process the script starts is
# stopped when it exits, however it exits.
set -euo pipefail

QUICK=0
N=""
ROUNDS=""
KEYS=10000
GHZ_CONNS=1
CLUSTER=1
PLOT=1
PPROF=0
PPROF_ADDR=""
REV=""
while (($#)); do
	case "$1" in
	--quick) QUICK=1 ;;
	-n) N="$2"; shift ;;
	--rounds) ROUNDS="$2"; shift ;;
	--keys) KEYS="$2"; shift ;;
	--connections) GHZ_CONNS="$2"; shift ;;
	--rev) REV="$2"; shift ;;
	--no-cluster) CLUSTER=0 ;;
	--no-plot) PLOT=0 ;;
	--pprof) PPROF=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "loadtest: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done
if ((QUICK)); then
	N=${N:-20000}
	ROUNDS=${ROUNDS:-1}
	WARMUP=2000
	LB_DURATION=3s
else
	N=${N:-100000}
	ROUNDS=${ROUNDS:-3}
	WARMUP=10000
	LB_DURATION=10s
fi
CONCURRENCY=(50 200)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=$ROOT/bench/results
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "loadtest: go not found" >&2; exit 1; }
export PATH=$PATH:$(go env GOPATH)/bin
CLK_TCK=$(getconf CLK_TCK)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/limiterd-loadtest.XXXXXX")
PIDS=()

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '%s\n' "$*" >&2; }

# forget PID...: drops PIDs from the list the exit trap stops.
forget() {
	local p keep=()
	for p in "${PIDS[@]}"; do
		[[ " $* " == *" $p "* ]] || keep+=("$p")
	done
	PIDS=(${keep[@]+"${keep[@]}"})
}

# stop PID...: graceful stop of servers started by this script.
stop() {
	local pid
	for pid; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	forget "$@"
}

ensure_ghz() {
	if command -v ghz >/dev/null; then return; fi
	log "installing ghz v0.121.0 (go install github.com/bojand/ghz/cmd/ghz@v0.121.0)"
	go install github.com/bojand/ghz/cmd/ghz@v0.121.0
}

build() {
	log "building into $TMP"
	(cd "$ROOT" && go build -o "$TMP/" ./cmd/limiterbench ./bench/baseline ./bench/ghzstat ./bench/plot ./bench/wakecost)
	if [[ -n $REV ]]; then
		log "building limiterd from git revision $REV"
		mkdir "$TMP/src"
		git -C "$ROOT" archive "$REV" | tar -x -C "$TMP/src"
		(cd "$TMP/src" && go build -o "$TMP/" ./cmd/limiterd)
	else
		(cd "$ROOT" && go build -o "$TMP/" ./cmd/limiterd)
	fi
}

# start NAME CMD...: starts a server with its stderr in $RESULTS/NAME.log,
# waits for its {"msg":"limiterd serving","grpc":ADDR} line and sets
# STARTED_PID and STARTED_ADDR.
start() {
	local name=$1 logf=$RESULTS/$1.log
	shift
	"$@" 2>"$logf" &
	STARTED_PID=$!
	PIDS+=("$STARTED_PID")
	STARTED_ADDR=""
	for _ in $(seq 150); do
		STARTED_ADDR=$(grep '"msg":"limiterd serving"' "$logf" | grep -o '"grpc":"[^"]*"' | head -1 | cut -d'"' -f4 || true)
		[[ -n $STARTED_ADDR ]] && return
		if ! kill -0 "$STARTED_PID" 2>/dev/null; then
			log "loadtest: $name exited before serving:"; cat "$logf" >&2; return 1
		fi
		sleep 0.1
	done
	log "loadtest: $name did not log its address within 15s:"; cat "$logf" >&2
	return 1
}

# cpu_ticks PID...: utime+stime of the processes, in clock ticks.
cpu_ticks() {
	local pid total=0 t
	for pid; do
		t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")
		total=$((total + t))
	done
	echo "$total"
}

# ghz_run ADDR C CALLS OUT: a ghz run (reflection, plain text), in the
# background so that a signal reaches the traps at once.
ghz_run() {
	local addr=$1 c=$2 calls=$3 out=$4 pid
	ghz --insecure --call limiter.v1.Limiter/Allow \
		-d "{\"key\":\"key-{{randomInt 0 $KEYS}}\"}" \
		-n "$calls" -c "$c" --connections "$GHZ_CONNS" -t 10s \
		-O html -o "$out" "$addr" >/dev/null &
	pid=$!
	PIDS+=("$pid")
	wait "$pid"
	forget "$pid"
}

# measure SERVER C ROUND: one warm-up and one measured ghz run against
# SERVER; appends to $TMP/rows.tsv: server c round calls rps p50 p90 p99 max
# errors by_status cpu_ticks.
measure() {
	local server=$1 c=$2 round=$3 addr=${ADDR[$1]} before after html stat ticks
	# shellcheck disable=SC2086
	local pids=(${PIDSOF[$1]})
	html=$RESULTS/ghz-$server-c$c-r$round.html
	ghz_run "$addr" "$c" "$WARMUP" "$TMP/warmup.html"
	before=$(cpu_ticks "${pids[@]}")
	if ((PPROF)) && [[ $server == limiterd-1 && $round == 1 ]]; then
		# A profile of the first seconds of the measured run.
		curl -s -o "$RESULTS/cpu-limiterd-1-c$c.pprof" "http://$PPROF_ADDR/debug/pprof/profile?seconds=3" &
		PIDS+=("$!")
	fi
	ghz_run "$addr" "$c" "$N" "$html"
	after=$(cpu_ticks "${pids[@]}")
	stat=$("$TMP/ghzstat" "$html")
	ticks=$((after - before))
	printf '%s\t%s\t%s\t%s\t%s\n' "$server" "$c" "$round" "$stat" "$ticks" >>"$TMP/rows.tsv"
	log "  $server c=$c round $round: $(cut -f2 <<<"$stat") req/s, p99 $(cut -f5 <<<"$stat") ms," \
		"server CPU $(awk -v d="$ticks" -v hz="$CLK_TCK" -v n="$(cut -f1 <<<"$stat")" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }') us/call"
}

# bench LABEL SERVER ROUND [ARGS...]: limiterbench, closed loop, against
# SERVER, with the servers' CPU read around it; its JSON goes to
# $RESULTS/limiterbench-LABEL-rROUND.json and a row to $TMP/lb.tsv:
# label round rps exit requests cpu_ticks.
bench() {
	local label=$1 server=$2 round=$3 out=$RESULTS/limiterbench-$1-r$3.json rc=0 rps reqs before after
	shift 3
	# shellcheck disable=SC2086
	local pids=(${PIDSOF[$server]})
	before=$(cpu_ticks "${pids[@]}")
	"$TMP/limiterbench" --addr "${ADDR[$server]}" --conns 4 --workers 64 --keys "$KEYS" \
		--key-prefix "lb-" --duration "$LB_DURATION" --json "$@" >"$out" || rc=$?
	after=$(cpu_ticks "${pids[@]}")
	rps=$(grep -o '"rps": [0-9.]*' "$out" | awk '{ printf "%.0f", $2 }')
	reqs=$(grep -o '"requests": [0-9]*' "$out" | awk '{ print $2 }')
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$round" "${rps:-0}" "$rc" "${reqs:-0}" "$((after - before))" >>"$TMP/lb.tsv"
	log "  $label limiterbench round $round: ${rps:-?} req/s, server CPU" \
		"$(awk -v d="$((after - before))" -v hz="$CLK_TCK" -v n="${reqs:-0}" 'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n; else printf "?" }') us/call (exit $rc)"
}

free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	return 1
}

declare -A ADDR PIDSOF
SERVERS=()

start_baseline() {
	start baseline "$TMP/baseline" --grpc-addr 127.0.0.1:0
	ADDR[baseline]=$STARTED_ADDR
	PIDSOF[baseline]=$STARTED_PID
	SERVERS+=(baseline)
}

# baseline-raw: the same empty server with limiterd's raw socket I/O
# (package rawio), to show how much of limiterd's figures that explains.
# Ratios stay against the stock baseline.
start_baseline_raw() {
	start baseline-raw "$TMP/baseline" --grpc-addr 127.0.0.1:0 --raw-io
	ADDR[baseline-raw]=$STARTED_ADDR
	PIDSOF[baseline-raw]=$STARTED_PID
	SERVERS+=(baseline-raw)
}

start_single() {
	local solo=()
	# With the cluster flags, an empty --gossip-addr is a single node
	# without gossip (the default binds 127.0.0.1:7946).
	if grep -q -- '-gossip-addr' <<<"$LIMITERD_HELP"; then solo=(--gossip-addr ""); fi
	if ((PPROF)); then
		PPROF_ADDR=127.0.0.1:$(free_port)
		solo+=(--http-addr "$PPROF_ADDR" --pprof)
	fi
	start limiterd-1 "${LIMITERD[@]}" --data-dir "$TMP/data-1" ${solo[@]+"${solo[@]}"}
	ADDR[limiterd-1]=$STARTED_ADDR
	PIDSOF[limiterd-1]=$STARTED_PID
	SERVERS+=(limiterd-1)
}

# start_cluster: three nodes joined over gossip; all load goes to the first
# and the CPU of all three is counted. Needs limiterd --node-name,
# --gossip-addr and --join; skips with a note when --help lists no --join.
CLUSTER_NOTE=""
start_cluster() {
	if ! grep -q -- '-join' <<<"$LIMITERD_HELP"; then
		CLUSTER_NOTE="skipped: cluster flags not available (limiterd --help lists no --join)"
		log "cluster-3 $CLUSTER_NOTE"
		return
	fi
	local i g seed="" pids=() first=""
	for i in 1 2 3; do
		g=127.0.0.1:$(free_port)
		local extra=(--node-name "bench-$i" --gossip-addr "$g")
		[[ -z $seed ]] || extra+=(--join "$seed")
		start "cluster3-node$i" "${LIMITERD[@]}" --data-dir "$TMP/data-c$i" "${extra[@]}"
		pids+=("$STARTED_PID")
		[[ -n $first ]] || first=$STARTED_ADDR
		[[ -n $seed ]] || seed=$g
	done
	ADDR[cluster-3]=$first
	PIDSOF[cluster-3]="${pids[*]}"
	SERVERS+=(cluster-3)
	wait_members "$first" 3
}

# wait_members ADDR N: polls Admin/ListMembers (with grpcurl, if installed)
# until N members are alive, else waits a fixed 3s.
wait_members() {
	local addr=$1 want=$2 n
	if ! command -v grpcurl >/dev/null; then
		log "  grpcurl not installed: waiting 3s for the cluster to form"
		sleep 3
		return
	fi
	for _ in $(seq 100); do
		n=$(grpcurl -plaintext "$addr" limiter.v1.Admin/ListMembers 2>/dev/null | grep -c '"state": "alive"' || true)
		((n >= want)) && return
		sleep 0.1
	done
	log "  warning: Admin/ListMembers on $addr did not show $want alive members within 10s; going on"
}

# report: the table on stdout, and summary.md. Per server and concurrency:
# req/s, p50 and p99 are medians over the rounds; errors add up; CPU per call
# is all CPU over all calls.
report() {
	local table lbtable now ghzver
	table=$(awk -F'\t' -v hz="$CLK_TCK" '
		function median(list,   n, a, i, j, t) {
			n = split(list, a, " ")
			for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
			return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		{
			k = $1 SUBSEP $2
			if (!(k in calls)) { order[++m] = k; srv[k] = $1; cc[k] = $2 }
			calls[k] += $4; rps[k] = rps[k] " " $5; p50[k] = p50[k] " " $6; p99[k] = p99[k] " " $8
			errs[k] += $10; if ($11 != "-") st[k] = st[k] " " $11; ticks[k] += $12
		}
		END {
			for (i = 1; i <= m; i++) {
				k = order[i]; cpu[k] = ticks[k] / hz * 1e6 / calls[k]; q99[k] = median(p99[k])
				if (srv[k] == "baseline") { bcpu[cc[k]] = cpu[k]; bp99[cc[k]] = q99[k] }
			}
			printf "| server | c | req/s | p50 ms | p99 ms | errors | server CPU us/call | CPU/call x baseline | p99 x baseline |\n"
			printf "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
			for (i = 1; i <= m; i++) {
				k = order[i]
				cx = (bcpu[cc[k]] > 0) ? sprintf("%.2f", cpu[k] / bcpu[cc[k]]) : "-"
				px = (bp99[cc[k]] > 0) ? sprintf("%.2f", q99[k] / bp99[cc[k]]) : "-"
				err = errs[k]; if (st[k] != "") err = err " (" substr(st[k], 2) ")"
				printf "| %s | %s | %.0f | %.2f | %.2f | %s | %.1f | %s | %s |\n", srv[k], cc[k], median(rps[k]), median(p50[k]), q99[k], err, cpu[k], cx, px
			}
		}' "$TMP/rows.tsv")
	lbtable=$(awk -F'\t' -v hz="$CLK_TCK" '
		function median(list,   n, a, i, j, t) {
			n = split(list, a, " ")
			for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
			return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		{
			if (!($1 in rps)) order[++m] = $1; rps[$1] = rps[$1] " " $3; if ($4 != 0) bad[$1] = bad[$1] " " $4
			calls[$1] += $5; ticks[$1] += $6
		}
		END {
			base = ("baseline" in rps) ? median(rps["baseline"]) : 0
			bcpu = (calls["baseline"] > 0) ? ticks["baseline"] / hz * 1e6 / calls["baseline"] : 0
			printf "| server | limiterbench req/s | x baseline | server CPU us/call | CPU/call x baseline | non-zero exits |\n|---|---:|---:|---:|---:|---|\n"
			for (i = 1; i <= m; i++) {
				s = order[i]; v = median(rps[s]); cpu = (calls[s] > 0) ? ticks[s] / hz * 1e6 / calls[s] : 0
				printf "| %s | %.0f | %s | %.1f | %s | %s |\n", s, v, (base > 0) ? sprintf("%.2f", v / base) : "-", cpu, (bcpu > 0) ? sprintf("%.2f", cpu / bcpu) : "-", (s in bad) ? substr(bad[s], 2) : "none"
			}
		}' "$TMP/lb.tsv")
	echo
	column -t -s'|' <<<"$(grep -v '^|---' <<<"$table" | sed 's/^| //; s/ |$//')" 2>/dev/null || echo "$table"
	echo
	column -t -s'|' <<<"$(grep -v '^|---' <<<"$lbtable" | sed 's/^| //; s/ |$//')" 2>/dev/null || echo "$lbtable"
	[[ -z $CLUSTER_NOTE ]] || echo "cluster-3: $CLUSTER_NOTE"

	now=$(date -u +%Y-%m-%dT%H:%MZ)
	ghzver=$(go version -m "$(command -v ghz)" 2>/dev/null | awk '$1 == "mod" { print $3 }')
	{
		echo "# limiterd load test"
		echo
		echo "Run $now with \`bash bench/loadtest.sh$ARGS_TEXT\` on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))," \
			"$(go version | awk '{print $3}'), ghz ${ghzver:-unknown version}. ghz, servers and limiterbench share the machine; loopback only;" \
			"load average before the run: $LOADAVG."
		echo
		echo "ghz: $ROUNDS round(s) of $N calls per server and concurrency, each after a $WARMUP-call warm-up, servers taking turns;" \
			"$GHZ_CONNS connection(s); keys \`key-{{randomInt 0 $KEYS}}\`. req/s, p50 and p99 are medians over the rounds (p50/p99 over calls with status OK)." \
			"limiterd: fresh data dir, policy \`default\` = 4294967295 per 5m (every call allowed and counted), write-behind every 100ms." \
			"Server CPU per call = utime+stime from /proc/PID/stat (CLK_TCK $CLK_TCK) around the measured runs over their calls; for cluster-3 all three nodes count and all load goes to node 1." \
			"Ratios are to the stock baseline (a plain grpc-go server with empty handlers); baseline-raw is that server with limiterd's socket I/O (package rawio: raw read and write system calls, which do not wake the Go runtime's sysmon thread), so its row shows how much of limiterd's lead over the baseline that alone explains."
		echo
		echo "$table"
		echo
		echo "limiterbench: closed loop, 64 workers, 4 connections, $LB_DURATION, $KEYS keys, median of $ROUNDS round(s); server CPU per call as above, over all rounds." \
			"cluster-3 sends every call to node 1, which forwards 2/3 of them; cluster-3-routed is the same cluster with \`limiterbench --route\`: one routing client (client.WithRouting) per connection sends each key to its owner, so nothing is forwarded."
		echo
		echo "$lbtable"
		echo
		[[ -z $CLUSTER_NOTE ]] || { echo "cluster-3: $CLUSTER_NOTE"; echo; }
		echo "What one message costs a server process that is idle between messages on this machine (\`bench/wakecost\`: a bare TCP echo in Go, 300-byte messages, CPU of the echo process per message):"
		echo
		echo '```'
		echo "$WAKECOST"
		echo '```'
		echo
		echo "HTML reports: \`ghz-<server>-c<c>-r<round>.html\` (not committed)."
	} >"$RESULTS/summary.md"
}

ARGS_TEXT=""
((QUICK)) && ARGS_TEXT=" --quick"
[[ -z $REV ]] || ARGS_TEXT="$ARGS_TEXT --rev $REV ($(git -C "$ROOT" rev-parse --short "$REV"))"
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$RESULTS"
rm -f "$RESULTS"/ghz-*.html "$RESULTS"/limiterbench-*.json "$RESULTS"/*.log
LIMITERD=("$TMP/limiterd" --grpc-addr 127.0.0.1:0 --http-addr "" --log-format json --config "$ROOT/bench/admit-all.yaml")
: >"$TMP/rows.tsv"
: >"$TMP/lb.tsv"

ensure_ghz
build
LIMITERD_HELP=$("$TMP/limiterd" --help 2>&1 || true)
start_baseline
start_baseline_raw
start_single
if ((CLUSTER)); then start_cluster; else CLUSTER_NOTE="skipped: --no-cluster"; fi
log "servers: $(for s in "${SERVERS[@]}"; do printf '%s=%s ' "$s" "${ADDR[$s]}"; done)"
for c in "${CONCURRENCY[@]}"; do
	for round in $(seq "$ROUNDS"); do
		for s in "${SERVERS[@]}"; do measure "$s" "$c" "$round"; done
	done
done
for round in $(seq "$ROUNDS"); do
	for s in "${SERVERS[@]}"; do
		if [[ $s == baseline* ]]; then bench "$s" "$s" "$round" --check=false; else bench "$s" "$s" "$round"; fi
		[[ $s != cluster-3 ]] || bench cluster-3-routed cluster-3 "$round" --route
	done
done
log "measuring the machine's cost per wake-up (bench/wakecost)"
WAKECOST=$("$TMP/wakecost" -d "$( ((QUICK)) && echo 1s || echo 3s)" 2>&1) || WAKECOST="wakecost failed: $WAKECOST"
report
if ((PLOT)); then
	"$TMP/plot" -in "$RESULTS/summary.md" -out "$RESULTS/loadtest.png"
	log "wrote $RESULTS/summary.md and $RESULTS/loadtest.png"
else
	log "wrote $RESULTS/summary.md"
fi
