"""``zsad eval CONFIG --checkpoint CKPT --out DIR``: the command line edge of :mod:`training.evaluate`
(imported, with torch, only when ``zsad eval`` runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from engines.model import CheckpointError
from pipeline.cli.train import dataset_hint, load_train_config
from training.datasets import DatasetError
from training.evaluate import EvaluationError, evaluate
from training.metrics import MetricError

__all__ = ["print_summary", "run_eval"]


def run_eval(args: Any) -> int:
    """CLI handler for ``zsad eval``."""
    cfg = load_train_config(args.config, "naming the dataset")
    if cfg is None:
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"--out {out} is a file: name a folder for metrics.json and the plots", file=sys.stderr)
        return 2
    try:
        metrics = evaluate(cfg, args.checkpoint, out, smooth_sigma=args.smooth_sigma)
    except CheckpointError as exc:
        print(f"bad checkpoint: {exc}", file=sys.stderr)
        return 2
    except EvaluationError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"{args.config}: train.dataset: {exc} ({dataset_hint(cfg)})", file=sys.stderr)
        return 2
    except MetricError as exc:  # e.g. a test split without an abnormal frame: no AUC to give
        print(f"{args.config}: the test split cannot be scored: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"evaluation failed: {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print_summary(metrics)
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


def print_summary(metrics: dict[str, Any]) -> None:
    """The table ``zsad eval`` prints from its metrics: each variant's AUCs, the breakdown, the alerts."""
    width = max(len(k) for k in metrics["summary"])
    print(f"{'variant':<{width}}  micro AUC  macro AUC     AP  R@5%FPR")
    for name, row in metrics["summary"].items():
        r5 = row["recall_at_5pct_fpr"]
        r5_text = "n/a" if r5 is None else f"{r5:.3f}"
        # No video with both classes: no macro AUC (score_report gives None).
        macro = "n/a" if row["macro_auc"] is None else f"{row['macro_auc']:.4f}"
        print(f"{name:<{width}}  {row['micro_auc']:9.4f}  {macro:>9}  {row['ap']:5.3f}  {r5_text}")
    b = metrics["breakdown"]
    for what in ("per_context", "per_kind", "per_kind_with_overlaps"):
        if b.get(what):
            model_aucs = ", ".join(f"{k} {v}" for k, v in b[what].items())
            floor_aucs = ", ".join(f"{k} {v}" for k, v in b["floor_model_resolution"][what].items())
            print(f"AUC {what.replace('_', ' ')} (model): {model_aucs}")
            print(f"AUC {what.replace('_', ' ')} (floor): {floor_aucs}")
    a = metrics["alerts"]
    print(
        f"alerts of the product (on_threshold {a['on_threshold']}, read every {a['hop_frames']} frames): "
        f"{a['detected']} of {a['events']} events detected, {a['false_alarms']} false alarms in "
        f"{a['normal_minutes']:g} normal minutes"
    )
