#!/usr/bin/env bash
# The GPU part of the first-contact check (no network; installs nothing). Run from anywhere:
#   bash bench/device_check.sh [--spec default|base|tiny] [--max-batch N] [--no-measure] [--out DIR]
# Picks a Python that sees CUDA (PYTHON, then .venv/bin/python, then python3), runs
# `python -m bench.device_check` from the repository root: one PASS/FAIL line per check, never a skip.
# What a GPU box without TensorRT can run comes first and is all reported; a missing TensorRT is a FAIL
# that ends the run. Results: $OUT/device_check.json and device_check.log (OUT defaults to
# out/device_check). Exit 0 only when every check passed.
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
    echo "FAIL  python: no Python interpreter found"
    exit 1
fi
echo "device_check: $PY ($("$PY" --version 2>&1))"
if ! "$PY" -c 'import numpy' >/dev/null 2>&1; then
    # bench.device_check itself needs numpy: say so as a FAIL line rather than a traceback.
    echo "FAIL  package numpy: missing (every check needs it; pip install numpy)"
    exit 1
fi

# -m finds bench/ from the working directory ($REPO, above); PYTHONPATH keeps the repository importable
# even where PYTHONSAFEPATH leaves the working directory off sys.path.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
"$PY" -m bench.device_check --out "$OUT" "$@" 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
