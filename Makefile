# Set-up from nothing: `make demo` runs the main job on the embedded default, `make test` the tests.
# Both create .venv, install torch (the CPU build 2.13.0 when no CUDA GPU is present), the package and
# its C++ extension, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tfprune-installed
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q torch; else $(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q ninja numpy
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfprune prune builtin:llama --out demo-out --overwrite --sparsity 0.5 --pattern 2:4 \
		--nsamples 32 --seqlen 256
	$(VENV)/bin/tfprune inspect demo-out

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks -o python_files='bench_*.py' --benchmark-only

clean:
	rm -rf build *.egg-info tfprune/_C*.so demo-out
