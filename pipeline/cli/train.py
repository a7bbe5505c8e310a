"""``zsad train CONFIG``: the command line edge of :mod:`training.trainer` (imported, with torch, only
when ``zsad train`` runs)."""

from __future__ import annotations

from typing import Any

from core.config import ConfigError, load_config
from training.trainer import TrainingError, train

__all__ = ["run_train"]


def run_train(args: Any) -> int:
    """CLI handler for ``zsad train``."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}")
        return 2
    if args.max_minutes is not None and cfg.train is not None:
        cfg.train.max_minutes = args.max_minutes
    if args.output_dir and cfg.train is not None:
        cfg.train.output_dir = args.output_dir
    try:
        path = train(cfg, resume=args.resume)
    except TrainingError as exc:
        print(f"training failed: {exc}")
        return 1
    print(f"checkpoint: {path}")
    return 0
