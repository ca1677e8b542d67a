# The two quick-start commands: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench-prepare bench-retrieval eval clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints/cpu.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llmrec demo

# Every tier: unit, real data, local Ray cluster, ray job submit, and the slow `llmrec eval`
# run (about 6 minutes on 2 cores after the install).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# While developing: no Ray cluster, no slow tier (under a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not ray"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-prepare: $(STAMP)
	$(BIN)/python benchmarks/bench_prepare.py

bench-retrieval: $(STAMP)
	$(BIN)/python benchmarks/bench_retrieval.py

eval: $(STAMP)
	$(BIN)/llmrec eval --dataset ml-100k

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
