"""``zsad train CONFIG``: the command line edge of :mod:`training.trainer` (imported, with torch, only
when ``zsad train`` runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from core.config import ConfigError, ZsadConfig, data_path_lookup, load_config, resolve_data_path
from engines.model import CheckpointError
from training.datasets import DatasetError
from training.trainer import TrainingError, train

__all__ = ["DATASET_HINT", "dataset_hint", "load_train_config", "run_train"]


DATASET_HINT = "make one with zsad synth, or set train.dataset.root"


def dataset_hint(cfg: ZsadConfig) -> str:
    """What to do about a dataset folder that does not exist, with where a relative root was looked for
    (the folder the error names is then the fallback under ``$ZSAD_DATA_ROOT``)."""
    if cfg.train is None or resolve_data_path(cfg.train.dataset.root).exists():
        return DATASET_HINT  # the root was found: what is missing is inside it
    return f"train.dataset.root {data_path_lookup(cfg.train.dataset.root)}; {DATASET_HINT}"


def load_train_config(path: str, missing: str) -> ZsadConfig | None:
    """The config at ``path`` if it loads and has a ``train`` section; otherwise print why (``missing``
    says what the section is for) and return None, for the command to exit 2."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return None
    if cfg.train is None:
        print(f"{path}: the config has no 'train' section {missing}", file=sys.stderr)
        return None
    return cfg


def run_train(args: Any) -> int:
    """CLI handler for ``zsad train``."""
    cfg = load_train_config(args.config, "(see configs/train/*.yaml)")
    if cfg is None or cfg.train is None:
        return 2
    if args.max_minutes is not None:
        if not args.max_minutes > 0:
            print(f"--max-minutes must be > 0, got {args.max_minutes:g}", file=sys.stderr)
            return 2
        cfg.train.max_minutes = args.max_minutes
    if args.max_steps is not None:
        if args.max_steps < 1:
            print(f"--max-steps must be >= 1, got {args.max_steps}", file=sys.stderr)
            return 2
        cfg.train.max_steps = args.max_steps
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    if Path(cfg.train.output_dir).is_file():
        print(
            f"train.output_dir {cfg.train.output_dir} is a file: name a folder for the checkpoints",
            file=sys.stderr,
        )
        return 2
    try:
        path = train(cfg, resume=args.resume)
    except DatasetError as exc:
        print(f"{args.config}: train.dataset: {exc} ({dataset_hint(cfg)})", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"--resume: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"training failed: {exc.filename or cfg.train.output_dir}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    print(f"checkpoint: {path}")
    return 0
