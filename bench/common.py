"""What every benchmark script shares: the machine description, latency statistics, text tables, the
results folder, and the assets a run needs (checkpoint, ONNX engines, synthetic camera videos, site configs).

Assets live in a work folder (default ``out/bench``) and are reused when their inputs did not change: the
engine build is idempotent and the scene generator keeps a complete earlier output with equal parameters.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from core.config import ConfigError, ModelConfig, ZsadConfig, load_config
from core.gst import GstUnavailable, init_gstreamer
from engines.backends.onnxruntime import usable_cpus
from engines.build import BuildError, BuildOptions, build_from_config
from synth import DEFAULT_CONTEXTS, SynthError, generate_dataset

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_WORK",
    "REPO",
    "RESULTS_DIR",
    "Assets",
    "BenchError",
    "add_asset_arguments",
    "command_line",
    "format_table",
    "latency_stats",
    "load_average",
    "machine_info",
    "module_command",
    "parse_int_list",
    "prepare_assets",
    "read_result",
    "run_child",
    "site_config",
    "write_result",
]

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
DEFAULT_WORK = REPO / "out" / "bench"
# The synthetic camera videos: 320x240 at 25 fps, the size of a cheap sub-stream.
VIDEO_SIZE = (320, 240)
VIDEO_FPS = 25


class BenchError(RuntimeError):
    """A benchmark could not run (bad arguments, a failed child run, missing assets)."""


# --------------------------------------------------------------------------------------------------
# Machine, command, results
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_features() -> list[str]:
    """The SIMD features that decide float32 matmul speed, as /proc/cpuinfo lists them."""
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def _version(distribution: str) -> str | None:
    """The installed version of a distribution (without importing it), or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _gstreamer_version() -> str | None:
    try:
        return ".".join(str(v) for v in init_gstreamer().version())
    except GstUnavailable:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (as ``uptime`` shows them)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(*, gstreamer: bool = True) -> dict[str, Any]:
    """CPU model, core count, RAM, library versions, load average and the date (UTC)."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_features": _cpu_features(),
        "nproc": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "gstreamer": _gstreamer_version() if gstreamer else None,
        "git_commit": _git_commit(),
        "load_average": load_average(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return info


def command_line() -> str:
    """The exact command line of this process, shell-quoted."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def add_asset_arguments(parser: argparse.ArgumentParser, config_help: str = "base config") -> None:
    """``--config``, ``--checkpoint`` and ``--work``: what every benchmark builds its engines and scenes
    from (:func:`prepare_assets`)."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=config_help)
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="default: the demo model, else random init"
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for engines and scenes")


def module_command(module: str, *args: str) -> list[str]:
    """The argv that runs ``module`` (``bench.<script>``) as ``python -m`` in a child process, with this
    interpreter. Run it with ``cwd=REPO``: ``-m`` finds the ``bench`` package from the working directory,
    so no script has to edit ``sys.path``."""
    return [sys.executable, "-m", module, *args]


def run_child(module: str, args: Sequence[str], *, prefix: str, limit_s: float, what: str) -> dict[str, Any]:
    """Run ``python -m module *args`` in a fresh process from the repository root and return the JSON of
    the last stdout line that starts with ``prefix``. :class:`BenchError` names ``what`` when it runs past
    ``limit_s``, fails, or prints no result."""
    try:
        proc = subprocess.run(
            module_command(module, *args),
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=limit_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} ran past {limit_s:.0f} s") from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(prefix)]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(prefix) :])
    return result


def write_result(name: str, payload: Mapping[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<results_dir>/<name>.json``: the payload plus the command, the machine and the date."""
    results_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    doc = {
        "benchmark": name,
        "command": command_line(),
        "cwd": str(Path.cwd()),
        "date_utc": machine["date_utc"],
        "machine": machine,
        **payload,
    }
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def read_result(name: str, results_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    path = results_dir / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from exc
    return data


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------------
# Statistics and tables
# --------------------------------------------------------------------------------------------------


def latency_stats(samples_s: Iterable[float]) -> dict[str, float | int]:
    """p50 / p95 / mean / max in milliseconds and the count of a list of durations in seconds."""
    x = np.asarray(list(samples_s), dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "p50_ms": math.nan, "p95_ms": math.nan, "mean_ms": math.nan, "max_ms": math.nan}
    return {
        "n": int(x.size),
        "p50_ms": round(float(np.percentile(x, 50)) * 1e3, 3),
        "p95_ms": round(float(np.percentile(x, 95)) * 1e3, 3),
        "mean_ms": round(float(x.mean()) * 1e3, 3),
        "max_ms": round(float(x.max()) * 1e3, 3),
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False) -> str:
    """A plain aligned text table, or a GitHub markdown table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    table = [list(headers), *[[cell(v) for v in r] for r in rows]]
    if markdown:
        lines = ["| " + " | ".join(table[0]) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def parse_int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; refuses empty lists and values below 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise BenchError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise BenchError(f"expected integers >= 1, got {text!r}")
    return values


# --------------------------------------------------------------------------------------------------
# Assets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assets:
    """What a benchmark runs on.

    ``config``: the base config (its ``model`` section and defaults). ``checkpoint``: the weights the
    engines were built from; ``random_init`` says whether they are random (speed does not depend on the
    weights). ``videos``: synthetic camera MP4s (320x240, 25 fps), ``(path, context)``.
    """

    config_path: Path
    checkpoint: Path
    random_init: bool
    engines_dir: Path
    videos: tuple[tuple[Path, str], ...]
    video_frames: int
    work: Path

    def to_json(self) -> dict[str, Any]:
        """A JSON form that :meth:`from_json` reads back (to hand assets to a child process)."""
        return {
            "config_path": str(self.config_path),
            "checkpoint": str(self.checkpoint),
            "random_init": self.random_init,
            "engines_dir": str(self.engines_dir),
            "videos": [[str(p), ctx] for p, ctx in self.videos],
            "video_frames": self.video_frames,
            "work": str(self.work),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assets:
        return cls(
            config_path=Path(data["config_path"]),
            checkpoint=Path(data["checkpoint"]),
            random_init=bool(data["random_init"]),
            engines_dir=Path(data["engines_dir"]),
            videos=tuple((Path(p), str(ctx)) for p, ctx in data["videos"]),
            video_frames=int(data["video_frames"]),
            work=Path(data["work"]),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "config": str(self.config_path),
            "checkpoint": str(self.checkpoint),
            "random_init": self.random_init,
            "engines_dir": str(self.engines_dir),
            "videos": [str(p) for p, _ in self.videos],
            "video_frames": self.video_frames,
            "video_size": list(VIDEO_SIZE),
            "video_fps": VIDEO_FPS,
        }


def prepare_assets(
    work: Path = DEFAULT_WORK,
    config_path: Path = DEFAULT_CONFIG,
    checkpoint: Path | None = None,
    *,
    videos: int = 6,
    frames: int = 200,
) -> Assets:
    """Checkpoint, ONNX Runtime engines and synthetic videos under ``work`` (reused when up to date).

    The checkpoint is ``checkpoint``, else the config's ``engines.checkpoint`` when that file exists
    (the shipped demo model), else a randomly initialised model of the config's ``model`` section saved
    to ``work/random/model.safetensors`` (seeded, so re-runs reuse the same file and engines).
    """
    if videos < 1 or frames < 40:
        raise BenchError(f"need >= 1 video of >= 40 frames, got {videos} x {frames}")
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise BenchError(str(exc)) from exc
    work = Path(work).resolve()
    random_init = False
    if checkpoint is None and cfg.engines.checkpoint and (REPO / cfg.engines.checkpoint).is_file():
        checkpoint = REPO / cfg.engines.checkpoint
    if checkpoint is None:
        checkpoint = work / "random" / "model.safetensors"
        random_init = True
        if not checkpoint.is_file():
            _save_random_checkpoint(cfg.model, checkpoint)
    if not Path(checkpoint).is_file():
        raise BenchError(f"checkpoint {checkpoint} does not exist")
    engines_dir = work / ("engines-random" if random_init else "engines")
    started = time.monotonic()
    try:
        report = build_from_config(
            cfg, checkpoint=checkpoint, out_dir=engines_dir, options=BuildOptions(backend="onnxruntime")
        )
    except BuildError as exc:
        raise BenchError(f"engine build failed: {exc}") from exc
    log.info(
        "engines in %s: %s (%.1f s)",
        engines_dir,
        "up to date" if report.up_to_date else "built",
        time.monotonic() - started,
    )
    contexts = list(DEFAULT_CONTEXTS)[: min(videos, len(DEFAULT_CONTEXTS))]
    per_context = math.ceil(videos / len(contexts))
    scenes = work / "scenes"
    started = time.monotonic()
    try:
        generate_dataset(
            scenes,
            contexts=contexts,
            train_per_context=0,
            test_per_context=per_context,
            frames=frames,
            width=VIDEO_SIZE[0],
            height=VIDEO_SIZE[1],
            fps=VIDEO_FPS,
            seed=0,
            reuse=True,
        )
    except SynthError as exc:
        raise BenchError(f"scene generation failed: {exc}") from exc
    log.info("scenes in %s (%.1f s)", scenes, time.monotonic() - started)
    # Interleave contexts so the first N cameras mix scenes.
    paths = [
        (scenes / "testing" / "videos" / f"{ctx}_{i:03d}.mp4", ctx)
        for i in range(per_context)
        for ctx in contexts
    ][:videos]
    missing = [str(p) for p, _ in paths if not p.is_file()]
    if missing:
        raise BenchError(f"scene videos missing after generation: {missing}")
    return Assets(
        config_path=Path(config_path).resolve(),
        checkpoint=Path(checkpoint).resolve(),
        random_init=random_init,
        engines_dir=engines_dir,
        videos=tuple(paths),
        video_frames=frames,
        work=work,
    )


def _save_random_checkpoint(spec: ModelConfig, path: Path) -> None:
    import torch

    from engines.model import ZsadModel, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(ZsadModel(spec).eval(), path, extra={"note": "random init for benchmarks"})
    log.info("random-init checkpoint written to %s (weights do not change speed)", path)


def site_config(
    assets: Assets,
    cameras: int,
    out_dir: Path,
    *,
    uri_scheme: str = "loop",
    fps: float = 25.0,
    threads: int | None = None,
    max_batch: int | None = None,
    queue_size: int | None = None,
    calibrations: Sequence[Path] | None = None,
) -> ZsadConfig:
    """A validated :class:`core.config.ZsadConfig` for ``cameras`` synthetic cameras.

    Camera ``i`` plays video ``i % len(videos)`` (``loop://`` restarts it at its end, ``file://`` ends).
    Everything else (model, alert policy, media, scheduler) is the base config's, except: no review page,
    no metrics server, one JSONL sink under ``out_dir``, and ``threads`` / ``max_batch`` / ``queue_size``
    when given. ``calibrations``: one calibration file per camera (camera ``i`` gets ``calibrations[i]``);
    None leaves every camera uncalibrated, hence without an appearance memory.
    """
    if uri_scheme not in ("loop", "file"):
        raise BenchError(f"uri_scheme must be loop or file, got {uri_scheme!r}")
    if calibrations is not None and len(calibrations) != cameras:
        raise BenchError(f"need one calibration file per camera: {len(calibrations)} for {cameras} cameras")
    base = load_config(assets.config_path)
    data = base.model_dump(mode="json")
    cams = []
    for i in range(cameras):
        path, context = assets.videos[i % len(assets.videos)]
        cam: dict[str, Any] = {"id": f"cam{i:02d}", "uri": f"{uri_scheme}://{path}", "context": context}
        if calibrations is not None:
            cam["calibration"] = str(calibrations[i])
        cams.append(cam)
    data["cameras"] = cams
    data["defaults"]["sampling"] = {"fps": fps}
    data["engines"]["dir"] = str(assets.engines_dir)
    data["engines"]["checkpoint"] = str(assets.checkpoint)
    if threads is not None:
        data["engines"]["threads"] = threads
    if max_batch is not None:
        data["scheduler"]["max_batch"] = max_batch
    if queue_size is not None:
        data["scheduler"]["queue_size"] = queue_size
    data["sinks"] = [{"kind": "jsonl", "path": "alerts.jsonl"}]
    data["metrics"]["enabled"] = False
    data["ui"]["enabled"] = False
    data["output_dir"] = str(out_dir)
    data.pop("train", None)
    return ZsadConfig.model_validate(data)
