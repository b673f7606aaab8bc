# abkit: the two commands a newcomer runs are `make demo` and `make test`.
# Every target is defined once; `make help` lists them (from the `## target:`
# comments).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

# The EFI loader stub (loader/, a cargo project of its own for x86_64-unknown-uefi).
LOADER_TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR)/uefi,$(CURDIR)/loader/target)
STUB := build/abkit-stub.efi

# End-to-end VM tests and the demo (crates/abkit-vmtest, testos/): one static
# build of abkit, the test OS init and the harness, used on the host and
# shipped inside the test OS.
E2E_TARGET := x86_64-unknown-linux-gnu
E2E_BIN := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),$(CURDIR)/target)/$(E2E_TARGET)/release
E2E_RUSTFLAGS := -C target-feature=+crt-static -C strip=symbols
RELEASE_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),$(CURDIR)/target)/release
export E2E_BIN

# `make install`: PREFIX, DESTDIR as usual.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system

.PHONY: all help deps build test lint unit demo clean \
	stub lint-loader e2e-bins vm-e2e debian-root stub-next-to-abkit install deb \
	bench bench-image bench-bundle bench-install bench-agent bench-oci bench-delta bench-size fuzz-bundle fleet-sim

## all: the same as build
all: build

## help: list every target with what it does
help:
	@sed -n 's/^## \([a-z0-9-]*\): \(.*\)/\1\t\2/p' $(MAKEFILE_LIST) | \
		awk -F '\t' '{ printf "  %-20s %s\n", $$1, $$2 }'

## deps: install what a fresh Debian machine lacks (idempotent)
deps:
	@bash scripts/deps.sh

## build: the abkit binary (release), with the loader stub next to it
build: deps stub-next-to-abkit
	$(CARGO) build --release -p abkit

## lint: formatting and clippy with warnings as errors (workspace and loader)
lint: deps lint-loader
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## unit: every workspace test (unit, property, fixture and tool cross-checks)
unit: deps
	$(CARGO) test --workspace

## test: everything that must pass before a change lands (lint, unit, VM tests)
test: lint unit vm-e2e

## demo: show abkit at work on the built-in demo OS
demo: deps stub e2e-bins
	@bash scripts/demo.sh

## clean: remove cargo's build output
clean:
	$(CARGO) clean

## stub: build the loader stub into build/abkit-stub.efi (`abkit uki build --stub`)
stub: deps
	CARGO_TARGET_DIR=$(LOADER_TARGET_DIR) $(CARGO) build --release --locked --manifest-path loader/Cargo.toml --target x86_64-unknown-uefi
	@mkdir -p build
	cp $(LOADER_TARGET_DIR)/x86_64-unknown-uefi/release/abkit-stub.efi $(STUB)

## lint-loader: formatting and clippy for the loader project
lint-loader: deps
	$(CARGO) fmt --manifest-path loader/Cargo.toml -- --check
	CARGO_TARGET_DIR=$(LOADER_TARGET_DIR) $(CARGO) clippy --release --locked --manifest-path loader/Cargo.toml --target x86_64-unknown-uefi -- -D warnings

## e2e-bins: static abkit, testos-init and abkit-vmtest for the VM tests and the demo
e2e-bins: deps
	RUSTFLAGS="$(E2E_RUSTFLAGS)" $(CARGO) build --release --target $(E2E_TARGET) -p abkit -p testos -p abkit-vmtest

## vm-e2e: the end-to-end scenarios on OVMF under QEMU (SCENARIOS="boot power-cut" for some)
vm-e2e: stub e2e-bins
	$(E2E_BIN)/abkit-vmtest --abkit $(E2E_BIN)/abkit --init $(E2E_BIN)/testos-init run $(SCENARIOS)

## debian-root: build (or find in build/debian-root) the stock Debian tree of the debian-systemd scenario
debian-root: deps
	bash scripts/debian-root.sh build/debian-root

## stub-next-to-abkit: the loader stub next to the release abkit, where `abkit uki build` finds it
stub-next-to-abkit: stub
	@mkdir -p $(RELEASE_DIR)
	cp $(STUB) $(RELEASE_DIR)/abkit-stub.efi

## install: abkit, its stub, abkit-agent.service and /etc/abkit/agent.toml under DESTDIR/PREFIX
install: build
	install -D -m 0755 $(RELEASE_DIR)/abkit $(DESTDIR)$(BINDIR)/abkit
	install -D -m 0644 $(STUB) $(DESTDIR)$(BINDIR)/abkit-stub.efi
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|@BINDIR@|$(BINDIR)|g' dist/abkit-agent.service > $(DESTDIR)$(UNITDIR)/abkit-agent.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/abkit-agent.service
	install -d -m 0755 $(DESTDIR)/etc/abkit/health.d
	test -e $(DESTDIR)/etc/abkit/agent.toml || install -m 0644 dist/agent.toml $(DESTDIR)/etc/abkit/agent.toml

## deb: build/abkit_<version>_amd64.deb with cargo-deb (binary, stub, abkit-agent.service, agent.toml)
deb: build
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	@mkdir -p build/deb
	sed 's|@BINDIR@|/usr/bin|g' dist/abkit-agent.service > build/deb/abkit-agent.service
	$(CARGO) deb -p abkit --no-build --output build/

## bench: every benchmark (prints tables; not part of make test)
bench: bench-image bench-bundle bench-install bench-agent bench-oci bench-delta bench-size

## bench-image: time `abkit image build` against cp --sparse=always (not part of test)
bench-image: deps
	@bash bench/image.sh

## bench-bundle: bundle create/verify against sha256sum and veritysetup (1 GiB image)
bench-bundle: deps
	bash bench/bundle.sh

## bench-install: abkit install vs dd, and over HTTP vs curl + dd (512 MiB and 2 GiB)
bench-install: deps
	bash bench/install.sh

## bench-agent: the idle agent's RSS, CPU and wake-ups over 30 s (not part of test)
bench-agent: deps
	bash bench/agent.sh

## bench-oci: bundle push and install through a registry vs a file and plain HTTP (512 MiB)
bench-oci: deps
	bash bench/oci.sh

## fleet-sim: 100 offline agents, 3-member etcd, two FleetLock servers: three rollout scenarios, JSON reports (FLEET_SIM_NODES)
fleet-sim: deps
	FLEET_SIM_REPORTS=$(CURDIR)/build/fleet-sim $(CARGO) test --release -p abkit --test fleet_sim -- --ignored --nocapture --test-threads 1 fleet_sim_full

## bench-size: the stripped static (device) and dynamic abkit binaries against the 8 MiB budget
bench-size:
	bash bench/size.sh

## bench-delta: delta install vs full install vs casync, bytes fetched (512 MiB image)
bench-delta: deps
	bash bench/delta.sh

## fuzz-bundle: run both bundle fuzz targets, FUZZ_SECONDS each (default 300; nightly cargo-fuzz)
fuzz-bundle: deps
	cd crates/abkit-bundle/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O head -- -max_total_time=$${FUZZ_SECONDS:-300}
	cd crates/abkit-bundle/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O signed_bundle -- -max_total_time=$${FUZZ_SECONDS:-300}
