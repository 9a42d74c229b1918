#!/usr/bin/env bash
# One call on an H100/H200 machine: checks that the learner gives the same results on CUDA as on
# CPU, and prints the GPU table. Prepare once here with bench/gpu_prepare.sh, then run through
# the device tool with carry [".gpu"]:  bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
PYTHONUNBUFFERED=1 PYTHONPATH=. python3 bench/gpu_check.py --model .gpu/model --data .gpu/ml-100k "$@"
