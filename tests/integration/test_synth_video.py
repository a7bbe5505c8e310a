"""``zsad synth`` end to end with real GStreamer: MP4s decode to the labelled frame count and size,
labels and masks match, and a second run with the same seed is byte-identical."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

FRAMES, WIDTH, HEIGHT = 60, 160, 120


def gst() -> Any:
    pytest.importorskip("gi")
    from core.gst import init_gstreamer, missing_elements

    missing = missing_elements(("x264enc", "mp4mux", "qtdemux", "h264parse", "avdec_h264"))
    if missing:
        pytest.skip(f"needs GStreamer {missing[0]}")
    return init_gstreamer()


def decode_mp4(path: Path) -> tuple[list[np.ndarray], str]:
    """Decode with GStreamer: ``(frames, each (H, W, 3) uint8 RGB; the stream's caps)``."""
    g = gst()
    pipeline = g.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! '
        "video/x-raw,format=RGB ! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(g.State.PLAYING)
    frames: list[np.ndarray] = []
    caps = ""
    try:
        while True:
            sample = sink.emit("try-pull-sample", 10 * g.SECOND)
            if sample is None:
                break
            structure = sample.get_caps().get_structure(0)
            w, h = structure.get_value("width"), structure.get_value("height")
            caps = sample.get_caps().to_string()
            buf = sample.get_buffer()
            ok, info = buf.map(g.MapFlags.READ)
            assert ok
            try:
                stride = len(info.data) // h
                rows = np.frombuffer(info.data, dtype=np.uint8).reshape(h, stride)
                frames.append(rows[:, : w * 3].reshape(h, w, 3).copy())
            finally:
                buf.unmap(info)
        msg = pipeline.get_bus().pop_filtered(g.MessageType.ERROR)
        assert msg is None, msg.parse_error()[0].message if msg else ""
    finally:
        pipeline.set_state(g.State.NULL)
    return frames, caps


def run_cli(out: Path, seed: int) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pipeline.cli.main", "synth", "--out", str(out), "--seed", str(seed)]
    argv += ["--train-per-context", "1", "--test-per-context", "1", "--frames", str(FRAMES)]
    argv += ["--width", str(WIDTH), "--height", str(HEIGHT), "--fps", "25"]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def tree_digest(root: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
    }


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    gst()
    base = tmp_path_factory.mktemp("synth")
    first, second = base / "a", base / "b"
    for out in (first, second):
        result = run_cli(out, seed=3)
        assert result.returncode == 0, result.stderr
        assert "wrote 3 training clips" in result.stdout
    return first, second


def test_videos_decode_to_the_labelled_frame_count_and_size(synth_runs: tuple[Path, Path]) -> None:
    out, _ = synth_runs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frame_size_hw"] == [HEIGHT, WIDTH]
    assert manifest["fps"] == 25
    labels = json.loads((out / "testing" / "labels" / "frame_labels.json").read_text())
    videos = 0
    for split, clips in manifest["counts"].items():
        assert len(clips) == 3
        for clip, n in clips.items():
            assert n == FRAMES
            frames, caps = decode_mp4(out / split / "videos" / f"{clip}.mp4")
            videos += 1
            assert len(frames) == n, caps
            assert frames[0].shape == (HEIGHT, WIDTH, 3)
            # The video shows the same pictures as the JPEG frames (both lossy, so loosely).
            for t in (0, n // 2, n - 1):
                with Image.open(out / split / "frames" / clip / f"{t + 1:03d}.jpg") as im:
                    jpeg = np.asarray(im, dtype=np.int16)
                assert np.abs(frames[t].astype(np.int16) - jpeg).mean() < 6.0
            if split == "testing":
                assert len(labels[clip]) == n
                masks = sorted((out / "testing" / "masks" / clip).glob("*.png"))
                assert len(masks) == n
                for value, png in zip(labels[clip], masks, strict=True):
                    with Image.open(png) as im:
                        assert im.size == (WIDTH, HEIGHT)
                        assert bool(np.asarray(im).any()) == bool(value)
                assert sum(labels[clip]) > 0
    assert videos == 6


def test_same_seed_gives_identical_labels_and_frames(synth_runs: tuple[Path, Path]) -> None:
    first, second = synth_runs
    a_labels = (first / "testing" / "labels" / "frame_labels.json").read_text()
    assert a_labels == (second / "testing" / "labels" / "frame_labels.json").read_text()
    a_jpegs = tree_digest(first, "*.jpg")
    assert len(a_jpegs) == 6 * FRAMES
    assert a_jpegs == tree_digest(second, "*.jpg")
    assert tree_digest(first, "*.png") == tree_digest(second, "*.png")
    a_manifest = json.loads((first / "manifest.json").read_text())
    assert a_manifest["events"] == json.loads((second / "manifest.json").read_text())["events"]


def test_mp4_writer_rejects_wrong_frames(tmp_path: Path) -> None:
    gst()
    from synth.writer import VideoEncodeError, open_video, video_errors

    with pytest.raises(VideoEncodeError, match="even frame size"):
        open_video(tmp_path / "odd.mp4", 161, 120, 25)
    path = tmp_path / "partial.mp4"

    def write_bad_clip() -> None:
        with video_errors(path), open_video(path, 64, 48, 25) as writer:
            writer.write(np.zeros((48, 64, 3), dtype=np.uint8))
            writer.write(np.zeros((10, 10, 3), dtype=np.uint8))

    with pytest.raises(VideoEncodeError, match="must be"):
        write_bad_clip()
    assert not path.exists()  # aborted writes leave no half file
