# Two commands: `make demo` (set up + run the demo chip through Ray) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exact pins for CI/dev; pyproject keeps them loose so a GPU cluster can install its own CUDA build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test bench clean

$(BIN)/stseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]' $(TORCH_PINS)
	touch $(BIN)/stseg

setup: $(BIN)/stseg

demo: setup
	$(BIN)/stseg demo --out demo-out

test: setup
	$(BIN)/python -m pytest tests -q

bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) demo-out
