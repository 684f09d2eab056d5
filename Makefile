# Portcullis. Two commands: `make run` (local quickstart) and `make test` (all tests).
# Every target installs what it needs through scripts/setup.sh (idempotent).

SHELL := /bin/bash
ROOT := $(abspath .)
CARGO ?= cargo
# Filters built as proxy-wasm modules: crate name == output name.
FILTERS ?= ua_block headers ratelimit oidc
WASM_TARGET := wasm32-wasip1
WASM_OUT := target/$(WASM_TARGET)/wasm
WASM_OPT_FLAGS := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue -O3
export PATH := $(ROOT)/.bin:$(PATH)
export PORTCULLIS_ROOT := $(ROOT)


.PHONY: run-static test-deps setup build build-wasm build-dynamic build-dynamic-test build-controller run test test-unit images bench bench-filters bench-controller fuzz fmt lint clean help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: ## install what is missing (wasm target, Envoy venv, binaryen)
	@bash scripts/setup.sh core

build: build-wasm build-dynamic build-controller ## build filters to dist/wasm and dist/dynamic, the controller to dist/bin

# Modules must not carry this machine's paths (panic locations, debug names): map them to neutral ones.
WASM_RUSTFLAGS ?= --remap-path-prefix=$(CARGO_HOME_DIR)=/cargo --remap-path-prefix=$(CURDIR)=/portcullis
CARGO_HOME_DIR ?= $(or $(CARGO_HOME),$(HOME)/.cargo)

build-wasm: setup
	CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="$(WASM_RUSTFLAGS)" $(CARGO) build --profile wasm --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS))
	@mkdir -p dist/wasm
	@for f in $(FILTERS); do \
	  wasm-opt $(WASM_OPT_FLAGS) $(WASM_OUT)/$$f.wasm -o dist/wasm/$$f.wasm; \
	  printf '  %-14s %8d bytes (rustc) -> %8d bytes (wasm-opt)\n' $$f.wasm \
	    $$(stat -c %s $(WASM_OUT)/$$f.wasm) $$(stat -c %s dist/wasm/$$f.wasm); \
	done

# The same four filters as one Envoy 1.40 dynamic module. Baseline x86-64 (no target-cpu):
# AES-NI and friends are detected at run time.
build-dynamic: setup ## build dist/dynamic/libportcullis.so (the dynamic module)
	RUSTFLAGS="$(WASM_RUSTFLAGS)" $(CARGO) build --profile dynamic -p portcullis-dynamic
	@mkdir -p dist/dynamic
	@cp target/dynamic/libportcullis_dynamic.so dist/dynamic/libportcullis.so.tmp && mv dist/dynamic/libportcullis.so.tmp dist/dynamic/libportcullis.so
	@printf '  %-18s %8d bytes\n' libportcullis.so $$(stat -c %s dist/dynamic/libportcullis.so)

# Tests only: the library with the `panic` filter (feature test-panic), never shipped.
build-dynamic-test: setup
	$(CARGO) build -p portcullis-dynamic --features test-panic
	@mkdir -p dist/dynamic-test
	@cp target/debug/libportcullis_dynamic.so dist/dynamic-test/libportcullis.so.tmp && mv dist/dynamic-test/libportcullis.so.tmp dist/dynamic-test/libportcullis.so

build-controller: setup
	$(CARGO) build --release -p portcullis --bin portcullis
	@mkdir -p dist/bin
	@cp target/release/portcullis dist/bin/portcullis

run: build ## local quickstart: portcullis run -f examples/local (controller + Envoy + filters + demo upstream)
	@bash scripts/quickstart.sh

run-static: build-wasm ## Envoy with a static config and both filters, no controller
	$(CARGO) build -q -p portcullis-integration --bin echo-upstream
	@bash scripts/run.sh

test-deps: ## install the real peers tests run against (registry, Redis, chromium, oidc-provider, chart validators)
	@bash scripts/setup.sh registry
	@bash scripts/setup.sh redis
	@bash scripts/setup.sh browser
	@bash scripts/setup.sh oidc
	@bash scripts/chart-setup.sh

# No incremental caches for the one-shot test build: they double the disk a fresh clone needs.
test: export CARGO_INCREMENTAL ?= 0
test: build build-dynamic-test test-deps ## every test: unit, golden, end-to-end through real Envoy
	$(CARGO) test --workspace --all-targets --no-fail-fast $(TEST_ARGS)

test-unit: ## fast native unit tests only
	$(CARGO) test -p portcullis-core

images: build-wasm ## push every filter image: make images REGISTRY=127.0.0.1:5000
	@test -n "$(REGISTRY)" || { echo "usage: make images REGISTRY=host:port" >&2; exit 2; }
	$(CARGO) build --release -p portcullis --bin portcullis
	@bash scripts/images.sh $(REGISTRY)

bench: bench-filters bench-controller ## every benchmark; results in BENCHMARKS.md and target/bench/

bench-filters: build ## data-plane benchmark: each filter vs no filter, native and Lua
	@bash scripts/bench-filters.sh

bench-controller: build-controller ## control-plane benchmark: translate time, RSS, convergence
	@bash scripts/bench-controller.sh

fuzz: ## run every fuzz target (filters/core, controller, ratelimit-server) for FUZZ_SECONDS each (default 60)
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS)) -- -D warnings

clean:
	rm -rf dist target/bench
