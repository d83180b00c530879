# netbackd: the two commands a new user needs.
#   make test   install what is missing (deploy/bootstrap), then format/lint checks and every test
#   make demo   install what is missing, build, run `netbackd demo` (DEMO_ARGS="--duration 15")
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test demo bootstrap build release lint fmt check-fmt

DEMO_ARGS ?=

bootstrap:
	deploy/bootstrap

build: bootstrap
	$(CARGO) build --workspace --all-targets

release: bootstrap
	$(CARGO) build --workspace --release

demo: release
	target/release/netbackd demo $(DEMO_ARGS)

check-fmt:
	$(CARGO) fmt --all -- --check

lint: bootstrap
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: bootstrap check-fmt lint
	$(CARGO) test --workspace --no-fail-fast
	tests/dpdk-leftovers.sh

fmt:
	$(CARGO) fmt --all
