# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CUDA 13 build of torch (matches the CUDA 13.0 toolkit); TORCH=torch==2.13.0 gives a CPU build.
TORCH  ?= torch==2.14.1
CSRC   := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \))

.PHONY: all venv build demo test pytest pytest-reference emu-test bench clean report-check

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

# The same suite on the pure-PyTorch fallback (what users get without the compiled extension);
# tests of the compiled kernels themselves skip there.
pytest-reference: build
	ACTIVATION_HASH_BACKEND=reference $(PY) -m pytest -q -p no:warnings tests

# C++ tests of the CUDA kernels on the CPU (CMakeLists.txt, tests/emu): no Python needed.
EMU_BUILD ?= build/emu
CMAKE_GENERATOR_FLAG := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

emu-test:
	test -f $(EMU_BUILD)/CMakeCache.txt || cmake -S . -B $(EMU_BUILD) $(CMAKE_GENERATOR_FLAG) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(EMU_BUILD)
	cd $(EMU_BUILD) && ctest --output-on-failure

test: pytest
	$(MAKE) --no-print-directory pytest-reference
	$(MAKE) --no-print-directory emu-test

# ISA=avx2 (or scalar, avx512, a comma-separated list, all) caps the CPU kernels, one
# subprocess per ISA (bench/common.py); unset: the best this CPU has.
bench: build
	mkdir -p bench/results
	for b in $(filter-out bench/common.py bench/fuzz_targets.py,$(wildcard bench/*.py)); do \
	  $(PY) $$b --quick $(if $(ISA),--isa $(ISA)) --json bench/results/$$(basename $$b .py).json \
	  || exit 1; done

# Open a report in headless Chromium and check that its images rendered (not a dependency:
# install it for this check, e.g. `sudo apt-get install -y chromium`).
REPORT ?= $(lastword $(sort $(wildcard runs/*/report.html)))
report-check:
	$(PY) tools/check_report.py $(REPORT)

clean:
	rm -rf build activation_hash/*.so $(VENV)/.stamp-build
