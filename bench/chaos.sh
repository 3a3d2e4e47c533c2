#!/usr/bin/env bash
# bench/chaos.sh: chaos runs of a 3-node limiterd cluster under paced load
# (cmd/limiterchaos): kill -9 of a key's owner and restart, a rolling
# SIGTERM restart, and a 3 s SIGSTOP freeze of an owner; for each, calls,
# client errors, degraded answers, over-admission and time to recover.
#
#   bash bench/chaos.sh            # long: 20 s of load per scenario, ~2 min
#   bash bench/chaos.sh --quick    # the CI size: ~3 s per scenario, ~20 s; prints only
#   bash bench/chaos.sh -- --rate 4000 --scenarios kill9   # more limiterchaos flags
#
# Builds limiterd and limiterchaos into a temporary directory, runs
# limiterchaos, prints its table and (without --quick) writes it to
# bench/results/chaos.md with the command and the machine.
# Exits with limiterchaos's status: 1 when a scenario exceeded its
# over-admission tolerance or did not recover, 2 on a setup error.
#
# Everything listens on 127.0.0.1; limiterchaos kills every node it started
# when it exits, however it exits (on Linux even when it is killed itself).
set -euo pipefail

QUICK=0
EXTRA=()
while (($#)); do
	case "$1" in
	--quick) QUICK=1 ;;
	--) shift; EXTRA+=("$@"); break ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "chaos: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=$ROOT/bench/results
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "chaos: go not found" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/limiterd-chaos.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$ROOT"
echo "building limiterd and limiterchaos" >&2
go build -o "$TMP/limiterd" ./cmd/limiterd
go build -o "$TMP/limiterchaos" ./cmd/limiterchaos

if ((QUICK)); then
	ARGS=(--short)
	OUT=""
	CMD="bash bench/chaos.sh --quick"
else
	ARGS=(--duration 20s)
	OUT=$RESULTS/chaos.md
	CMD="bash bench/chaos.sh"
fi
ARGS+=(${EXTRA[@]+"${EXTRA[@]}"})
[ ${#EXTRA[@]} -eq 0 ] || CMD="$CMD -- ${EXTRA[*]}"

STATUS=0
"$TMP/limiterchaos" --limiterd "$TMP/limiterd" --work-dir "$TMP/work" "${ARGS[@]}" >"$TMP/table.md" || STATUS=$?
cat "$TMP/table.md"
if ((STATUS == 2)); then
	echo "chaos: limiterchaos failed before it had results" >&2
	exit 2
fi
[ -n "$OUT" ] || exit "$STATUS"

mkdir -p "$RESULTS"
CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)
{
	echo "# limiterd chaos runs"
	echo
	echo "Run $(date -u +%Y-%m-%dT%H:%MZ) with \`$CMD\` on $(nproc) cores${CPU:+ ($CPU)}, $(go env GOVERSION), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' plus local changes'); load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown). Loopback only; load generator and nodes share the machine."
	echo
	echo "- **kill9**: SIGKILL the owner of the first key, restart it 1 s later on the same gossip address. Recovery counts from the kill, so it includes the 1 s down."
	echo "- **rolling**: drain each node from the clients' rotation, SIGTERM it (graceful leave with hand-off), start it again; recovery is the slowest of the three restarts."
	echo "- **freeze**: SIGSTOP the owner of the first key for 3 s, then SIGCONT. This freezes the node, it does not partition it: the others cannot reach it but it admits nothing itself. Real partitions are tested in-process by internal/daemon's TestClusterPartition."
	echo
	echo "Clients drop a faulted node at once and never retry; client errors are what the cluster returned. Over-admission per key is the most calls certainly admitted (whole [start, end] inside) in any window-long interval, minus the limit. Recovery: from the fault until every node lists 3 members alive at their current addresses and calls have run for 1 s without an error (that second not included)."
	echo
	cat "$TMP/table.md"
} >"$OUT"
echo "wrote ${OUT#"$ROOT"/}" >&2
exit "$STATUS"
