# kproxy: thin, documented wrappers around cargo and the test scripts.
# `make help` lists the targets.

CARGO ?= cargo $(if $(CI),--locked,)
export CARGO_TERM_COLOR ?= never

.PHONY: help build deps test unit golden golden-check lint deny deny-tool lib-features api-check fmt demo proto-test live-test bench bench-quick msrv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

build: ## build everything (debug)
	$(CARGO) build --workspace --all-targets

deps: ## install the Debian packages tests and the demo need (nftables iptables conntrack iproute2)
	@scripts/ensure-deps.sh

test: deps ## every test: unit, golden, syntax checks, kernel tests, proto-tests
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) --no-print-directory bench-quick

unit: ## unit tests only, of the libraries and the binaries (no root needed)
	$(CARGO) test --workspace --lib --bins

golden: ## regenerate the golden files and public-API snapshots after an intended change
	UPDATE_GOLDEN=1 $(CARGO) test --workspace --test golden
	UPDATE_GOLDEN=1 $(MAKE) --no-print-directory api-check

# A workspace of its own (crates/api-check/Cargo.toml says why), built in
# target/api-check-tool; the rustdoc JSON goes to target/api-check.
api-check: ## the library crates' public APIs equal crates/api-check/snapshots (UPDATE_GOLDEN=1 rewrites them)
	cd crates/api-check && CARGO_TARGET_DIR=$(CURDIR)/target/api-check-tool $(CARGO) test --test golden

golden-check: ## regenerate the golden files and API snapshots and fail if any differs from the checked-in ones
	UPDATE_GOLDEN=1 $(CARGO) test --workspace --test golden
	UPDATE_GOLDEN=1 $(MAKE) --no-print-directory api-check
	git diff --exit-code --stat -- crates testdata
	@test -z "$$(git status --porcelain --untracked-files=all -- crates testdata)" || \
		{ git status --short -- crates testdata; echo "golden files not checked in"; exit 1; }

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

CARGO_DENY_VERSION ?= 0.20.2

deny-tool:
	@command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny@$(CARGO_DENY_VERSION)

# Licences, bans and sources are always checked. Advisories need the RustSec
# database (a git repository): checked when it can be fetched, else a loud
# notice; DENY_ADVISORIES=require makes an unreachable database an error.
deny: deny-tool ## cargo-deny: licences (Apache-2.0 compatible), bans, sources; advisories when the database is reachable
	cargo deny --locked check --hide-inclusion-graph licenses bans sources
	cargo deny --locked --manifest-path crates/api-check/Cargo.toml check --hide-inclusion-graph licenses bans sources
	@if timeout 120 cargo deny --locked fetch db >/tmp/kproxy-deny-fetch.log 2>&1; then \
		cargo deny --locked check --hide-inclusion-graph --disable-fetch advisories; \
	elif [ "$(DENY_ADVISORIES)" = require ]; then \
		cat /tmp/kproxy-deny-fetch.log; echo "error: the RustSec advisory database cannot be fetched"; exit 1; \
	else \
		echo "######################################################################"; \
		echo "# NOTICE: advisories NOT checked: the RustSec advisory database      #"; \
		echo "# cannot be fetched from here (see /tmp/kproxy-deny-fetch.log).      #"; \
		echo "# Licences, bans and sources were checked. Run 'make deny' where the #"; \
		echo "# database is reachable, or DENY_ADVISORIES=require to insist.        #"; \
		echo "######################################################################"; \
	fi

lib-features: ## fail if a library crate enables a k8s-openapi version feature (only binaries may)
	@bad=; for p in kproxy-graph kproxy-iptables kproxy-exec kproxy-nftables kproxy-netlink kproxy-trace kproxy-testkit; do \
		if $(CARGO) tree -q -p $$p -e normal,features -i k8s-openapi 2>/dev/null | grep -q 'feature "v1_'; then \
			echo "$$p enables a k8s-openapi version feature"; bad=1; fi; \
	done; test -z "$$bad"

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
