# Development entry points: `make demo`, `make dev`, `make test`. Everything runs from .venv,
# which is created and (re)installed whenever pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_DATA := data/postgres
LAKE := data/lake
DAGSTER_HOME_DIR := $(CURDIR)/data/dagster_home

.PHONY: install demo dev stop test bench bench-latency bench-lakehouse lint-fix clean

install: $(STAMP)

# With REVERSE_ETL_PG_DSN unset, only these targets may start the embedded development cluster.
demo dev bench bench-latency bench-lakehouse: export REVERSE_ETL_DEV = 1

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The syncs are recorded in the Dagster instance of `make dev` (DAGSTER_HOME), so the UI shows them.
demo: install
	$(BIN)/python -m reverse_etl_assets.dev.demo_lake $(LAKE)
	$(BIN)/python -m reverse_etl_assets.dev.demo_app
	mkdir -p $(DAGSTER_HOME_DIR)
	cp dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	pg_env="$$($(BIN)/python -m reverse_etl_assets.dev.embedded_postgres env $(PG_DATA))" && \
	eval "$$pg_env" && \
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/reverse-etl sync --all
	$(BIN)/reverse-etl status

# The Dagster instance keeps its runs in database `dagster` of the same cluster (dagster.yaml);
# DAGSTER_PG_* variables already set in the environment take precedence. It runs from
# DAGSTER_HOME, where `demo` copied dagster.yaml, so Dagster reads that copy and warns of none.
# (`dagster dev` also suggests `dg dev`, which needs a `dg` project; that hint is silenced.)
dev: demo
	pg_env="$$($(BIN)/python -m reverse_etl_assets.dev.embedded_postgres env $(PG_DATA))" && \
	eval "$$pg_env" && \
	cd $(DAGSTER_HOME_DIR) && \
	PYTHONWARNINGS='ignore:Function `dev_command` is superseded' \
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) exec $(CURDIR)/$(BIN)/dagster dev \
		-w $(CURDIR)/workspace.yaml -h 127.0.0.1 -p 3000

stop:
	@if [ -x $(BIN)/python ]; then \
		$(BIN)/python -m reverse_etl_assets.dev.embedded_postgres stop $(PG_DATA); \
	fi

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy reverse_etl_assets
	$(BIN)/pytest

bench: install
	$(BIN)/python -m benchmarks.snapshot
	$(BIN)/python -m benchmarks.incremental

# Continuous mode: commit-to-visible latency (p50/p99) and sustained rows/s of a follower.
bench-latency: install
	$(BIN)/python -m benchmarks.latency

# Lakehouse syncs (Postgres -> Delta): snapshot, streaming changes/s and commit-to-visible latency,
# each against its ceiling. Sizes etc.: BENCH_ARGS='--sizes 2000000 --only snapshot'.
bench-lakehouse: install
	$(BIN)/python -m benchmarks.lakehouse $(BENCH_ARGS)

lint-fix: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: stop
	rm -rf $(VENV) $(PG_DATA) $(LAKE) data/dagster_home
