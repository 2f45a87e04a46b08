# catga: the one entry point for building, testing and linting. `make help` lists the targets.
#
# Needs rustc/cargo and CPython >= 3.11; everything else goes into .venv. CI runs `.ci/run`, which
# is `make test` with CATGA_REQUIRE_SERVICES=1; make passes that variable (like every variable of the
# environment) to the tests unchanged. Extra arguments: `make test-python PYTEST_ARGS='-k cli'`,
# `make bench BENCH_ARGS='-k send'` (and CATGA_BENCH_ROUNDS, see benches/test_mediator.py).
# `make test` ends with `make package-check` (.ci/package-check: the release wheel and the sdist,
# installed into a fresh venv from PyPI with the extras, then smoke-tested); it needs network access.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules --no-print-directory

# rustup puts cargo in ~/.cargo/bin, which a non-login shell (CI) may not have on PATH.
ifeq ($(shell command -v cargo 2>/dev/null),)
export PATH := $(HOME)/.cargo/bin:$(PATH)
endif

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.extension-built

# Every cargo command sees the venv's interpreter, so pyo3's build script configures one Python
# (and does not rebuild because PYO3_PYTHON changed between two commands).
export PYO3_PYTHON := $(abspath $(PY))

# The Rust inputs of the extension: a change to any of them rebuilds it.
RUST_INPUTS := Cargo.toml $(wildcard Cargo.lock) $(shell find rust -name '*.rs' -o -name 'Cargo.toml' 2>/dev/null)
# Rebuild also when the compiled module is gone from python/catga (e.g. after `git clean`).
EXTENSION := $(wildcard python/catga/_catga*.so python/catga/_catga*.pyd)

PYTEST := $(PY) -m pytest
BENCH_FLAGS := --benchmark-enable --benchmark-disable-gc --benchmark-columns=median,iqr,rounds --benchmark-sort=name --timeout=0

.PHONY: help
help: ## Show this help
	@echo "usage: make TARGET"
	@echo
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(PY):
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 on PATH" >&2; exit 1; }
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"catga needs CPython >= 3.11, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)

# Runtime dependencies and the `dev` dependency group, read from pyproject.toml; reinstalled only
# when it changes. pip >= 25.1 first: `maturin develop` installs dependency groups (PEP 735) with
# `pip install --group`, which older pips (3.11's venv ships 23.x) do not know.
$(DEPS_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["dependency-groups"]["dev"]))' > $(VENV)/requirements-dev.txt
	$(PY) -m pip install --quiet -r $(VENV)/requirements-dev.txt
	touch $@

# `maturin develop` compiles the extension into python/catga/ and installs catga into the venv in
# editable mode, so Python edits need no rebuild. cargo keeps the build incremental.
$(BUILD_STAMP): $(DEPS_STAMP) $(RUST_INPUTS) $(if $(EXTENSION),,FORCE)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet
	touch $@

.PHONY: FORCE
FORCE:

.PHONY: venv
venv: $(DEPS_STAMP) ## Create .venv with the runtime and dev dependencies

.PHONY: build
build: $(BUILD_STAMP) ## Build the Rust extension (release) into .venv

.PHONY: demo
demo: $(BUILD_STAMP) ## Run `catga demo`: a short in-process order example
	$(VENV)/bin/catga demo

.PHONY: shop
shop: services $(BUILD_STAMP) ## Run examples/shop over NATS and Redis: 200 orders, one payments instance killed
	$(PY) -m examples.shop.run --orders 200 --kill-payments

# The servers the tests start themselves (tests/_servers.py: free loopback ports, temp dirs; nothing
# here starts a service). Each is a Debian package whose binary has the same name, except postgresql,
# whose initdb Debian keeps off PATH (/usr/lib/postgresql/VERSION/bin). As root (here and in CI) a
# missing one is installed; otherwise its tests skip, or fail under CATGA_REQUIRE_SERVICES=1.
SERVICE_PACKAGES := nats-server redis-server postgresql

.PHONY: services
services: ## Install nats-server, redis-server and postgresql from Debian when missing (as root)
	@missing=""; \
	for package in $(SERVICE_PACKAGES); do \
		case "$$package" in \
			postgresql) found="$$(compgen -G '/usr/lib/postgresql/*/bin/initdb' || command -v initdb || true)" ;; \
			*) found="$$(PATH="$$PATH:/usr/sbin:/usr/bin:/usr/local/bin" command -v "$$package" || true)" ;; \
		esac; \
		[ -n "$$found" ] || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "services: $(SERVICE_PACKAGES) installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "services: installing$$missing"; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "services: missing$$missing (needs root and apt-get: \`sudo make services\`); their tests will skip" \
			"(and fail with CATGA_REQUIRE_SERVICES=1)"; \
	fi

.PHONY: test
test: services $(BUILD_STAMP) ## Rust tests, lint, the Python suite on both cores, then the package check
	$(MAKE) test-rust
	$(MAKE) lint
	$(MAKE) test-python
	$(MAKE) package-check

.PHONY: test-rust
test-rust: | $(PY) ## cargo test --workspace
	LD_LIBRARY_PATH="$$($(PY) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" \
		cargo test --workspace

.PHONY: test-python
test-python: $(BUILD_STAMP) ## pytest, once on the native core and once on the pure-Python core
	CATGA_PURE_PYTHON=0 $(PYTEST) $(PYTEST_ARGS)
	CATGA_PURE_PYTHON=1 $(PYTEST) $(PYTEST_ARGS)
	@# The benches once each, untimed (~1 s), so that they cannot break unnoticed.
	CATGA_BENCH_ROUNDS=3 $(PYTEST) benches -q --benchmark-disable

# The release wheel and the sdist built into a temp dir, the wheel installed with its extras into a
# fresh venv (from PyPI) and smoke-tested outside the repository; ~15 s once the extension is built
# (the wheel reuses the release build of `make build`). Options: see the script's header.
.PHONY: package-check
package-check: $(DEPS_STAMP) ## Build the wheel and sdist, install the wheel into a fresh venv, smoke-test it
	CATGA_VENV=$(abspath $(VENV)) .ci/package-check

.PHONY: lint
lint: $(BUILD_STAMP) ## cargo fmt/clippy, ruff, mypy (strict) and stubtest
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest catga._catga --allowlist .mypy-stubtest-allowlist

.PHONY: format
format: $(DEPS_STAMP) ## Format and autofix: cargo fmt, ruff
	cargo fmt --all
	$(VENV)/bin/ruff check --fix
	$(VENV)/bin/ruff format

.PHONY: bench
bench: $(BUILD_STAMP) ## Benchmarks (benches/): both cores against the direct-await floor
	CATGA_PURE_PYTHON=0 $(PYTEST) benches $(BENCH_FLAGS) $(BENCH_ARGS)
	@# The built-in pipeline on the pure core: its state comes from the core chosen at import.
	CATGA_PURE_PYTHON=1 $(PYTEST) benches/test_pipeline.py benches/test_observability.py -k "default or hit or observing" $(BENCH_FLAGS) $(BENCH_ARGS)

.PHONY: clean
clean: ## Remove build artefacts and caches (keeps .venv; `rm -rf .venv` for a fresh one)
	cargo clean
	rm -f $(BUILD_STAMP) python/catga/_catga*.so python/catga/_catga*.pyd
	rm -rf dist build .pytest_cache .mypy_cache .ruff_cache .benchmarks
	find python tests benches -name __pycache__ -type d -prune -exec rm -rf {} +
