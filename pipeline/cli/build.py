"""``zsad build-engines`` (and ``python build_engines.py``): the command line edge of :mod:`engines.build`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import ConfigError, load_config
from engines.backends.base import BackendError, BackendUnavailable
from engines.build import BuildError, BuildInputError, BuildOptions, build_from_config
from engines.export import ExportError, ParityError
from engines.manifest import ManifestError
from engines.tensorrt_build import BatchProfile, ProfileError, TensorRTBuildError

__all__ = ["run_build"]


def run_build(args: argparse.Namespace) -> int:
    """CLI handler of ``zsad build-engines`` (and ``python build_engines.py``). Exit 0 ok, 1 failure
    (parity, export, TensorRT), 2 bad input (config, checkpoint, options)."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or cfg.engines.dir
    if Path(out).exists() and not Path(out).is_dir():
        print(f"error: --out {out} is a file: name the engine folder to write", file=sys.stderr)
        return 2
    try:
        options = BuildOptions(
            backend=args.backend,
            profile=BatchProfile(args.min_batch, args.opt_batch, args.max_batch),
            workspace_mb=args.workspace_mb,
            input_layout=args.input_layout,
            force=args.force,
        )
        report = build_from_config(cfg, args.checkpoint, args.out, options)
    except (BuildInputError, ProfileError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"parity failure: {exc}", file=sys.stderr)
        return 1
    except (BuildError, ExportError, TensorRTBuildError, ManifestError, BackendError) as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"build failed: {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(report.table())
    return 0
