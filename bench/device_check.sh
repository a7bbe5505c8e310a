#!/usr/bin/env bash
# Device checks for a lent GPU machine (no network; installs nothing). Run from anywhere:
#   OUT=/path/to/results bash bench/device_check.sh [--trt-base] [--sections env,fp16_blocks,...]
# Picks a Python that sees CUDA (PYTHON, then .venv/bin/python, then python3), runs
# `python -m bench.device_check` from the repository root, and leaves device_check.json, device_check.log, nvidia-smi.txt and any
# <section>.error.txt under $OUT. Exit 0 when no section failed; sections that cannot run here
# (no CUDA, no TensorRT) are skipped, not failed.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/out/device_check}"
mkdir -p "$OUT"
cd "$REPO" || exit 2

has_cuda_torch() {
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}

has_torch() {
    "$1" -c 'import torch' >/dev/null 2>&1
}

pick_python() {
    local candidates=() c
    [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
    [ -x "$REPO/.venv/bin/python" ] && candidates+=("$REPO/.venv/bin/python")
    for c in python3 python; do
        command -v "$c" >/dev/null 2>&1 && candidates+=("$(command -v "$c")")
    done
    for c in "${candidates[@]}"; do has_cuda_torch "$c" && { echo "$c"; return 0; }; done
    for c in "${candidates[@]}"; do has_torch "$c" && { echo "$c"; return 0; }; done
    [ "${#candidates[@]}" -gt 0 ] && { echo "${candidates[0]}"; return 0; }
    return 1
}

if ! PY="$(pick_python)"; then
    echo "device_check: no Python interpreter found" >&2
    exit 2
fi
echo "device_check: python $PY ($("$PY" --version 2>&1)); results in $OUT"

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "device_check: nvidia-smi failed (see $OUT/nvidia-smi.txt)"
else
    echo "device_check: nvidia-smi not found: probably no NVIDIA driver here" | tee "$OUT/nvidia-smi.txt"
fi

# -m finds bench/ from the working directory ($REPO, above); PYTHONPATH keeps the repository importable
# even where PYTHONSAFEPATH leaves the working directory off sys.path.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
"$PY" -m bench.device_check --out "$OUT" "$@" 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
