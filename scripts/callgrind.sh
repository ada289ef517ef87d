#!/usr/bin/env bash
# Instructions per unary call, a direct tonic `Channel` against the crate's balanced channel
# (benches/callgrind.rs), counted by `valgrind --tool=callgrind`: nearly the same however busy
# the machine is, unlike throughput (only timer-driven work grows with a run's wall time). Each peer runs twice, with SMALL and LARGE counted calls;
# the difference of the totals over LARGE - SMALL calls is the cost of one call (client and
# the in-process server together), setup and warm-up cancelling out. The profiles stay in
# $CALLGRIND_DIR for `callgrind_annotate --inclusive=yes FILE`.
#   scripts/callgrind.sh                      # 500 and 5500 calls per peer
#   SMALL=1000 LARGE=11000 scripts/callgrind.sh
set -euo pipefail
command -v valgrind >/dev/null || { echo "callgrind: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

cd "$(dirname "$0")/.."
small=${SMALL:-500}
large=${LARGE:-5500}
dir=${CALLGRIND_DIR:-$(mktemp -d /tmp/callgrind.XXXXXX)}
mkdir -p "$dir"
bin=$(cargo bench --bench callgrind --no-run --message-format=json 2>/dev/null |
	sed -n 's/.*"executable":"\([^"]*callgrind[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "callgrind: the bench binary did not build" >&2; exit 1; }

# total PEER CALLS: the instructions the whole process ran.
total() {
	CALLGRIND_PEER=$1 CALLGRIND_CALLS=$2 valgrind --tool=callgrind \
		--callgrind-out-file="$dir/cg.$1.$2" "$bin" --bench 2>&1 >/dev/null |
		sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

declare -A per_call
for peer in direct ours; do
	a=$(total "$peer" "$small")
	b=$(total "$peer" "$large")
	per_call[$peer]=$(((b - a) / (large - small)))
	echo "$peer: ${per_call[$peer]} instructions per call ($a at $small calls, $b at $large)"
done
awk -v d="${per_call[direct]}" -v o="${per_call[ours]}" \
	'BEGIN { printf "ours/direct = %.3f (instructions per call; below 1 is fewer)\n", o / d }'
echo "profiles in $dir"
