# netbackd: the two commands a new user needs.
#   make test   install what is missing (deploy/bootstrap), then format/lint checks and every test
#   make demo   (arrives with the daemon issue)
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test bootstrap build release lint fmt check-fmt

bootstrap:
	deploy/bootstrap

build: bootstrap
	$(CARGO) build --workspace --all-targets

release: bootstrap
	$(CARGO) build --workspace --release

check-fmt:
	$(CARGO) fmt --all -- --check

lint: bootstrap
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: bootstrap check-fmt lint
	$(CARGO) test --workspace --no-fail-fast
	tests/dpdk-leftovers.sh

fmt:
	$(CARGO) fmt --all
