"""Sixteen cameras started at once all go live and keep delivering, start after start.

This once failed now and then on the 2-core VM (2 of 7 real-time benchmark runs of 16 cameras when issue
17 was filed; 1 in 130 decode-only starts of 32 when it was traced): the first frames of many cameras,
read at the same moment on their streaming threads, raced in PyGObject and left two ``Gst.MapInfo``
classes, after which every frame of the process failed to unmap and no camera ever went live
(docs/benchmarks.md, "Camera start-up"); the race itself is tested head-on in test_gst_toolkit.py. It
could only happen on a process's first frames, so each start runs in a new interpreter
(tests/reliability/many_cameras.py). The assertion is about every camera going live and delivering, never
about how fast: the deadline is generous for a loaded CI machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures.rtsp_server import make_test_video

pytest.importorskip("gi")

CAMERAS = 16
STARTS = 3


@pytest.fixture(scope="module")
def loop_videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("many-cameras")
    return [make_test_video(d / f"v{i}.mp4", frames=25, width=160, height=120) for i in range(4)]


def test_sixteen_cameras_started_together_all_go_live_every_start(loop_videos: list[Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "tests.reliability.many_cameras",
        "--cameras",
        str(CAMERAS),
        "--deadline",
        "30",
        *map(str, loop_videos),
    ]
    for start in range(STARTS):
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["not_live"] == {}, f"start {start + 1}: {result}\n{proc.stderr[-2000:]}"
        assert len(result["live"]) == CAMERAS
        assert all(n >= 3 for n in result["frames"].values()), result["frames"]
        assert result["error_records"] == 0, result["first_error"]
