# Every target sets itself up: a new user runs `make run` or `make test` on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The install stamp. A checkout whose .venv is a link to another checkout's venv (a `git
# worktree` sharing one) sets STAMP to a file of its own (`STAMP=/tmp/x/stamp make run`, or in
# the environment): the shared venv is then used as it is, never reinstalled from this checkout.
STAMP ?= $(VENV)/.installed
# State lives where `batchinfer where` says (BATCHINFER_HOME, by default the user data
# directory, e.g. ~/.local/share/batchinfer), so `make run` and the CLI in any shell agree.
export HF_HUB_OFFLINE ?= 1
export AIP_HTTP_PORT ?= 8080
export BATCHINFER_MODEL_URL ?= http://127.0.0.1:$(AIP_HTTP_PORT)

.PHONY: install run stack test test-fast lint format demo model-server clean

$(STAMP): pyproject.toml protocol/pyproject.toml model-server/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# Three distributions: the wire format, the model server, the Dagster side (+ dev tools).
	$(BIN)/pip install -q -e ./protocol -e ./model-server -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The instance file brought up to dagster.local.yaml unless its user edited it
# (batchinfer_tools.instance_file), the schema migrated (the one step that changes it), then
# batchinfer_tools.run: the model server and `dg dev` (UI on :3000, sensor running; Dagster
# 1.13's successor of `dagster dev`), each in its own session, and one line "batchinfer is ready
# ..." once the UI answers and the model is warm. Ctrl-C stops Dagster first, then its run
# workers, then the model server, and prints one line per interrupted run (their output:
# <home>/logs/make-run.log). The state stays where `batchinfer where` says.
run: install
	@export DAGSTER_HOME="$$($(BIN)/batchinfer where dagster_home)" && \
	$(BIN)/python -m batchinfer_tools.instance_file "$$DAGSTER_HOME" && \
	$(BIN)/batchinfer db upgrade && \
	$(BIN)/batchinfer where && \
	exec $(BIN)/python -m batchinfer_tools.run

# The production-like stack on a laptop: PostgreSQL (app database and Dagster's storage) and the
# Pub/Sub emulator started as the tests start them, databases and topology created, then `make
# run` against them. Needs the PostgreSQL server binaries and the gcloud emulator on PATH.
stack: install
	$(BIN)/python -m batchinfer_tools.stack

model-server: install
	$(BIN)/python -m model_server

# The walkthrough end to end (add, import, publish, prediction) on its own database, model
# server and Dagster daemon; it migrates its scratch database first.
demo: install
	$(BIN)/python -m batchinfer_tools.demo

test: install
	$(BIN)/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; \
	exit $$rc

# The fast tier: the seams on in-memory fakes and SQLite, no server started (under a minute).
# `make test` runs it again with everything else.
test-fast: install
	$(BIN)/pytest tests/fast tests/ledger -m "not postgres and not pubsub"

# Mutation testing of the domain modules (ledger, feature import, batching and shapes, the
# protocol's rules, intake bounds) against the fast tests, one module group at a time, niced;
# minutes, so not part of `make test` or CI. Score table and survivors: docs/reliability.md.
.PHONY: mutate
mutate: install
	$(BIN)/python tools/mutate $(GROUPS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .batchinfer .pytest_cache .ruff_cache
