# tonic-etcd: `make demo` runs the greeter pair against a throwaway etcd; `make test` runs
# every check CI runs. Both first install the system packages they need (Debian/Ubuntu), so a
# machine with only rustup's toolchain is enough.

SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
CARGO ?= cargo

.PHONY: deps demo test package interop go-deps plot plot-deps

# What the build and the tests need from the system, checked by the file each package brings:
# - protoc (protobuf-compiler): etcd-client's build and the examples' greeter proto;
# - google/protobuf/*.proto (libprotobuf-dev): the standard includes etcd-client's protos
#   import; protobuf-compiler alone does not bring them;
# - etcd (etcd-server): the real etcd the demo and the integration tests start;
# - etcdctl (etcd-client): shows the keys in the demo.
PROTO_INCLUDE := /usr/include/google/protobuf/descriptor.proto

deps:
	@missing=""; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	[ -f $(PROTO_INCLUDE) ] || missing="$$missing libprotobuf-dev"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi; \
	[ -f $(PROTO_INCLUDE) ] || { echo "$(PROTO_INCLUDE) is missing: install libprotobuf-dev" >&2; exit 1; }
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust 1.88 or newer with rustup" >&2; exit 1; }

# The demo runs the examples from $(CARGO_TARGET_DIR) when it is set, else from target/.
demo: deps
	$(CARGO) build --examples
	bash scripts/demo.sh

# Every crate of the workspace with every feature (tls, health) is built and tested; the
# library's default build is checked too, and so is what `cargo publish` would upload: the
# package must build on its own, without the workspace's greeter crate and with no build script.
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	$(CARGO) clippy -p tonic-etcd --lib -- -D warnings
	$(CARGO) test --workspace --all-features
	$(MAKE) package

# `cargo package` builds the packed crate from its .crate file alone, as a dependent gets it;
# the list shows that it carries no build script, proto, test, example or benchmark.
# --allow-dirty: a developer may run it with uncommitted work; CI runs on a clean clone.
package:
	@if $(CARGO) package -p tonic-etcd --allow-dirty --list | grep -E '^(build\.rs|proto/|crates/|tests/|examples/|benches/)'; then \
		echo "package: the files above are not for dependents (see include in Cargo.toml)" >&2; exit 1; fi
	$(CARGO) package -p tonic-etcd --allow-dirty

# What the Go peer (../shared/go-peer) builds with, offline in GOPATH mode: Go, etcd's client
# and naming packages, grpc-go (they pull in protoc-gen-go and the rest).
GOCODE := /usr/share/gocode/src
go-deps: deps
	@missing=""; \
	command -v go >/dev/null 2>&1 || missing="$$missing golang-go"; \
	[ -d $(GOCODE)/go.etcd.io/etcd/clientv3/naming/resolver ] || missing="$$missing golang-etcd-server-dev"; \
	[ -d $(GOCODE)/google.golang.org/grpc/resolver ] || missing="$$missing golang-google-grpc-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

# Rust <-> Go through etcd's own naming packages, both directions (scripts/interop.sh).
interop: go-deps
	$(CARGO) build --examples
	bash scripts/interop.sh

# The README's plot (docs/timeline.png): a real run of both balancers through a rolling restart
# and a kill -9 (benches/timeline.rs, to CSV), drawn by scripts/plot_timeline.py with
# matplotlib. The CSV of the run is kept beside the PNG.
# Debian's python3, where apt puts matplotlib (a python3 from pyenv or a venv may come first on
# PATH).
PYTHON ?= /usr/bin/python3
plot-deps: deps
	@$(PYTHON) -c 'import matplotlib' 2>/dev/null || { \
		echo "installing: python3-matplotlib"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends python3-matplotlib; }

plot: plot-deps
	TIMELINE_OUT=$(CURDIR)/docs/timeline $(CARGO) bench --bench timeline
	$(PYTHON) scripts/plot_timeline.py docs/timeline docs/timeline.png
