# tonic-etcd: `make demo` runs the greeter pair against a throwaway etcd; `make test` runs
# every check CI runs. Both first install the system packages they need (Debian/Ubuntu).

SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
CARGO ?= cargo

.PHONY: deps demo test

# protoc (protobuf-compiler) builds the examples' proto; etcd (etcd-server) is the real etcd
# the demo and the integration tests start; etcdctl (etcd-client) shows the keys in the demo.
deps:
	@missing=""; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust 1.88 or newer with rustup" >&2; exit 1; }

demo: deps
	$(CARGO) build --examples
	bash scripts/demo.sh

# Every feature (tls, health) is built and tested; the default build is checked too.
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	$(CARGO) clippy --lib -- -D warnings
	$(CARGO) test --all-features
