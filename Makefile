# roomcast developer commands. `make test` is what CI runs.
PYTHON ?= python3

.PHONY: install install-test services lint typecheck pytest test serve bench peers-env

install:
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install -e ".[test]"

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench

typecheck:
	$(PYTHON) -m mypy --strict src/roomcast

# Redis on 127.0.0.1:6379 and Debian's chromium, started or installed if missing.
services:
	bash .ci/services

pytest:
	$(PYTHON) -m pytest

# Installs the test dependencies and services, then lints, type-checks and runs the suite.
test: install-test services lint typecheck pytest

serve: install
	roomcast serve

# The peers (python-socketio, a raw websockets loop) and their load generator live in
# their own environment, so they never mix with roomcast's dependencies.
peers-env:
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install -q python-socketio uvicorn websockets picows uvloop orjson

# Every benchmark, one JSON line per measurement (about an hour with rooms and connections;
# not part of `make test`). `bench rooms` measures a socket.io anchor: its Node.js packages are
# installed at the versions bench/node/package-lock.json pins.
bench: install-test peers-env
	cd bench/node && npm ci --no-audit --no-fund
	$(PYTHON) -m bench publish
	$(PYTHON) -m bench catchup
	$(PYTHON) -m bench peers
	$(PYTHON) -m bench stream
	$(PYTHON) -m bench agents
	$(PYTHON) -m bench replies
	$(PYTHON) -m bench scale
	$(PYTHON) -m bench rooms
	$(PYTHON) -m bench connections
