# easytier-probe: the commands a developer needs. `make help` lists them.
#
# Tests and benchmarks start real EasyTier nodes. EasyTier binds to every
# interface and contacts public STUN servers, so they run inside a private
# network namespace with loopback only (`unshare --net`), where nothing can
# leave the machine.

CARGO ?= cargo
ARGS ?=
# As root `unshare --net` is enough; otherwise map the user to root in a new user namespace.
UNSHARE := $(if $(filter 0,$(shell id -u)),unshare --net,unshare --net --map-root-user)
IN_NETNS := $(UNSHARE) sh -c 'ip link set lo up && exec "$$@"' netns

.PHONY: help deps build run demo test lint fmt bench bench-scale deb clean

help:
	@echo "make demo            build, start a local EasyTier node in a private netns, check it"
	@echo "make run ARGS='...'  build and run the probe (e.g. ARGS='check tcp://host:11010')"
	@echo "make test            the whole test suite (lint, unit, integration) in a private netns"
	@echo "make bench           per-check and store benchmarks (recorded in BENCHMARKS.md)"
	@echo "make bench-scale     1,000 peers per minute vs the always-connected design (~10 min)"
	@echo "make deb             build target/debian/easytier-probe_<version>_<arch>.deb"

# Checks (and as root installs) what the build and the tests need besides Rust.
deps:
	@sh scripts/deps.sh

build: deps
	$(CARGO) build --locked --release

run: build
	./target/release/easytier-probe $(ARGS)

# The probe's first run: a real check of a local EasyTier node in a private
# network namespace (ARGS go to `check`, e.g. ARGS=--json). make reports any
# failure as status 2; `sh scripts/demo.sh` passes the probe's own through.
demo:
	sh scripts/demo.sh $(ARGS)

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	mandoc -Tlint -W warning man/easytier-probe.8

fmt:
	$(CARGO) fmt

# Build outside the namespace (cargo may fetch crates), run inside it offline.
# --no-fail-fast: every test binary runs even when one fails; the last line
# sums them all ("N passed, N failed"), and the exit status is cargo's.
test: lint
	$(CARGO) test --locked --no-run
	$(IN_NETNS) sh scripts/test-summary.sh $(CARGO) test --locked --offline --no-fail-fast

# Build outside the namespace, measure inside it. Record results in BENCHMARKS.md.
bench: deps
	$(CARGO) build --locked --release --bins --benches
	$(IN_NETNS) $(CARGO) bench --locked --offline --bench checks

# About ten minutes: 100, 300 and 1,000 peers for two 60 s cycles each, and the
# always-connected baseline at the same sizes (ETP_SCALE_* to change them).
bench-scale: deps
	$(CARGO) build --locked --release --bins --benches
	$(IN_NETNS) $(CARGO) bench --locked --offline --bench scale

deb: deps
	bash packaging/build-deb.sh

clean:
	$(CARGO) clean
