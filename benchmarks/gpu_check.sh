#!/usr/bin/env bash
# The GPU check (serve_app/benchmark/gpu_check.py), on a machine with an NVIDIA GPU, Python 3.12,
# torch, transformers and accelerate, and no internet. First, where pip reaches PyPI:
#   make gpu-wheels          # the packages such an image lacks, as wheels, into .whl/
# then, on the GPU machine, from the repository's root (about 6 minutes):
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default OUT_DIR: benchmarks/results
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wan-site .whl/*.whl
export PYTHONPATH="/tmp/wan-site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -m serve_app.benchmark.gpu_check --out "${1:-benchmarks/results}" --budget-s "${BUDGET_S:-330}"
