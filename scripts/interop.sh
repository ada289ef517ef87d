#!/usr/bin/env bash
# Go interop: tonic-etcd's greeter examples against a grpc-go peer that registers with etcd's
# own `endpoints.Manager` and resolves with etcd's own `etcd:///` resolver, both directions,
# default wire format (etcd naming), on a throwaway etcd on loopback.
#
# Run it with `make interop`, which installs the Go packages and builds the examples first.
# The peer's sources are read from $GO_PEER_DIR (default ../shared/go-peer, beside the
# repository) and built into a temporary directory: that directory may be read-only.
# Prints one line per check and ends with `N passed, M failed`; exits 1 if any check failed.
set -euo pipefail

cd "$(dirname "$0")/.."
source scripts/lib.sh
bin=$(examples_dir)
peer_dir=${GO_PEER_DIR:-../shared/go-peer}
if [ ! -f "$peer_dir/build.sh" ]; then
	echo "interop: no go-peer at $peer_dir (set GO_PEER_DIR)" >&2
	exit 1
fi

echo "== building go-peer from $peer_dir"
go_peer=$work/go-peer
# A persistent Go build cache: grpc-go and etcd's client compile from source.
GOCACHE=${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tonic-etcd-go-build} \
	BUILD=$work/go-build OUT=$go_peer sh "$peer_dir/build.sh" >"$work/go-build.log" 2>&1 ||
	{ cat "$work/go-build.log" >&2; exit 1; }

start_etcd interop
echo "== etcd on $ETCD_ENDPOINTS"

passed=0
failed=0
check() { # check NAME CONDITION-COMMAND...: one line per check.
	local name=$1
	shift
	if "$@"; then
		echo "   ok    $name"
		passed=$((passed + 1))
	else
		echo "   FAIL  $name" >&2
		failed=$((failed + 1))
	fi
}

# json_field JSON NAME: a top-level number of the JSON summary line.
json_field() { grep -o "\"$2\":[0-9]*" <<<"$1" | head -1 | cut -d: -f2; }
# has_backend JSON ADDR: ADDR answered at least one call.
has_backend() { grep -q "\"$2\":[1-9]" <<<"$1"; }
all_ok() { [ "$(json_field "$1" ok)" = "$2" ] && [ "$(json_field "$1" failed)" = 0 ]; }
none_ok() { [ "$(json_field "$1" ok)" = 0 ] && [ "$(json_field "$1" failed)" = "$2" ]; }

# rust_server NAME ARGS...: a greeter_server in the background; sets rust_addr.
rust_server() {
	local name=$1
	shift
	"$bin/greeter_server" --ttl 5 "$@" >"$work/$name.out" 2>"$work/$name.err" &
	pids+=($!)
	wait_for 20 "$name to register" grep -q "listening on" "$work/$name.out"
	rust_addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/$name.out")
}

# go_server NAME TARGET: a go-peer server in the background; sets go_addr.
go_server() {
	"$go_peer" server --etcd "$ETCD_ENDPOINTS" --target "$2" --ttl 5 >"$work/$1.out" 2>"$work/$1.err" &
	pids+=($!)
	wait_for 20 "$1 to register" grep -q "listening on" "$work/$1.out"
	go_addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$work/$1.out")
}

# go_client ARGS...: a go-peer client run; sets out (its JSON line) and go_status (its exit code).
go_client() {
	go_status=0
	out=$("$go_peer" client --etcd "$ETCD_ENDPOINTS" --wait 10s "$@" 2>>"$work/go-client.err") ||
		go_status=$?
}

# rust_client ARGS...: a greeter_client run; sets out (its JSON line).
rust_client() {
	out=$("$bin/greeter_client" --concurrency 2 "$@" 2>>"$work/rust-client.err") || true
}

echo "== Rust client -> Go server, target interop/go/greeter"
go_server go1 interop/go/greeter
rust_client --service interop/go/greeter --requests 20
echo "   $out"
check "every call answered by the Go server ($go_addr)" all_ok "$out" 20
check "the Go server is the backend" has_backend "$out" "$go_addr"

echo "== Go client -> Rust server, target without '/' (interopgreeter)"
rust_server rust1 --service interopgreeter
go_client --target interopgreeter --requests 20
echo "   $out"
check "every call answered by the Rust server ($rust_addr)" all_ok "$out" 20
check "the Go client exits 0" [ "$go_status" = 0 ]

echo "== Go client -> Rust server, target with '/' (interop/rust/greeter): the :authority trap"
rust_server rust2 --service interop/rust/greeter
go_client --target interop/rust/greeter --requests 5 --timeout 2s
echo "   without --authority: $out (exit $go_status)"
check "without grpc.WithAuthority every call fails (h2 rejects '/' in :authority)" none_ok "$out" 5
check "the Go client exits 3 (some calls failed)" [ "$go_status" = 3 ]
go_client --target interop/rust/greeter --requests 20 --authority greeter
echo "   with --authority greeter: $out"
check "with grpc.WithAuthority(\"greeter\") every call succeeds" all_ok "$out" 20

echo "== Rust registration with weight and zone metadata, Go and Rust servers on one target"
rust_server rust3 --service interop/mixed --weight 5 --zone z1
go_server go2 interop/mixed
value=$(etcdctl --endpoints "$ETCD_ENDPOINTS" get --print-value-only "interop/mixed/$rust_addr")
echo "   value written by the Rust registrar: $value"
check "the metadata travels as a JSON string (hashable for Go)" \
	grep -q '"Metadata":"{\\"weight\\":5,\\"zone\\":\\"z1\\"}"' <<<"$value"
go_client --target interop/mixed --requests 40 --authority greeter
echo "   Go client: $out (exit $go_status)"
check "the Go client reads it without panicking and exits 0" [ "$go_status" = 0 ]
check "the Go client calls both servers" all_ok "$out" 40
check "  ... the Rust one ($rust_addr)" has_backend "$out" "$rust_addr"
check "  ... the Go one ($go_addr)" has_backend "$out" "$go_addr"
rust_client --service interop/mixed --requests 100
echo "   Rust client: $out"
check "the Rust client calls both servers" all_ok "$out" 100
check "  ... the Rust one ($rust_addr)" has_backend "$out" "$rust_addr"
check "  ... the Go one ($go_addr)" has_backend "$out" "$go_addr"

if ((failed > 0)); then
	echo "== logs" >&2
	tail -n 20 "$work"/*.err >&2 || true
fi
echo "interop: $passed passed, $failed failed"
((failed == 0))
