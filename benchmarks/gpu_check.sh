#!/usr/bin/env bash
# One-shot GPU readiness check (issue 22), ≤ 8 minutes on one H200.  Writes one JSON and prints a
# table against the goals (inference ≥ 500 FPS at batch 8, training ≥ 400 img/s, bf16 ≈ fp32).
#
#   benchmarks/gpu_check.sh [OUT.json]          # on the GPU machine, from the repository root
#   benchmarks/gpu_check.sh --dry-run [OUT]     # the same code path on CPU at 128 px, 2 iterations
#
# PYTHON selects the interpreter (default: .venv/bin/python, else python3).  The Python part is
# benchmarks/gpu_check.py; a hard timeout keeps the whole check inside the lease.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY=(--dry-run); shift; fi
OUT="${1:-${OUT:-gpu_check.json}}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
exec timeout --signal=INT --kill-after=20 "${TIMEOUT_S:-470}" "$PY" benchmarks/gpu_check.py "${DRY[@]}" --out "$OUT"
