# Everything runs from the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint demo benchmarks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m ''

lint: $(STAMP)
	$(BIN)/ruff check .

# The whole loop on embedded defaults, everything written under .retrain/.
demo: $(STAMP)
	$(BIN)/retrain load-example --config examples/flights.yaml
	$(BIN)/retrain contract infer --config examples/flights.yaml
	$(BIN)/retrain ingest --config examples/flights.yaml
	$(BIN)/retrain train --config examples/flights.yaml

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/validate_throughput.py

clean:
	rm -rf .retrain .pytest_cache
