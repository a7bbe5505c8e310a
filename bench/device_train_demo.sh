#!/usr/bin/env bash
# Train the demo model on a lent GPU machine (no network, no GStreamer needed): synthetic scenes as frames
# only, then `zsad train configs/train/synthetic.yaml` on CUDA. Run from the repository root:
#   OUT=/some/dir MINUTES=6 bash bench/device_train_demo.sh
# Leaves in $OUT: model.safetensors (+ .json), train.log, loss curve, and the packages it ran with.
# pydantic is not on those machines: carry its wheels in .whl/ (pip download pydantic==... -d .whl).
set -euo pipefail
OUT="${OUT:-out/device_train}"
MINUTES="${MINUTES:-6}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import pydantic' >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps --no-index --target /tmp/zsad_pp .whl/*.whl
    export PYTHONPATH="/tmp/zsad_pp${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch, numpy, PIL, pydantic; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")' | tee "$OUT/packages.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/packages.txt" || true
"$PY" -m pipeline.cli.main synth --out out/synth --train-per-context 4 --test-per-context 4 --frames 400 --fps 10 --seed 1 --no-video 2>&1 | tail -3
"$PY" -m pipeline.cli.main train configs/train/synthetic.yaml --max-minutes "$MINUTES" 2>&1 | tee "$OUT/train.log" | tr "\r" "\n" | grep -v "step/s]" | tail -20
cp runs/synthetic/model.safetensors* "$OUT/"
cp runs/synthetic/*.png runs/synthetic/*.json runs/synthetic/*.jsonl "$OUT/" 2>/dev/null || true
ls -la "$OUT"
