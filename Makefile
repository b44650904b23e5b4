# Everything runs from the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint demo ui benchmarks clean

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

# The whole loop on embedded defaults, everything written under .retrain/: data up to June 1, the first champion
# as of May 1, monitoring of May against its training window, a retrain on the newest rows (a rejection, exit 1,
# is an outcome, not a failure), its release as a canary, and the release state with the ledger.
DEMO_CONFIG := examples/flights.yaml
demo: $(STAMP)
	$(BIN)/retrain load-example --config $(DEMO_CONFIG) --until 2013-06-01
	$(BIN)/retrain contract infer --config $(DEMO_CONFIG)
	$(BIN)/retrain ingest --config $(DEMO_CONFIG)
	$(BIN)/retrain train --config $(DEMO_CONFIG) --as-of 2013-05-01
	$(BIN)/retrain monitor --config $(DEMO_CONFIG) --as-of 2013-06-01
	$(BIN)/retrain train --config $(DEMO_CONFIG) || [ $$? -eq 1 ]
	$(BIN)/retrain release --config $(DEMO_CONFIG) || [ $$? -eq 1 ]
	$(BIN)/retrain status --config $(DEMO_CONFIG)

# Prefect, MLflow and Evidently UIs on the stores under .retrain/ (the demo's), on loopback; Ctrl-C stops all three.
ui: $(STAMP)
	$(BIN)/retrain ui

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/validate_throughput.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/monitoring.py

clean:
	rm -rf .retrain .pytest_cache
