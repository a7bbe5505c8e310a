"""Damaged files next to good ones through the whole application: the bad cameras are reported, the good
ones are scored in full, and a camera whose resolution changes mid-stream goes on at the model size."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.fixtures.rtsp_server import make_test_video
from tests.fixtures.run_world import make_app, read_jsonl, site_config
from tests.reliability.media_faults import concat_files, corrupt_header_copy, remux_faststart, truncate_copy

pytest.importorskip("gi")


@pytest.fixture(scope="module")
def bad_files(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-files")
    campus = world["videos"] / "campus_000.mp4"
    fast = remux_faststart(campus, d / "faststart.mp4")
    small = make_test_video(d / "small.ts", frames=40, width=160, height=120, fps=10)
    large = make_test_video(d / "large.ts", frames=40, width=320, height=240, fps=10)
    return {
        # The index (moov) is at the end of the synthetic MP4s: half a file has no playable stream.
        "truncated": truncate_copy(campus, d / "truncated.mp4"),
        # Index first (as streaming recorders write): half a file plays up to the cut, then ends.
        "truncated-faststart": truncate_copy(fast, d / "truncated-faststart.mp4"),
        "corrupt-header": corrupt_header_copy(campus, d / "corrupt-header.mp4"),
        # 160x120 then 320x240 in one MPEG-TS stream: the decoder renegotiates caps mid-stream.
        "resolution-change": concat_files([small, large], d / "resolution-change.ts"),
    }


def test_damaged_files_fail_alone_and_a_size_change_is_scaled(
    world: dict[str, Path], bad_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    videos = world["videos"]
    cameras = [
        {"id": "campus", "uri": f"file://{videos / 'campus_000.mp4'}", "context": "campus"},
        {"id": "parking", "uri": f"file://{videos / 'parking_000.mp4'}", "context": "parking"},
    ] + [{"id": cid, "uri": f"file://{path}"} for cid, path in bad_files.items()]
    out = tmp_path / "out"
    app = make_app(site_config(world, out, cameras, ui={"enabled": False}), realtime=False)
    app.start()
    try:
        app.wait(duration_s=60)
        stats = app.graph.stats()
        sched = app.scheduler.stats()
    finally:
        app.shutdown()

    states = {cid: s.state for cid, s in stats.items()}
    assert states == {
        "campus": "eos",
        "parking": "eos",
        "truncated": "failed",
        "truncated-faststart": "eos",
        "corrupt-header": "failed",
        "resolution-change": "eos",
    }
    # Each failure is reported with a reason: in the camera state, the log and the state metric.
    assert "no playable streams" in stats["truncated"].detail
    assert "type of stream" in stats["corrupt-header"].detail
    for cid in ("truncated", "corrupt-header"):
        assert app.metrics.camera_state.value(camera=cid, state="failed") == 1
        assert any(f"camera {cid}" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)

    # The good cameras are untouched: every frame delivered, every clip scored, nothing dropped.
    for cid in ("campus", "parking"):
        assert stats[cid].frames_delivered == 80
        assert sched.cameras[cid].dropped == 0
        assert sched.cameras[cid].processed == sched.cameras[cid].submitted
    # Half the faststart file plays, then ends like a file (not a failure).
    assert 30 <= stats["truncated-faststart"].frames_delivered <= 45
    # Both halves of the size-changing stream reach the model, scaled to the model size: a frame of another
    # size would fail its clip (FrameShapeError in the scorer), counted as a result error or failed batch.
    assert stats["resolution-change"].frames_delivered == 80
    assert sched.result_errors == 0
    assert sched.failed_batches == 0
    scores = read_jsonl(out / "scores.jsonl")
    per_camera = {cid: sum(s["camera"] == cid for s in scores) for cid in states}
    assert per_camera["truncated"] == per_camera["corrupt-header"] == 0
    assert per_camera["campus"] == per_camera["parking"] == per_camera["resolution-change"] >= 15
    assert per_camera["truncated-faststart"] >= 5
