#!/usr/bin/env bash
# First contact with a real DeepStream 7.1 box (Jetson Orin or dGPU): one PASS/FAIL line per check, and a
# non-zero exit at the first failure. Run it from a checkout of this repository, on the box itself or in
# the zsad image with the checkout mounted (docs/deploy-jetson.md):
#   bash deploy/jetson/first_contact.sh                  # every check, writes out/first_contact/
#   bash deploy/jetson/first_contact.sh --export-onnx    # development machine: the ONNX to ship
# The GPU-only part, for a GPU box without DeepStream, is bench/device_check.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "FAIL  python: $PY is not installed (DeepStream 7.1's Python is python3.10)"
    exit 1
fi

# -m finds our packages from the repository root; PYTHONPATH keeps them importable where PYTHONSAFEPATH
# leaves the working directory off sys.path.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" "$REPO/deploy/jetson/first_contact.py" "$@"
