"""``zsad run CONFIG``: the command line edge of :mod:`pipeline.run` (CPU graph) and
:mod:`pipeline.deepstream` (DeepStream graph): it prints what stops a run from starting and maps it to an
exit code (2 unusable input, 1 a graph that cannot be built)."""

from __future__ import annotations

from typing import Any

from core.config import ConfigError, ZsadConfig, load_config
from pipeline.deepstream.app import run_deepstream
from pipeline.deepstream.availability import DeepStreamUnavailable
from pipeline.deepstream.graph import DeepStreamGraphError
from pipeline.deepstream.render import RenderError
from pipeline.inference import EngineError
from pipeline.outputs.hub import RunOutputs
from pipeline.run import run_config

__all__ = ["announce", "run_deepstream_graph", "run_run"]


def announce(outputs: RunOutputs) -> None:
    """Print where the review page of a started run is (``zsad run`` and ``zsad demo``)."""
    if outputs.review_server is not None:
        print(f"review page: {outputs.review_server.url}", flush=True)


def run_run(args: Any) -> int:
    """CLI handler for ``zsad run``."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}")
        return 2
    if (args.graph or cfg.graph) == "deepstream":
        return run_deepstream_graph(cfg, args.duration)
    try:
        return run_config(
            cfg, duration_s=args.duration, realtime=not args.fast, config_path=args.config, on_start=announce
        )
    except EngineError as exc:
        print(f"refusing to start: {exc}")
        return 2


def run_deepstream_graph(cfg: ZsadConfig, duration_s: float | None = None) -> int:
    """The DeepStream branch of ``zsad run``: what stops it from starting is printed, exit 2 (this machine,
    the engines or the config) or 1 (the graph cannot be built)."""
    try:
        return run_deepstream(cfg, duration_s=duration_s, on_start=announce)
    except DeepStreamUnavailable as exc:
        print(f"cannot run the DeepStream graph: {exc}")
        return 2
    except (EngineError, RenderError) as exc:
        print(f"refusing to start: {exc}")
        return 2
    except DeepStreamGraphError as exc:
        print(f"cannot build the DeepStream graph: {exc}")
        return 1
