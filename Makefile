# The two commands of the README:
#   make serve   set everything up (first run only) and start the service on the shipped weights
#   make test    set everything up (first run only) and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test check setup system-deps clean mutation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(BIN)/captioner serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

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

clean:
	rm -rf $(VENV) build *.egg-info
