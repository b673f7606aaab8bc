# abkit: the two commands a newcomer runs are `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all deps build test lint unit demo fuzz clean

all: build

## deps: install what a fresh Debian machine lacks (idempotent)
deps:
	@bash scripts/deps.sh

## build: the abkit binary (release)
build: deps
	$(CARGO) build --release -p abkit

## lint: formatting and clippy with warnings as errors
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## unit: every workspace test (unit, property, fixture and tool cross-checks)
unit: deps
	$(CARGO) test --workspace

## test: everything that must pass before a change lands
test: lint unit

## demo: show abkit at work on the built-in demo OS
demo: build
	@bash scripts/demo.sh

clean:
	$(CARGO) clean

.PHONY: bench-bundle fuzz-bundle
## bench-bundle: bundle create/verify against sha256sum and veritysetup (1 GiB image)
bench-bundle:
	bash bench/bundle.sh

## fuzz-bundle: run both bundle fuzz targets, FUZZ_SECONDS each (default 300)
fuzz-bundle:
	cd crates/abkit-bundle/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O head -- -max_total_time=$${FUZZ_SECONDS:-300}
	cd crates/abkit-bundle/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O signed_bundle -- -max_total_time=$${FUZZ_SECONDS:-300}
