# Everything runs from the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint demo ui benchmarks clean stack

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres,dask]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m ''

lint: $(STAMP)
	$(BIN)/ruff check .

# The whole loop on embedded defaults, everything written under .retrain/: a first champion learns January and
# February 2013, then two months of NYC flights are lived day by day on the Retrain clock (served, labelled, validated,
# monitored, retrained, released) by the same flows the deployments run; prints a table per month and the story.
demo: $(STAMP)
	$(BIN)/retrain demo

# Prefect, MLflow and Evidently UIs on the stores under .retrain/ (the demo's), on loopback; Ctrl-C stops all three.
ui: $(STAMP)
	$(BIN)/retrain ui

# The team setup on one machine, on loopback: MLflow server (--serve-artifacts) and Prefect server on PostgreSQL
# (the machine's, or RETRAIN_STACK_DATABASE_URL), a process work pool with two workers; prints the URLs and the
# environment to export; Ctrl-C stops all. compose.yaml has the same services for Docker.
stack: $(STAMP)
	$(BIN)/python -m deployments.stack

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/validate_throughput.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/monitoring.py

clean:
	rm -rf .retrain .pytest_cache
