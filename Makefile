# fullpass: `make demo` runs the sample end to end, `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

# The pinned, hashed dependency sets (`make lock` writes them from pyproject.toml):
#   requirements/lock.txt        runtime (the Docker image)
#   requirements/dev-lock.txt    runtime + dev (make venv, CI)
#   requirements/build-lock.txt  pip and setuptools (from requirements/build.in)
LOCKS := requirements/build-lock.txt requirements/lock.txt requirements/dev-lock.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) | cksum | cut -d' ' -f1)
PIP_INSTALL := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: venv lock demo sample test test-fast lint format migrate worker bench-ingest bench-pipeline bench-scale bench-rate bench-embed eval clean

venv: $(STAMP)

# A new pyproject.toml or lock rebuilds the virtualenv from scratch, so that it
# holds exactly the locked set and nothing left over from an earlier one.
$(STAMP): pyproject.toml $(LOCKS)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes -r requirements/build-lock.txt
	$(PIP_INSTALL) --require-hashes -r requirements/dev-lock.txt
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	@touch $@

# Regenerate the locks after changing a dependency in pyproject.toml (or
# requirements/build.in), then commit them together. Pins still allowed by
# pyproject.toml are kept; `make lock UPGRADE=1` moves everything to the newest
# allowed versions. The locks are for CPython 3.11 on Linux x86_64 (the image);
# the runtime lock is constrained by the dev lock, so both pin the same versions.
UV_VERSION := 0.13.9
LOCK_TOOLS := .lock-tools
UV := $(LOCK_TOOLS)/bin/uv
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--generate-hashes --no-config --quiet $(if $(UPGRADE),--upgrade)

$(UV):
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

lock: $(UV)
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements/dev-lock.txt
	$(UV) pip compile pyproject.toml -c requirements/dev-lock.txt $(LOCK_FLAGS) -o requirements/lock.txt
	$(UV) pip compile requirements/build.in $(LOCK_FLAGS) -o requirements/build-lock.txt

demo: venv
	$(BIN)/fullpass demo

# The bundled sample export, rebuilt by the project's generator (same bytes every time).
SAMPLE := worker/samples/sample-export.zip
sample: venv
	$(BIN)/python -m tests.gen_export --conversations 40 --seed 7 --zip -o $(SAMPLE)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: venv
	$(BIN)/fullpass migrate

worker: venv
	$(BIN)/fullpass worker

bench-ingest: venv
	$(BIN)/python bench/ingest.py

bench-pipeline: venv
	$(BIN)/python bench/pipeline.py

# One to three workers against the fake Messages API, and queue pickup latency
# (BENCH_ARGS=--scenario pickup, --latency 0.5, --repeat 3 ...).
BENCH_ARGS ?=
bench-scale: venv
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

# Three workers under one organisation's rate limit (half the fleet's demand), sharing the budget.
bench-rate: venv
	$(BIN)/python bench/ratelimit.py

# The embed stage's chunks/s per provider (the fakes at 200 ms a call) and recall@10 of
# planted facts searched by paraphrase (BENCH_EMBED_ARGS=--runs 5, say).
BENCH_EMBED_ARGS ?=
bench-embed: venv
	$(BIN)/python bench/embed.py $(BENCH_EMBED_ARGS)

# Extraction quality on the labelled evaluation set (bench/eval/): against the fake Messages
# API without ANTHROPIC_API_KEY; with it, against the real API once the estimated cost is
# confirmed (EVAL_ARGS=--yes skips the question).
EVAL_ARGS ?=
eval: venv
	$(BIN)/python bench/quality.py $(EVAL_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_TOOLS) .test-home .pytest_cache .mypy_cache .ruff_cache *.egg-info
