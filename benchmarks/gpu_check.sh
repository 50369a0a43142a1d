#!/usr/bin/env bash
# Every CUDA code path of the companion in one run, on one GPU in under 8 minutes; prints one table.
#
#     bash benchmarks/gpu_check.sh                 # from the repository root or anywhere
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Needs torch with CUDA, einops, pytest and (for the comparison row) transformers. What it runs, and
# what each row checks, is in benchmarks/gpu_check.py. Exit status: 0 all passed, 1 a check failed,
# 2 no CUDA device, 124 the 8-minute limit was reached.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout --kill-after=10 470 "$PYTHON" benchmarks/gpu_check.py "$@"
