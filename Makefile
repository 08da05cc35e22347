# Two commands on a fresh machine: `make serve` and `make test`. Everything else is set up on demand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# mypy cannot follow setuptools' editable import hook, so it reads the sources through this link tree,
# which maps gateway/ -> sparsegate/gateway etc. exactly as the wheel does.
MYPY_SRC := $(VENV)/mypy-src
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools

# The gateway alone: no torch, no triton, no sglang.
$(VENV)/.stamp-serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Tests need the dev tools and the kernel stack. torch is installed first, pinned to the CPU build these
# machines carry, so the unpinned `torch` of the kernels extra never pulls a multi-GB CUDA build.
$(VENV)/.stamp-test: pyproject.toml Makefile $(VENV)/.stamp-serve
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[dev,kernels]'
	# SGLang itself, for the plugin tests that import its real classes on CPU. --no-deps everywhere: its own
	# requirements pin torch 2.14.1 (a CUDA build); these are just the pure-Python imports its DSA modules need.
	# sentencepiece stays at 0.2.0: 0.2.1's extension segfaults while the interpreter finalizes (a capsule
	# destructor runs after its type is freed), which turned a green pytest run into exit 139.
	$(BIN)/pip install -q --no-deps 'sglang==0.5.23' 'transformers==5.19.0' 'compressed-tensors==0.18.0' \
		'apache-tvm-ffi==0.1.11' 'sentencepiece==0.2.0' safetensors orjson psutil pybase64 pillow msgspec pyzmq \
		ipython traitlets aiohttp multidict yarl propcache aiohappyeyeballs aiosignal frozenlist regex dill loguru \
		gguf partial-json-parser einops
	mkdir -p $(MYPY_SRC)/sparsegate
	ln -sfn ../../../gateway $(MYPY_SRC)/sparsegate/gateway
	ln -sfn ../../../backends $(MYPY_SRC)/sparsegate/backends
	ln -sfn ../../../kernels $(MYPY_SRC)/sparsegate/kernels
	touch $@

serve: $(VENV)/.stamp-serve
	$(BIN)/sparsegate serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.stamp-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(VENV)/.stamp-test
	MYPYPATH=$(MYPY_SRC) $(BIN)/mypy -p sparsegate.gateway -p sparsegate.backends

pytest: $(VENV)/.stamp-test
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
