# Shell helpers shared by scripts/demo.sh and scripts/interop.sh: source it from the repository
# root after `set -euo pipefail`. It sets `work` (a temporary directory) and `pids` (processes
# to stop), and installs a trap that stops them and removes `work` on exit.

work=$(mktemp -d)
pids=()

# cleanup: SIGTERM to every process started, SIGKILL after 5 s, then remove the work directory.
cleanup() {
	local deadline=$((SECONDS + 5)) pid
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	done
	{ wait; } 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# free_port: a loopback port nobody listens on.
free_port() {
	local port
	while :; do
		port=$((20000 + RANDOM % 20000))
		if ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
			echo "$port"
			return
		fi
	done
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds, or fails the script.
wait_for() {
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			echo "$(basename "$0"): timed out waiting for $what" >&2
			exit 1
		fi
		sleep 0.1
	done
}

# start_etcd NAME: a throwaway single-member etcd on free loopback ports, data in $work; exports
# ETCD_ENDPOINTS and ETCDCTL_API=3 and waits until it is healthy.
start_etcd() {
	local name=$1 client_port peer_port
	client_port=$(free_port)
	peer_port=$(free_port)
	export ETCD_ENDPOINTS="http://127.0.0.1:$client_port"
	export ETCDCTL_API=3
	env -u ETCD_ENDPOINTS etcd --name "$name" --data-dir "$work/etcd" \
		--listen-client-urls "$ETCD_ENDPOINTS" --advertise-client-urls "$ETCD_ENDPOINTS" \
		--listen-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-cluster "$name=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
	pids+=($!)
	wait_for 20 "etcd to be healthy" etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health
}

# examples_dir: where cargo put the examples ($CARGO_TARGET_DIR if set, relative to the
# repository as cargo reads it, else target/); fails, saying how to build them, if one is missing.
examples_dir() {
	local bin=${CARGO_TARGET_DIR:-target}/debug/examples example
	for example in greeter_server greeter_client; do
		if [ ! -x "$bin/$example" ]; then
			echo "$(basename "$0"): $bin/$example is missing: run \`make demo\` (it builds the" \
				"examples), or \`cargo build --examples\` with the same CARGO_TARGET_DIR" >&2
			exit 1
		fi
	done
	echo "$bin"
}
