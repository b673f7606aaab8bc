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

## bench-image: time `abkit image build` against cp --sparse=always (not part of test)
.PHONY: bench-image
bench-image: deps
	@bash bench/image.sh

clean:
	$(CARGO) clean
