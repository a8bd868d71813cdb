#!/usr/bin/env bash
# The GPU check (serve_app/benchmark/gpu_check.py), on a machine with an NVIDIA GPU, Python 3.12,
# torch, transformers and accelerate, and no internet. First, where pip reaches PyPI:
#   make gpu-wheels          # the packages such an image lacks, as wheels, into .whl/
# then, on the GPU machine (about 6 minutes; without .whl/, what python3 has is used):
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check's options...]   # default OUT_DIR: benchmarks/results
# e.g. `bash benchmarks/gpu_check.sh "$OUT" --gpu-gib 44 --only default --only memory_model`.
# Everything it writes (the JSON, nvidia-smi's answer, the log) goes to OUT_DIR: a GPU machine may
# hand back only that folder.
set -euo pipefail
out=benchmarks/results
if [[ $# -gt 0 && $1 != -* ]]; then
  out=$(realpath -m -- "$1")
  shift
fi
cd "$(dirname "$0")/.."
mkdir -p "$out"
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wan-site "${wheels[@]}"
fi
export PYTHONPATH="/tmp/wan-site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia-smi.csv" 2>&1 || true
python3 -m serve_app.benchmark.gpu_check --out "$out" --budget-s "${BUDGET_S:-330}" "$@" 2>&1 | tee "$out/gpu-check.log"
