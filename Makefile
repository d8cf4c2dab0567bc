# Two commands matter (see README): `make demo` and `make test`. Both create .venv when needed.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of PyTorch from the local wheel cache first; a newer or unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/mnedge demo

test: setup
	$(BIN)/ruff check mnedge_live offline_training tests benchmarks
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/generator.py --json
	$(BIN)/python benchmarks/engine_throughput.py --json
	$(BIN)/python benchmarks/predict_image.py --json
	$(BIN)/python benchmarks/live_latency.py --json
	$(BIN)/python benchmarks/soak.py --json
	$(BIN)/python benchmarks/gpu_throughput.py --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
