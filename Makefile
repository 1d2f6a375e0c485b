# Lockgate developer entry points. Each target sets up what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-secretless test lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[airflow,test]'
	@# The build's metadata left beside the sources would be a second 'lockgate' on sys.path
	@# (src/ is on it): Airflow would load the plugin twice.
	rm -rf src/lockgate.egg-info
	touch $(STAMP)

## demo: set up and run the end-to-end demo on embedded defaults (SQLite, packaged stand-ins
## for the five seed systems)
demo: $(STAMP)
	$(BIN)/lockgate demo --dir demo

## demo-secretless: the same, with no stored secret anywhere (a workload-identity token on the
## worker, federated credentials in the gateway; docs/identity.md)
demo-secretless: $(STAMP)
	$(BIN)/lockgate demo --secretless --dir demo-secretless

## test: set up and run ruff, mypy and the whole test suite (real Airflow 3 DAGs included)
test: $(STAMP)
	@# PostgreSQL server binaries and PgBouncer from Debian when missing (tests/setup-system.sh).
	./tests/setup-system.sh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	@# The Node.js clients (tests/node: cassandra-driver, pg); their tests skip only where
	@# node/npm are absent.
	if command -v npm >/dev/null 2>&1; then npm install --prefix tests/node --no-audit --no-fund; fi
	@# Two worker processes (pytest-xdist): most tests wait on servers and subprocesses, so
	@# two keep both cores busy; a module stays on one worker (its stack is built once).
	@# `-m "not slow"` leaves out what takes more than a few seconds.
	$(BIN)/pytest -q -n 2 --dist loadscope --durations=25

## bench: set up and run the benchmarks (installs nginx, wrk, PostgreSQL and PgBouncer from
## Debian when missing)
bench: $(STAMP)
	./tests/setup-system.sh
	./benchmarks/setup.sh
	$(BIN)/python -m benchmarks.run

## lint: ruff (rules and format) and mypy
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

## docs: regenerate the reference pages made from code (docs/cli.md, docs/control-api.md)
docs: $(STAMP)
	$(BIN)/python -m lockgate.cli_docs
	$(BIN)/python -m lockgate.control.openapi_markdown > docs/control-api.md

clean:
	rm -rf $(VENV) demo demo-secretless .pytest_cache .mypy_cache
