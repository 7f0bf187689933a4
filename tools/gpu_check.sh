#!/usr/bin/env bash
# One command for a CUDA machine (<= 8 minutes on one GPU): the CUDA tests, AMP training speed, the loss's
# host-sync check, fused fp32/fp16/bf16 inference, torchrun on 2 GPUs; one table. See tools/gpu_check.py.
# Usage: tools/gpu_check.sh [--dry-run] [--iterations N]   (--dry-run: the same steps on the CPU, tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" tools/gpu_check.py "$@"
