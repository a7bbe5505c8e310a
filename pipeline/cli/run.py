"""``zsad run CONFIG``: the command line edge of :mod:`pipeline.run` (CPU graph) and
:mod:`pipeline.deepstream` (DeepStream graph): it builds the CPU engines of a first run, prints what stops a
run from starting and maps it to an exit code (2 unusable input, 1 a graph or a build that fails)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from core.config import ConfigError, ZsadConfig, load_config
from pipeline.deepstream.app import run_deepstream
from pipeline.deepstream.availability import DeepStreamUnavailable
from pipeline.deepstream.graph import DeepStreamGraphError
from pipeline.deepstream.render import RenderError
from pipeline.inference import EngineBuildError, EngineError, build_missing_engines
from pipeline.outputs.hub import RunOutputs, RunOutputsError, check_outputs
from pipeline.run import run_config

__all__ = ["announce", "first_run_engines", "run_deepstream_graph", "run_run"]


def announce(outputs: RunOutputs) -> None:
    """Print where the review page of a started run is (``zsad run`` and ``zsad demo``)."""
    if outputs.review_server is not None:
        print(f"review page: {outputs.review_server.url}", flush=True)


def first_run_engines(cfg: ZsadConfig) -> None:
    """Build the CPU engines of a first run (:func:`pipeline.inference.build_missing_engines`): a progress
    bar on stderr when it is a terminal; elsewhere the build's log lines ("[2/4] dpc_head") show progress.
    Raises :class:`EngineError` (exit 2) and :class:`EngineBuildError` (exit 1)."""
    interactive = sys.stderr.isatty()
    bar: Any = None

    def progress(done: int, total: int, component: str) -> None:
        nonlocal bar
        if not interactive:
            return
        if bar is None:
            # A terminal without a window size (0 x 0) would hide the bar: shutil falls back to 80 x 24.
            size = shutil.get_terminal_size((80, 24))
            bar = tqdm(
                total=total,
                desc="building engines",
                unit="part",
                file=sys.stderr,
                ncols=min(size.columns, 120),
                nrows=size.lines,
            )
        bar.set_postfix_str(component, refresh=False)
        bar.update(done - bar.n)

    redirect = logging_redirect_tqdm() if interactive else contextlib.nullcontext()
    try:
        with redirect:
            report = build_missing_engines(cfg, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if report is not None:
        print(f"engines: built in {cfg.engines.dir} from {cfg.engines.checkpoint}", flush=True)


def run_run(args: Any) -> int:
    """CLI handler for ``zsad run``."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    if (args.graph or cfg.graph) == "deepstream":
        return run_deepstream_graph(cfg, args.duration)
    try:
        check_outputs(cfg)  # before a first run spends a minute building engines
        first_run_engines(cfg)
        return run_config(
            cfg, duration_s=args.duration, realtime=not args.fast, config_path=args.config, on_start=announce
        )
    except (EngineError, RunOutputsError) as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    except EngineBuildError as exc:
        print(f"cannot build the engines: {exc}", file=sys.stderr)
        return 1


def run_deepstream_graph(cfg: ZsadConfig, duration_s: float | None = None) -> int:
    """The DeepStream branch of ``zsad run``: what stops it from starting is printed, exit 2 (this machine,
    the engines, the config, a port) or 1 (the graph cannot be built). Its TensorRT engines are never built
    here: ``zsad build-engines --backend tensorrt`` builds them on the device."""
    try:
        check_outputs(cfg)
        return run_deepstream(cfg, duration_s=duration_s, on_start=announce)
    except DeepStreamUnavailable as exc:
        print(f"cannot run the DeepStream graph: {exc}", file=sys.stderr)
        return 2
    except (EngineError, RenderError, RunOutputsError) as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    except DeepStreamGraphError as exc:
        print(f"cannot build the DeepStream graph: {exc}", file=sys.stderr)
        return 1
