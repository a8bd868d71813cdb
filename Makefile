# The README's two commands: `make run` serves the local config (tiny model, CPU) and
# `make test` runs the tests. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of PyTorch; a GPU machine can pass another, e.g. TORCH_SPEC='torch==2.13.0'.
TORCH_SPEC ?= torch==2.13.0
WAN_API_KEYS ?= local-dev-key
WAN_KEY_ID_SECRET ?= local-dev-key-id-secret
export WAN_API_KEYS WAN_KEY_ID_SECRET

BIN := $(VENV)/bin
# Debian's Chromium, driven by Playwright in the web page tests (Playwright's own browser
# download needs the internet).
CHROMIUM := /usr/bin/chromium
POSTGRES := /usr/lib/postgresql/15/bin/initdb
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test test-fast lint bench gpu-wheels lock

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: install
	@echo "Serving the tiny model on http://127.0.0.1:8000 -- API key(s): $$WAN_API_KEYS"
	$(BIN)/serve run serve_config.local.yaml

# The image's lock file: every dependency (and the s3 extra) from PyPI with its hashes, for the
# base image's Python 3.11 on Linux x86_64. Torch and its CUDA libraries are left out: they come
# from the PyTorch index that matches the nodes' CUDA (docs/kubernetes.md, "The supply chain").
TORCH_STACK := torch triton cuda-bindings cuda-pathfinder cuda-toolkit networkx sympy mpmath setuptools \
	nvidia-cublas nvidia-cuda-cccl nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 \
	nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 \
	nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
lock: install
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra s3 --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple \
		--custom-compile-command "make lock" $(foreach p,$(TORCH_STACK),--no-emit-package $(p)) -o deploy/requirements.lock

# ruff, the rules between the deployments (import-linter), and the types (mypy, strict on serve_app/):
# their settings are in pyproject.toml.
lint: install
	$(BIN)/ruff check serve_app tests loadtests
	$(BIN)/lint-imports
	$(BIN)/mypy

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# Debian's PostgreSQL server: the jobs store's tests start a throwaway one (tests/support/postgres.py).
$(POSTGRES):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

# Two pytest-xdist workers: the tests on the Ray cluster in one (their group), the other modules
# shared, a module at a time, handed out in the order tests/conftest.py gives them (longest first).
test: lint $(CHROMIUM) $(POSTGRES)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder --durations=25

# The unit tier, chosen by folder (tests/unit: no Ray cluster, no browser, no diffusers, so its
# workers import none of them), less its `slow` tests (PostgreSQL); two processes. Under 40 s.
test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests/unit

bench: install
	$(BIN)/python -m serve_app.benchmark.overhead

# The packages a GPU machine's image (Python 3.12 with torch, transformers and accelerate) lacks for
# the GPU check, as wheels, into .whl/ (git-ignored, 38 MB): see docs/performance.md.
GPU_WHEELS := diffusers==0.42.1 importlib-metadata==10.2.0 imageio-ffmpeg==0.6.0 pydantic==2.14.4 \
	pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
	ftfy==6.3.1 wcwidth==0.9.4
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
