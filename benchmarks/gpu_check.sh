#!/usr/bin/env bash
# lit_vit's GPU acceptance checks: benchmarks/gpu_check.sh OUT_DIR [--cpu] [--only CHECK ...] [--budget-s 480]
# About 8 minutes on one GPU; a reduced CPU mode without one. See lit_vit/bench/gpu_check.py and BENCHMARKS.md.
set -euo pipefail
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
exec python -m lit_vit.bench.gpu_check "$@"
