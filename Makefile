# The project's commands; the README's quick start is `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench lint format lock clean image-test image-test-arm64

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# ./data private from the start, as the hub makes it (else its first start warns about the mode).
# PYTHONOPTIMIZE=2 (python -OO), as the image runs it: no docstrings in memory, ~5 MB less.
run: install
	mkdir -p -m 700 data
	PYTHONOPTIMIZE=2 $(BIN)/python -m app

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/takeover.py

lint: install
	$(BIN)/ruff check app pylib tests bench
	$(BIN)/ruff format --check app pylib tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format app pylib tests bench
	$(BIN)/ruff check --fix app pylib tests bench

# The container smoke test: builds the image with podman on a local Debian base (no registry) and runs
# it as its owner would (tests/container_smoke.py). As root; installs podman & co. from Debian.
image-test: install
	$(BIN)/python -m tests.container_smoke

# The same image for linux/arm64 (the Pi) under qemu-user-static: builds, starts, answers /api/health.
# About 6 minutes, so not in CI: run it before each release (README, "Container").
image-test-arm64: install
	$(BIN)/python -m tests.container_smoke --arch arm64

# Re-resolve the locked dependencies after changing pyproject.toml.
lock:
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		-o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
