"""Start many loop:// cameras at once in this (fresh) process and report, as one JSON line, which went live.

    python -m tests.reliability.many_cameras --cameras 16 --deadline 30 a.mp4 b.mp4 ...

The graph is built as ``zsad run`` builds it (real time, the event-media display branch, decoding threads
at nice 10). It waits on events until every camera has delivered ``--frames`` frames and reported ``live``,
or ``--deadline`` passes, then stops and prints ``{"cameras", "live", "not_live", "frames",
"error_records", "first_error", "seconds"}``. Run by test_many_cameras_start.py, each
time in a new interpreter: what it guards against happened on a process's first frames only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config import CameraConfig, CameraDefaults, ZsadConfig
from pipeline.cpu.graph import CameraGraph

__all__ = ["main", "start_many"]


class _Counter(logging.Handler):
    """Counts ERROR records; keeps the first."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors = 0
        self.first_error: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors += 1
            if self.first_error is None:
                exc = record.exc_info[1] if record.exc_info else None
                self.first_error = (
                    f"{record.getMessage()}: {exc!r}" if exc is not None else record.getMessage()
                )


def start_many(videos: Sequence[Path], cameras: int, deadline_s: float, frames: int) -> dict[str, Any]:
    """Start ``cameras`` loop:// cameras over ``videos`` (camera i plays video i mod len) together."""
    ids = [f"cam{i:02d}" for i in range(cameras)]
    cfg = ZsadConfig(
        defaults=CameraDefaults.model_validate({"sampling": {"fps": 25}}),
        cameras=[
            CameraConfig(id=cid, uri=f"loop://{Path(videos[i % len(videos)]).resolve()}")
            for i, cid in enumerate(ids)
        ],
    )
    lock = threading.Lock()
    counts = dict.fromkeys(ids, 0)
    live: set[str] = set()
    done = threading.Event()

    def check() -> None:  # lock held
        if len(live) == len(ids) and all(n >= frames for n in counts.values()):
            done.set()

    def on_frame(cid: str, _pts: float, _frame: Any) -> None:
        with lock:
            counts[cid] += 1
            check()

    def on_state(cid: str, state: str, _detail: str) -> None:
        with lock:
            if state == "live":
                live.add(cid)
            check()

    counter = _Counter()
    logging.getLogger().addHandler(counter)
    graph = CameraGraph(
        (64, 48),
        on_frame,
        on_state,
        cameras=[cfg.camera_settings(cid) for cid in ids],
        realtime=True,
        display_size=(160, 120),
        on_display_frame=lambda *_: None,
        decode_nice=10,
        # The start watchdog is for a pipeline left stuck, not for a slow start: a loaded machine starting
        # 16 cameras may take longer than its default 10 s. At twice the deadline it cannot fire before the
        # graph is stopped (a stuck camera rebuilt in the last seconds could go live unnoticed), so a stuck
        # pipeline shows as a camera in ``not_live``.
        start_timeout_s=2 * deadline_s,
    )
    started = time.monotonic()
    try:
        graph.start()
        done.wait(deadline_s)
        states = graph.states()
    finally:
        graph.stop()
        logging.getLogger().removeHandler(counter)
    with lock:
        return {
            "cameras": cameras,
            "live": sorted(live),
            "not_live": {cid: states.get(cid) for cid in ids if cid not in live},
            "frames": dict(counts),
            "error_records": counter.errors,
            "first_error": counter.first_error,
            "seconds": round(time.monotonic() - started, 2),
        }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.many_cameras", description=__doc__)
    p.add_argument("videos", type=Path, nargs="+", help="MP4 files the cameras loop over")
    p.add_argument("--cameras", type=int, default=16)
    p.add_argument("--deadline", type=float, default=30.0, help="longest wait for every camera (s)")
    p.add_argument("--frames", type=int, default=3, help="frames every camera must deliver")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = start_many(args.videos, args.cameras, args.deadline, args.frames)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
