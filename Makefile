# The two quick-start commands: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench-prepare bench-retrieval bench-reranker bench-serving bench-history-slices eval clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints/cpu.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llmrec demo

# Every tier: unit, real data, local Ray cluster (Ray Data, Ray Train, Serve over HTTP),
# ray job submit, and the slow `llmrec eval` run.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# While developing: no Ray cluster, no local S3, no slow tier (under two minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not ray and not s3"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-prepare: $(STAMP)
	$(BIN)/python benchmarks/bench_prepare.py

bench-retrieval: $(STAMP)
	$(BIN)/python benchmarks/bench_retrieval.py

bench-reranker: $(STAMP)
	$(BIN)/python benchmarks/bench_reranker.py --reranker artifacts/rerankers/ml-100k/hybrid

bench-serving: $(STAMP)
	$(BIN)/python benchmarks/bench_serving.py --model-root artifacts/models/ml-100k

bench-history-slices: $(STAMP)
	$(BIN)/python benchmarks/bench_history_slices.py --reranker artifacts/rerankers/ml-100k/hybrid

eval: $(STAMP)
	$(BIN)/llmrec eval --dataset ml-100k

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
