# roomcast developer commands. `make test` is what CI runs.
PYTHON ?= python3

.PHONY: install install-test lint typecheck pytest test serve

install:
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install -e ".[test]"

lint:
	$(PYTHON) -m ruff check src tests
	$(PYTHON) -m ruff format --check src tests

typecheck:
	$(PYTHON) -m mypy --strict src/roomcast

pytest:
	$(PYTHON) -m pytest

# Installs the test dependencies, then lints, type-checks and runs the whole suite.
test: install-test lint typecheck pytest

serve: install
	roomcast serve
