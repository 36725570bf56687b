# The two commands of the README:
#   make serve   set up the lean, torch-free install (first run only, .venv-serve) and start the
#                service on the shipped weights
#   make test    set everything up (first run only, .venv) and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What serving needs and nothing more: no PyTorch (pip install captioner, without extras).
SERVE_VENV  := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed

.PHONY: serve test check setup system-deps clean mutation image-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

$(SERVE_STAMP): pyproject.toml
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(SERVE_VENV)/bin/captioner serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

# Headless Chromium and its driver for the browser test (Debian packages; needs root or sudo).
system-deps:
	@bash scripts/system-deps.sh

# Lint, format check and type check first: CI enforces them (configured in pyproject.toml).
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) system-deps check
	$(BIN)/python -m pytest -q

# Mutation testing of the core modules, each against its own test file (not part of `make test`;
# tens of minutes). Scores and how to read the survivors: docs/testing.md.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[mutation]"
	$(BIN)/python scripts/mutation.py $(MODULES)

# Build the image from the Dockerfile with podman and run it as docker-compose.yml does: healthy,
# a caption, the drain on SIGTERM, bad settings, a kill and restart, two replicas (not part of
# `make test`: minutes, needs root, PyPI and podman; installs podman on first run). docs/service.md.
image-check:
	@bash scripts/image-check.sh

clean:
	rm -rf $(VENV) $(SERVE_VENV) build *.egg-info
