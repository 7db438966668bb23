# The README's commands. Each target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1

.PHONY: serve test lint typecheck unit train model bench bench-deps quality redis-server chromium wrk clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[serve]"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.serve

# Local-only admin token for POST /budget under `make serve`; deployments set their own (k8s Secret).
ADMIN_TOKEN ?= local-development-token

## serve: the allocation service on models/default, no infrastructure needed (in-process λ* store)
serve: $(VENV)/.serve
	ALLOCATOR_ADMIN_TOKEN=$${ALLOCATOR_ADMIN_TOKEN:-$(ADMIN_TOKEN)} $(BIN)/python -m service --host $(HOST) --port $(PORT)

## test: linters, type checks and the whole test suite (starts its own redis-server processes)
test: redis-server chromium $(VENV)/.dev lint typecheck unit

redis-server:
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
		(apt-get update -qq && apt-get install -y -qq redis-server) || \
		(sudo apt-get update -qq && sudo apt-get install -y -qq redis-server); }

# Debian's headless-capable Chromium for the console's browser tests (tests/browser/, driven by Playwright).
chromium:
	@command -v chromium >/dev/null || { echo "installing chromium"; \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core) || \
		(sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core); }

lint: $(VENV)/.dev
	$(BIN)/ruff check service training bench tests
	$(BIN)/ruff format --check service training bench tests

typecheck: $(VENV)/.dev
	$(BIN)/mypy service training bench

unit: $(VENV)/.dev
	$(BIN)/python -m pytest -q

## model: rebuild models/default deterministically (Bi-DFCL on the synthetic coupon benchmark)
model: $(VENV)/.dev
	$(BIN)/python -m training default-model --out models/default

## bench: speed benchmarks (results go to docs/benchmarks.md)
bench: bench-deps $(VENV)/.dev
	$(BIN)/python -m bench.solver
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.train_speed
	$(BIN)/python -m bench.console

## bench-deps: what the benchmarks run besides Python: redis-server, and wrk (a C load generator) for bench.serve
bench-deps: redis-server wrk

wrk:
	@command -v wrk >/dev/null || { echo "installing wrk"; \
		(apt-get update -qq && apt-get install -y -qq wrk) || \
		(sudo apt-get update -qq && sudo apt-get install -y -qq wrk); }

## quality: decision quality of every method on every suite (docs/results/, docs/benchmarks.md; ~2 h from scratch)
quality: $(VENV)/.dev
	$(BIN)/python -m bench.quality

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs
