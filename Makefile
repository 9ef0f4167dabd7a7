# The two commands of the README: `make run` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_NAME ?= digits
MODELS_DIR ?= models
# Debian packages the test suite drives for real: Prometheus (promtool), docker-compose (config
# validation and the stack run on a private engine), docker.io and debootstrap (that engine and
# the local base images), Chromium (the web page), wrk (the benchmark's load generator).
# Installed when missing and we may (root); CI=true makes a missing one fail the tests instead of
# skipping them.
SYSTEM_PACKAGES := prometheus docker-compose docker.io debootstrap chromium wrk

.PHONY: run test test-fast install system-deps train lint bench clean loop-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

system-deps:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "note: missing$$missing (tests that need them are skipped; CI=true fails them)"; \
	  fi; \
	fi

train: install
	$(PY) training/train.py --models-dir $(MODELS_DIR) --model-name $(MODEL_NAME)

# Serve; train the default model first when the repository has no version of it yet.
run: install
	@ls $(MODELS_DIR)/$(MODEL_NAME)/*/metadata.json >/dev/null 2>&1 || $(MAKE) --no-print-directory train
	$(PY) -m service --models-dir $(MODELS_DIR) --model-name $(MODEL_NAME)

test: install system-deps
	$(PY) -m pytest

# The loop on this machine in a few minutes: a worse version refused by the gate, a good one
# stepped up by the rollout controller and promoted, each decision printed (README, "The loop").
loop-demo: install
	$(PY) -m service.rollout.demo

# Unit tests only (no trained model, no server process): seconds, for the edit-test loop.
test-fast: install
	$(PY) -m pytest -m "not e2e and not slow"

# Style, types and the layer contracts of pyproject's [tool.importlinter] (no cycles, the core
# free of HTTP, training apart from the service). CI runs it before the tests.
lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The load benchmark (BENCHMARKS.md), about 20 minutes (14 with `-m bench --no-knobs`); needs wrk.
# `$(PY) -m bench --quick` is a half-minute smoke run of the same harness.
bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs bench/results
