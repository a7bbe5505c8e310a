"""A full disk for event media (a 64 KiB tmpfs mounted on the events folder): alerting goes on and every
alert is delivered; the media failures are logged and counted in zsad_media_errors_total."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.run_world import ALWAYS_ON, make_app, read_jsonl, site_config

pytest.importorskip("gi")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/out/events`` on a 64 KiB tmpfs (needs root and mount permission, else skipped)."""
    events = tmp_path / "out" / "events"
    events.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(events)], capture_output=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield events
    finally:
        subprocess.run(["umount", "-l", str(events)], capture_output=True, check=False)


def test_full_media_disk_never_stops_alerting(
    world: dict[str, Path],
    tiny_disk: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> None:
    caplog.set_level(logging.INFO)
    videos = world["videos"]
    cameras = [
        {"id": f"cam{i}", "uri": f"file://{videos / name}"}
        for i, name in enumerate(["campus_000.mp4", "parking_000.mp4"] * 2)
    ]
    out = tmp_path / "out"
    app = make_app(site_config(world, out, cameras, ALWAYS_ON, ui={"enabled": False}), realtime=False)
    app.start()
    try:
        app.wait(duration_s=60)
    finally:
        left = app.shutdown()
    assert left == {name: 0 for name in left}
    # Every camera's alert is in the sink: opened, then closed at shutdown.
    records = read_jsonl(out / "alerts.jsonl")
    per_camera = {
        c["id"]: [(r["status"], r["reason"]) for r in records if r["camera"] == c["id"]] for c in cameras
    }
    assert per_camera == {c["id"]: [("open", None), ("closed", "shutdown")] for c in cameras}
    # The disk filled up: failures counted per camera and logged (once per camera and failure streak).
    errors = {c["id"]: app.metrics.media_errors.value(camera=c["id"]) for c in cameras}
    record_property("media_errors", errors)
    record_property("alert_records", len(records))
    assert sum(errors.values()) >= 1, errors
    media_errors = [
        r for r in caplog.records if r.name == "pipeline.outputs.media" and r.levelno == logging.ERROR
    ]
    assert media_errors
    assert any("No space left" in r.getMessage() for r in media_errors)
    assert "zsad_media_errors_total{camera=" in app.metrics.render()
    # Nothing half-written is left behind on the full disk.
    assert not [p for p in tiny_disk.rglob(".*.part")]


def test_clip_that_fills_the_disk_fails_fast_and_leaves_nothing(tiny_disk: Path, tmp_path: Path) -> None:
    """Noise frames fill 64 KiB within a few frames. The encoder stops on the write error; the writer
    must notice (a blocking push would wait forever on a stopped encoder), count it and delete its part."""
    import time

    import numpy as np

    from core.config import MediaConfig
    from pipeline.outputs.media import EventRecorder

    rng = np.random.default_rng(0)
    for k in range(5):  # the hang depended on timing (about 2 in 3): five clips catch it
        rec = EventRecorder(f"cam{k}", tmp_path / "out", MediaConfig(snapshots=False), fps=10.0)
        rec.open_event(f"a{k}", start_pts=0.0)
        for i in range(60):
            rec.add_frame(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), i / 10)  # as fast as it goes
        t0 = time.monotonic()
        rec.close(timeout=20.0)
        assert time.monotonic() - t0 < 10.0, f"clip {k} did not finish"
        assert rec.errors >= 1
        assert not list(tiny_disk.rglob(".*.part"))
        assert not list(tiny_disk.rglob("*.mp4"))
