# kproxy: thin, documented wrappers around cargo and the test scripts.
# `make help` lists the targets.

CARGO ?= cargo $(if $(CI),--locked,)
export CARGO_TERM_COLOR ?= never

.PHONY: help build deps test unit golden golden-check lint fmt demo proto-test live-test bench bench-quick msrv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

build: ## build everything (debug)
	$(CARGO) build --workspace --all-targets

deps: ## install the Debian packages tests and the demo need (nftables iptables conntrack iproute2)
	@scripts/ensure-deps.sh

test: deps ## every test: unit, golden, syntax checks, kernel tests, proto-tests
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) --no-print-directory bench-quick

unit: ## unit tests only (no root needed)
	$(CARGO) test --workspace --lib

golden: ## regenerate the golden files after an intended output change
	UPDATE_GOLDEN=1 $(CARGO) test --workspace --test golden

golden-check: ## regenerate the golden files and fail if any differs from the checked-in ones
	UPDATE_GOLDEN=1 $(CARGO) test --workspace --test golden
	git diff --exit-code --stat -- crates testdata
	@test -z "$$(git status --porcelain --untracked-files=all -- crates testdata)" || \
		{ git status --short -- crates testdata; echo "golden files not checked in"; exit 1; }

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

demo: deps ## the seed article's cluster in network namespaces, served by kproxy (root)
	$(CARGO) run -q -p kproxy-proto-tests --bin kproxy-proto -- demo

proto-test: deps ## real packets through real kernels, every scenario x backend (SCENARIOS=seed,udp BACKENDS=nftables; root)
	PROTO_SCENARIOS="$(SCENARIOS)" PROTO_BACKENDS="$(BACKENDS)" $(CARGO) test -p kproxy-proto-tests --test runner --test scenarios -- --nocapture

live-test: deps ## live traffic through daemon kills, backend switches, kube-proxy takeover, a 60 s API outage (EVENTS=restarts,switch BACKENDS=nftables; root)
	PROTO_LIVE_EVENTS="$(EVENTS)" PROTO_BACKENDS="$(BACKENDS)" $(CARGO) test -p kproxy-proto-tests --test live -- --nocapture

msrv: ## check the workspace with the pinned (MSRV) toolchain
	$(CARGO) +1.95.0 check --workspace

bench: deps ## benchmarks, every backend at 100..50k Services; writes docs/performance.md (root, under 30 min; BENCH_ARGS=...)
	$(CARGO) build --release -p kproxy-daemon
	$(CARGO) run --release -q -p kproxy-bench -- run --out docs/performance.md $(BENCH_ARGS)

bench-quick: deps ## the benchmarks at tiny sizes (seconds): fails unless they measured something; never judges timings (root)
	$(CARGO) build -q -p kproxy-daemon
	$(CARGO) run -q -p kproxy-bench -- run --quick
