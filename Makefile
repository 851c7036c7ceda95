# The README's commands. Each sets up what it needs: `make test` and `make bench` create .venv
# (torch pinned in requirements-dev.txt), build the extension in place, then run.
#   PYTHON=python3     use that interpreter and its torch instead of .venv (e.g. the GPU machine)
#   SYSTEM_TORCH=1     make .venv see the system site-packages and keep the torch found there
#   BENCH_ARGS=...     extra flags for benchmarks/run.py (e.g. --tiny)
#   DEMO_ARGS=...      flags for examples/train_vae.py (default: fused vs baseline, --compare)
SHELL := /bin/bash
export MAX_JOBS ?= 2

ifdef PYTHON
PY := $(PYTHON)
VENV_STAMP :=
else
PY := .venv/bin/python
VENV_STAMP := .venv/.stamp
endif

BENCH_ARGS ?=
PYTEST_ARGS ?=
DEMO_ARGS ?= --compare

.PHONY: venv build test bench demo gpu-check clean

venv: $(VENV_STAMP)

.venv/.stamp: requirements-dev.txt
	python3 -m venv $(if $(SYSTEM_TORCH),--system-site-packages,) .venv
	.venv/bin/pip install -q --upgrade pip
	$(if $(SYSTEM_TORCH),grep -v '^torch' requirements-dev.txt > .venv/requirements.txt,cp requirements-dev.txt .venv/requirements.txt)
	.venv/bin/pip install -q -r .venv/requirements.txt
	touch $@

build: $(VENV_STAMP)
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/run.py $(BENCH_ARGS)

demo: build
	$(PY) examples/train_vae.py $(DEMO_ARGS)

# Everything that needs a GPU, in one go (fits a 10-minute call on an H100): CUDA build, CUDA
# tests, GPU benchmarks, compute-sanitizer, CPU suite. Uses the machine's torch (PYTHON, default
# python3): never installs one. Logs to $OUT (or build/gpu-check/). See .ci/gpu_check.sh.
gpu-check:
	PYTHON=$(or $(PYTHON),python3) .ci/gpu_check.sh

clean:
	rm -rf build fused_kingma/_C*.so
