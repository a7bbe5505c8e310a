"""The ``zsad`` command line.

Each sub-command is declared here and runs a function imported lazily, so ``zsad validate`` never
imports torch or GStreamer. Exit codes: 0 success, 1 runtime failure, 2 bad input (config, arguments,
manifests, files, ports). Each handler turns the errors it expects into one line that names the thing and
what to do; :func:`main` turns anything else into one line too (the traceback only with ``-vv``), so no
traceback reaches a person (tests/integration/test_cli_errors.py walks every command).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

log = logging.getLogger("zsad")

Handler = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Handler:
    """Return a handler that imports ``module:function`` only when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        module_name, func_name = target.split(":")
        func: Handler = getattr(importlib.import_module(module_name), func_name)
        return func(args)

    return handler


def positive_seconds(text: str) -> float:
    """argparse type of ``--duration``: seconds > 0 (argparse exits 2 with the reason otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


#: The largest ``eval --smooth-sigma``: a Gaussian wider than this many frames smooths a video into its mean
#: (and one of 1e12 frames asks for terabytes).
MAX_SMOOTH_SIGMA = 1000.0


def smoothing_frames(text: str) -> float:
    """argparse type of ``eval --smooth-sigma``: frames from 0 to :data:`MAX_SMOOTH_SIGMA`, refused before any
    scoring."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of frames") from None
    if not 0 <= value <= MAX_SMOOTH_SIGMA:
        raise argparse.ArgumentTypeError(
            f"must be a number of frames from 0 to {MAX_SMOOTH_SIGMA:g}, got {text}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsad", description="Zero-shot video anomaly detection at the edge."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-vv, before the command (zsad -vv run ...): debug logging, and an unexpected error's traceback",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="validate a config file; exit 2 on error")
    p.add_argument("config", help="YAML config file")
    p.set_defaults(handler=_lazy("pipeline.cli.validate:run_validate"))

    p = sub.add_parser("synth", help="generate synthetic surveillance scenes with ground truth")
    p.add_argument("--out", required=True, help="output folder (UCSD-style layout)")
    p.add_argument("--contexts", default="campus,parking,station", help="comma-separated context names")
    p.add_argument("--train-per-context", type=int, default=2, help="normal training videos per context")
    p.add_argument("--test-per-context", type=int, default=2, help="test videos (with anomalies) per context")
    p.add_argument("--frames", type=int, default=200, help="frames per video")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-video", action="store_true", help="write frames/labels/masks only, no MP4")
    p.set_defaults(handler=_lazy("pipeline.cli.synth:run_synth"))

    p = sub.add_parser("train", help="train the model on normal video (torchrun for several processes)")
    p.add_argument("config", help="YAML config with a 'train' section")
    p.add_argument("--resume", help="checkpoint to resume from")
    p.add_argument("--max-minutes", type=float, help="override train.max_minutes")
    p.add_argument(
        "--max-steps",
        type=int,
        help="override train.max_steps (the same steps and schedule on every machine)",
    )
    p.add_argument("--output-dir", help="override train.output_dir")
    p.set_defaults(handler=_lazy("pipeline.cli.train:run_train"))

    p = sub.add_parser("eval", help="evaluate a checkpoint on a labelled test split")
    p.add_argument("config", help="YAML config with a 'train' section naming the dataset")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder for metrics.json and plots")
    p.add_argument(
        "--smooth-sigma", type=smoothing_frames, default=3.0, help="Gaussian smoothing in frames (0: none)"
    )
    p.set_defaults(handler=_lazy("pipeline.cli.evaluate:run_eval"))

    p = sub.add_parser("run", help="run the cameras of a config and raise alerts")
    p.add_argument("config", help="YAML site config")
    p.add_argument("--graph", choices=["cpu", "deepstream"], help="override the config's graph")
    p.add_argument("--duration", type=positive_seconds, help="stop after this many seconds")
    p.add_argument("--fast", action="store_true", help="play files as fast as possible, not in real time")
    p.set_defaults(handler=_lazy("pipeline.cli.run:run_run"))

    p = sub.add_parser("demo", help="run the built-in default: synthetic cameras, demo model, alerts")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument(
        "--duration", type=positive_seconds, help="seconds to run (default: the scene length + 10 s)"
    )
    p.add_argument("--fast", action="store_true", help="play the scenes as fast as possible")
    p.set_defaults(handler=_lazy("pipeline.cli.demo:run_demo"))

    p = sub.add_parser("calibrate", help="fit a camera's score statistics from its normal footage")
    p.add_argument("config", help="YAML site config")
    p.add_argument("--camera", required=True, help="camera id in the config")
    p.add_argument("--footage", action="append", required=True, help="URI of normal footage (repeatable)")
    p.add_argument("--out", required=True, help="calibration file to write (JSON)")
    p.set_defaults(handler=_lazy("pipeline.cli.calibrate:run_calibrate"))

    p = sub.add_parser("build-engines", help="export ONNX, build TensorRT engines, write manifests")
    p.add_argument("--config", required=True, help="YAML config (model section and cameras' contexts)")
    p.add_argument("--checkpoint", help="checkpoint to build from (default: engines.checkpoint)")
    p.add_argument("--out", help="engine folder (default: engines.dir)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt", "all"), default="onnxruntime")
    p.add_argument("--min-batch", type=int, default=1, help="TensorRT profile: smallest batch")
    p.add_argument("--opt-batch", type=int, default=8, help="TensorRT profile: batch tuned for")
    p.add_argument("--max-batch", type=int, default=32, help="TensorRT profile: largest batch")
    p.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT builder workspace limit")
    p.add_argument("--input-layout", choices=("NTCHW", "NCTHW"), default="NTCHW", help="backbone input")
    p.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    p.set_defaults(handler=_lazy("pipeline.cli.build:run_build"))

    return parser


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else (logging.INFO if verbosity < 2 else logging.DEBUG)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: a person gets one line, never a traceback
        log.debug("zsad %s failed", args.command, exc_info=True)
        print(
            f"zsad {args.command}: unexpected {type(exc).__name__}: {exc} (this is a bug: run it again as "
            f"zsad -vv {args.command} ... for the traceback and report both)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
