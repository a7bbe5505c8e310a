"""Are this device's TensorRT engines built? Run by ``deploy/jetson/entrypoint.sh`` at every start
(the checks are :mod:`pipeline.deepstream.engine_cache`).

    python3 -m pipeline.cli.engine_cache CONFIG               # exit 0 current, 1 build, 2 bad input
    python3 -m pipeline.cli.engine_cache CONFIG --build-args  # the build-engines flags for CONFIG
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from core.config import ConfigError, load_config
from engines.backends.base import BackendError
from pipeline.deepstream.engine_cache import build_args, engines_current, this_device

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pipeline.cli.engine_cache", description=__doc__)
    parser.add_argument("config", help="YAML site config")
    parser.add_argument("--build-args", action="store_true", help="print the build-engines flags and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    if args.build_args:
        print(" ".join(build_args(cfg)))
        return 0
    try:
        device = this_device(cfg.deepstream.gpu_id)
    except BackendError as exc:
        print(f"cannot identify this device: {exc}", file=sys.stderr)
        return 2
    reason = engines_current(cfg, device)
    if reason is not None:
        print(f"engines must be built for {device}: {reason}")
        return 1
    print(f"engines are current for {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
