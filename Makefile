# ArchMesh Realtime. `make run` starts the embedded default; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt typecheck pytest jstest clean cluster chaos screenshots bench bench-topics

# The client package first: the servers depend on it and it is not on PyPI.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./clients/python
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/archmesh-rt dev

test: lint typecheck pytest jstest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The JS client's tests on Node's built-in runner: they `npm pack` clients/js (@archmesh/realtime),
# install the tarball offline and use it against real gateways, and tsc-check its declarations.
jstest: $(STAMP)
	npm --prefix tests/js install --no-audit --no-fund --no-package-lock --loglevel=error
	node --test tests/js/

# N gateways + notifier + nginx on loopback against a private Redis; Ctrl-C stops them all.
GATEWAYS ?= 3
cluster: $(STAMP)
	$(BIN)/python -m deploy.local_cluster --gateways $(GATEWAYS)

# Faults and hostile input against local clusters; prints the table (about 7 minutes).
chaos: $(STAMP)
	$(BIN)/python -m chaos $(CHAOS_ARGS)

# docs/screenshot.png from a real run of the page in headless Chromium (tests/browser).
screenshots: $(STAMP)
	ARCHMESH_SCREENSHOT=$(CURDIR)/docs/screenshot.png $(BIN)/pytest -q tests/browser/test_screenshot.py
	ARCHMESH_SCREENSHOT_CONSOLE=$(CURDIR)/docs/console.png $(BIN)/pytest -q tests/browser/test_console.py

# Side by side with Node's Socket.IO, python-socketio and broadcaster; installs them into .bench/
# (ignored by git), needs node, npm and redis-server; then the notifier alone: one and two
# notifiers on a 3-master Redis Cluster, a topic of 100,000 subscribers (its time and peak RSS);
# writes docs/benchmarks.md (~17 min; BENCH_ARGS=--no-notifier-cluster --no-topics skips those).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# One notifier fans a topic of 10,000 then 100,000 subscribers out: the time and its peak RSS
# (`make bench` runs the 100,000 alone).
bench-topics: $(STAMP)
	$(BIN)/python bench/topic_fanout.py $(BENCH_TOPICS_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache tests/js/node_modules
	rm -f clients/js/archmesh-realtime.js clients/js/*.tgz
