#!/usr/bin/env bash
# laffi on one CUDA GPU (bench/gpu_check.py): every stage placed there, float32 against the CPU, GPU speed side by
# side. Needs torch, transformers, peft and accelerate; no network, no vLLM, no data files. At most ~10 minutes.
#   bash bench/gpu_check.sh [--questions 50] [--steps 5] [--json results.json]
# Without a CUDA device it exits 2 with one line.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout 600 "$PY" bench/gpu_check.py "$@"
