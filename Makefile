# fullpass: `make demo` runs the sample end to end, `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: venv demo sample test test-fast lint format migrate worker bench-ingest bench-pipeline clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

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

clean:
	rm -rf $(VENV) .test-home .pytest_cache .mypy_cache .ruff_cache *.egg-info
