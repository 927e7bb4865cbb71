SHELL := /bin/bash

.PHONY: deps services-dev services-test run test bench lint stop clean-data

deps:
	scripts/install-deps.sh

services-dev: deps
	scripts/services.sh up dev

services-test: deps
	scripts/services.sh up test

run: services-dev
	source .dbswarm/dev/env && cargo run --release -p server --bin dbswarm -- serve

test: services-test
	scripts/test.sh

bench: services-test
	source .dbswarm/test/env && cargo build --release -p server -p bench && ./target/release/dbswarm-bench $(if $(BENCH),--only $(BENCH),)

lint: deps
	cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings

stop:
	scripts/services.sh down dev; scripts/services.sh down test

clean-data: stop
	rm -rf .dbswarm
