#!/usr/bin/env bash
# GPU benchmark: installs the cuda extra into .venv-gpu and runs benchmarks/gpu_scale.py.
#   bash benchmarks/gpu.sh        (from the repository root, on a machine with an NVIDIA GPU)
# Budget: install ~2-3 min, benchmark ~2-3 min on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[cuda]"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$VENV/bin/python" benchmarks/gpu_scale.py "$@"
