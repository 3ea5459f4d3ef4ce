# Two commands: `make demo` (set up + run the demo chip through Ray) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exact pins for CI/dev; pyproject keeps them loose so a GPU cluster can install its own CUDA build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# A clean venv with the pinned scverse stack (spatialdata, sopa, spatialdata-plot; no stseg, no
# torch): tests/outputs/test_ecosystem.py opens the project's SpatialData store there.
COMPAT ?= .venv-compat

.PHONY: setup compat-venv demo test bench clean

$(BIN)/stseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]' $(TORCH_PINS)
	touch $(BIN)/stseg

setup: $(BIN)/stseg

$(COMPAT)/.installed: tests/compat/requirements.txt
	rm -rf $(COMPAT)
	$(PY) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q -r tests/compat/requirements.txt
	touch $@

compat-venv: $(COMPAT)/.installed

demo: setup
	$(BIN)/stseg demo --out demo-out

# Two pytest workers (CI has 2 cores), a test module per worker: each module's fixtures (its Ray,
# its chips, its servers on free ports) stay in one process.
test: setup compat-venv
	$(BIN)/ruff format --check . && $(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q -n 2 --dist loadfile

bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) $(COMPAT) demo-out
