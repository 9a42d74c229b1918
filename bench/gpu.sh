#!/usr/bin/env bash
# One call on an H100/H200 machine: checks that the learner gives the same results on CUDA as on
# CPU, prints the GPU table, then times the encoder against sentence-transformers on CUDA
# (bench/encoder.py; its rows go to $OUT/encoder-cuda.json, or .gpu/ without $OUT) and exact
# scoring of 1024 users over 10k, 100k and 1M items (bench/scoring.py). Prepare once
# here with bench/gpu_prepare.sh, then run through the device tool with carry [".gpu"]:
#   bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
# The machine has no internet and no sentence-transformers: install the carried wheel beside us.
python3 -m pip install -q --no-index --no-deps --disable-pip-version-check --upgrade \
    --find-links .gpu/wheels --target .gpu/site sentence-transformers \
    || python3 -m zipfile -e .gpu/wheels/sentence_transformers-*.whl .gpu/site \
    || echo "sentence-transformers wheel not installed: bench/encoder.py reports without it"
export PYTHONUNBUFFERED=1 PYTHONPATH=.:.gpu/site
check=0
python3 bench/gpu_check.py --model .gpu/model --data .gpu/ml-100k "$@" || check=$?
python3 bench/encoder.py --device cuda --model .gpu/model --ml100k .gpu/ml-100k \
    --json "${OUT:-.gpu}/encoder-cuda.json" || check=$?
# Exact recommend() over 10k..1M items on CUDA (no FAISS there: the GPU scores the whole catalog).
python3 bench/scoring.py --device cuda --repeats 3 --json "${OUT:-.gpu}/scoring-cuda.json" \
    || check=$?
exit "$check"
