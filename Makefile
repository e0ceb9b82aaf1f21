# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch installed first where its wheel lies on local disk, so that
# set-up never pulls a multi-GB CUDA build here. Elsewhere pip takes torch from PyPI;
# GPU users install the torch build for their CUDA into the venv first (see README).
TORCH_VERSION ?= 2.13.0
TORCH_WHEELS ?= /opt/wheels
PYTEST_ARGS ?=

.PHONY: demo test lint clean espeak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	if ls $(TORCH_WHEELS)/torch-$(TORCH_VERSION)*.whl >/dev/null 2>&1 \
	    && ! $(BIN)/python -c 'import torch' 2>/dev/null; then \
	  $(BIN)/python -m pip install -q --find-links $(TORCH_WHEELS) torch==$(TORCH_VERSION); \
	fi
	touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e .
	touch $@

# The tests cover the framework integrations too, so the dev set-up has their extras.
$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(BIN)/python -m pip install -q -e '.[dev,lightning,hf]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/sievetrain bench --matched

# espeak-ng speaks the speech-kws dataset (its tests skip without it): installed from
# Debian where make runs as root with apt-get; elsewhere a line says how to install it.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; } \
	  || echo "espeak-ng is not installed, so the speech-kws tests skip: apt-get install espeak-ng"

test: $(VENV)/.dev espeak
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) sievetrain-bench sievetrain-train
