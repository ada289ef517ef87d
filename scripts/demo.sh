#!/usr/bin/env bash
# The greeter demo: a throwaway etcd on loopback, three greeter servers, a client whose calls
# spread over them; then one server stops gracefully and the calls spread over the other two.
# Run it with `make demo`, which builds the examples first. Cleans up and exits 0 by itself.
set -euo pipefail

cd "$(dirname "$0")/.."
source scripts/lib.sh
bin=$(examples_dir)

start_etcd demo
echo "== etcd on $ETCD_ENDPOINTS"

echo "== starting three greeter servers"
servers=()
for i in 1 2 3; do
	"$bin/greeter_server" --service greeter --ttl 5 >"$work/server$i.out" 2>"$work/server$i.err" &
	pids+=($!)
	servers+=($!)
done
for i in 1 2 3; do
	wait_for 20 "server $i to register" grep -q "listening on" "$work/server$i.out"
	echo "   $(cat "$work/server$i.out")"
done

echo "== keys under greeter/"
etcdctl --endpoints "$ETCD_ENDPOINTS" get --prefix greeter/ --keys-only | sed '/^$/d; s/^/   /'

# show_spread JSON: one line per backend with its share of the calls.
show_spread() {
	local json=$1 ok
	ok=$(grep -o '"ok":[0-9]*' <<<"$json" | cut -d: -f2)
	grep -o '"[0-9.]*:[0-9]*":[0-9]*' <<<"$json" | tr -d '"' | while IFS=: read -r ip port count; do
		printf '   %-22s %4d calls  %3d%%\n' "$ip:$port" "$count" $((100 * count / ok))
	done
}

echo "== client: 300 calls, 4 in flight"
first=$("$bin/greeter_client" --service greeter --requests 300 --concurrency 4)
echo "   $first"
show_spread "$first"

stopped=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/server1.out")
echo "== stopping the server at $stopped with SIGTERM (it deregisters, then drains)"
kill -TERM "${servers[0]}"
wait "${servers[0]}"
echo "   exited with status $?"
etcdctl --endpoints "$ETCD_ENDPOINTS" get --prefix greeter/ --keys-only | sed '/^$/d; s/^/   /'

echo "== client: 300 calls, 4 in flight"
second=$("$bin/greeter_client" --service greeter --requests 300 --concurrency 4)
echo "   $second"
show_spread "$second"

if grep -q "\"$stopped\"" <<<"$second"; then
	echo "demo: the stopped server still got calls" >&2
	exit 1
fi
echo "== done: the calls spread over the live servers only"
