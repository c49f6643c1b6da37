# Set-up from nothing: `make demo` runs the main job on the embedded default, `make test` the tests.
# Both create .venv, install torch (the CPU build 2.13.0 when no CUDA GPU is present), the package and
# its C++ extension, then run. `make test-transformers4` runs the suite again under transformers 4.57
# in .venv-tf4 (the oldest transformers tfprune supports).
PYTHON ?= python3
VENV ?= .venv
TRANSFORMERS ?= transformers>=4.56,<6
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tfprune-installed
PYTEST_ARGS ?=
# The real model (Gemma 3 270M, built offline from the package index by ../shared/models/gemma3-270m/build.sh
# under the transformers release that can save it: scripts/build_real_model.sh),
# kept outside the repository; tests marked `real` use it when it is there and say why they skip when not.
TFPRUNE_CACHE ?= $(HOME)/.cache/tfprune
REAL_MODEL ?= $(TFPRUNE_CACHE)/gemma3-270m
REAL_MODEL_BUILD ?= ../shared/models/gemma3-270m/build.sh
export TFPRUNE_REAL_MODEL := $(REAL_MODEL)
# the oracle of compressed-tensors' sparse-24-bitmask format: its last release with the sparse compressor
COMPRESSED_TENSORS := compressed-tensors==0.14.0
# torch, pinned on every machine: with an NVIDIA GPU its CUDA build of the same release (PyPI's Linux wheel is
# one; TORCH_CUDA_INDEX="--index-url https://download.pytorch.org/whl/cu130" picks another CUDA), which brings
# the Triton it was built with; without one the CPU build and the Triton the interpreter tests were run with.
TORCH_VERSION ?= 2.13.0
TORCH_CUDA_INDEX ?=
TRITON_CPU ?= triton==3.9.0
# `make gpu-check`: the whole GPU check on the python found (no venv, no pip: see scripts/gpu_check.sh)
GPU_CHECK_OUT ?= $(if $(OUT),$(OUT),gpu-check-out)

.PHONY: install real-model demo test test-transformers4 bench gpu-check clean

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q "torch==$(TORCH_VERSION)" $(TORCH_CUDA_INDEX); \
		else $(PIP) install -q "torch==$(TORCH_VERSION)" "$(TRITON_CPU)"; fi
	$(PIP) install -q ninja numpy "$(TRANSFORMERS)"
	$(PIP) install -q --no-build-isolation -e ".[dev]" "$(TRANSFORMERS)"
	$(PIP) install -q --no-deps $(COMPRESSED_TENSORS)
	touch $(STAMP)

install: $(STAMP)

real-model: $(STAMP)
	@test -f $(REAL_MODEL_BUILD) || { echo "no $(REAL_MODEL_BUILD): cannot build the real model"; exit 1; }
	bash scripts/build_real_model.sh $(REAL_MODEL_BUILD) $(REAL_MODEL) $(PY)

demo: $(STAMP)
	-@$(MAKE) --no-print-directory real-model
	bash scripts/demo.sh $(VENV) $(REAL_MODEL)

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

test-transformers4:
	$(MAKE) test VENV=.venv-tf4 TRANSFORMERS="transformers==4.57.6"

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks -o python_files='bench_*.py' --benchmark-only

gpu-check:
	OUT=$(GPU_CHECK_OUT) PYTHON=$(PYTHON) bash scripts/gpu_check.sh

clean:
	rm -rf build *.egg-info tfprune/_C*.so demo-out demo-out-eval.json demo-bench
