# Two commands matter (see README): `make demo` and `make test`. Both create .venv when needed.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of PyTorch (2.13.0+cpu, from PyTorch's CPU index or a local wheel cache): PyPI's
	# torch==2.13.0 is the multi-GB CUDA build. An unreachable CPU index costs two short retries.
	$(BIN)/pip install -q --retries 1 --timeout 15 --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/mnedge demo

test: lint
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check mnedge_live offline_training tests benchmarks

bench: setup
	$(BIN)/python benchmarks/generator.py --json
	$(BIN)/python benchmarks/engine_throughput.py --json
	$(BIN)/python benchmarks/predict_image.py --json
	$(BIN)/python benchmarks/live_latency.py --json
	$(BIN)/python benchmarks/soak.py --json
	$(BIN)/python benchmarks/gpu_throughput.py --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
