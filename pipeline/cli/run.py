"""``zsad run CONFIG``: the command line edge of :mod:`pipeline.run` (CPU graph) and
:mod:`pipeline.deepstream` (DeepStream graph)."""

from __future__ import annotations

from typing import Any

from core.config import ConfigError, load_config
from pipeline.run import run_config

__all__ = ["run_run"]


def run_run(args: Any) -> int:
    """CLI handler for ``zsad run``."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}")
        return 2
    graph = args.graph or cfg.graph
    if graph == "deepstream":
        from pipeline.deepstream import deepstream_unavailable_reason

        reason = deepstream_unavailable_reason()
        if reason:
            print(f"cannot run the DeepStream graph: {reason}")
            return 2
        from pipeline.deepstream import run_deepstream

        return run_deepstream(cfg, duration_s=args.duration)
    return run_config(cfg, duration_s=args.duration, realtime=not args.fast, config_path=args.config)
