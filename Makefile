# One virtual environment in .venv; torch's CPU build first (pip takes it from local disk),
# so that sentence-transformers does not pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all bench report clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tiered-memory demo

test: setup
	$(PY) -m pytest -m "not slow"

test-all: setup
	$(PY) -m pytest

# The committed recall-vs-quantization report (DailyDialog + LoCoMo from ../shared/datasets).
report: setup
	$(VENV)/bin/tiered-memory report quantization --out benchmarks/reports/

clean:
	rm -rf $(VENV) demo_memory .pytest_cache .benchmarks
