# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CUDA 13 build of torch (matches the CUDA 13.0 toolkit); TORCH=torch==2.13.0 gives a CPU build.
TORCH  ?= torch==2.14.1
CSRC   := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \))

.PHONY: all venv build demo test pytest emu-test bench clean

all: build

venv: $(VENV)/.stamp-deps

# Dependencies: torch first (the extension builds against it, without build isolation, which
# would fetch another torch), then the package itself in editable mode with its test extras.
$(VENV)/.stamp-deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" setuptools wheel ninja
	ACTIVATION_HASH_SKIP_EXTENSION=1 $(PY) -m pip install --quiet --no-build-isolation -e ".[test]"
	touch $@

build: $(VENV)/.stamp-build

$(VENV)/.stamp-build: $(VENV)/.stamp-deps setup.py $(CSRC)
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

demo: build
	$(VENV)/bin/activation-hash demo

pytest: build
	ACTIVATION_HASH_REQUIRE_EXTENSION=1 $(PY) -m pytest -q tests

test: pytest

bench: build
	mkdir -p bench/results
	for b in bench/*.py; do $(PY) $$b --quick --json bench/results/$$(basename $$b .py).json || exit 1; done

clean:
	rm -rf build activation_hash/*.so $(VENV)/.stamp-build
