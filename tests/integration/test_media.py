"""Event media with real GStreamer and Pillow: a decodable MP4 of the right length, the peak JPEG,
retention, path sanitising, and failures that never raise."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.config import MediaConfig
from core.gst import init_gstreamer
from core.gst.frames import FrameError
from pipeline.cpu.sources import SampleFrame
from pipeline.outputs.heatmap import PeakEvidence
from pipeline.outputs.media import EventMedia, EventRecorder, safe_component
from pipeline.outputs.metrics import ZsadMetrics
from plugins.zones import locate_peak

gi = pytest.importorskip("gi")


def _decode(path: Path) -> tuple[int, int, int]:
    """Decode an MP4 with GStreamer; return (frames, width, height)."""
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! '
        "video/x-raw,format=RGB ! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames, width, height = 0, 0, 0
    try:
        while True:
            sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
            if sample is None:
                break
            s = sample.get_caps().get_structure(0)
            width, height = s.get_value("width"), s.get_value("height")
            frames += 1
        msg = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        assert msg is None, msg.parse_error() if msg else None
    finally:
        pipeline.set_state(Gst.State.NULL)
    return frames, width, height


def _frame(i: int, h: int = 96, w: int = 131) -> np.ndarray:
    """A flat frame whose colour encodes its index (odd width on purpose: clips crop to even)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (i * 4) % 256
    img[..., 1] = 255 - (i * 4) % 256
    img[..., 2] = 80
    return img


def test_clip_and_snapshot_of_an_alert(tmp_path: Path) -> None:
    metrics = ZsadMetrics()
    rec = EventRecorder("cam-1", tmp_path, MediaConfig(pre_s=1.0, post_s=1.0), fps=10.0, metrics=metrics)
    media = None
    for i in range(60):
        pts = i / 10.0
        rec.add_frame(_frame(i), pts)
        if i == 20:  # alert opens at 2.0 s
            media = rec.open_event("a1b2", start_pts=2.0, peak_pts=2.0)
        if i == 30:  # peak at 2.5 s (frame 25), closes at 3.0 s
            rec.update_peak("a1b2", peak_pts=2.5)
            end = rec.close_event("a1b2", end_pts=3.0)
            assert end == media
    assert media is not None
    assert media.snapshot == "events/cam-1/a1b2.jpg"
    assert media.clip == "events/cam-1/a1b2.mp4"
    assert rec.wait_idle(30)
    rec.close()
    clip = tmp_path / media.clip
    assert clip.is_file()
    frames, width, height = _decode(clip)
    # [start - pre_s, end + post_s] = [1.0, 4.0] s at 10 fps: 31 frames.
    assert abs(frames - 31) <= 2
    assert (width, height) == (130, 96)  # 131 cropped to even for 4:2:0
    jpg = Image.open(tmp_path / media.snapshot)
    assert jpg.size == (131, 96)
    pixel = np.asarray(jpg)[48, 65].astype(int)
    expected = _frame(25)[0, 0].astype(int)
    assert np.abs(pixel - expected).max() <= 6, (pixel, expected)
    assert not list((tmp_path / "events" / "cam-1").glob(".*"))  # no leftover temp files
    assert metrics.media_errors.value(camera="cam-1") == 0


def test_close_finishes_open_clip_and_retention_deletes_oldest(tmp_path: Path) -> None:
    cfg = MediaConfig(pre_s=0.2, post_s=0.2, max_events_per_camera=2)
    rec = EventRecorder("cam", tmp_path, cfg, fps=10.0)
    pts = 0.0
    for k in range(3):
        for _ in range(3):
            rec.add_frame(_frame(k, 32, 32), pts)
            pts += 0.1
        rec.open_event(f"ev{k}", start_pts=pts - 0.1)
        for _ in range(3):
            rec.add_frame(_frame(k, 32, 32), pts)
            pts += 0.1
        rec.close_event(f"ev{k}", end_pts=pts - 0.1)
        for _ in range(4):  # post-roll ends: the clip is finalised
            rec.add_frame(_frame(k, 32, 32), pts)
            pts += 0.1
        assert rec.wait_idle(30)
    rec.open_event("ev3", start_pts=pts)  # still open at shutdown: finished by close()
    rec.add_frame(_frame(9, 32, 32), pts + 0.1)
    rec.close(30)
    names = sorted(p.name for p in (tmp_path / "events" / "cam").iterdir())
    # Newest two kept (ev2 and ev3); ev0 and ev1 deleted when ev2 and ev3 opened.
    assert names == ["ev2.jpg", "ev2.mp4", "ev3.jpg", "ev3.mp4"]
    frames, _, _ = _decode(tmp_path / "events" / "cam" / "ev3.mp4")
    assert frames >= 1


def _peak_evidence(t: float) -> PeakEvidence:
    e = np.zeros((3, 4))
    e[1, 2] = 4.0
    location = locate_peak(e)
    assert location is not None
    return PeakEvidence(t, e, location)


def test_heatmaps_are_written_beside_snapshots_and_retained_with_them(tmp_path: Path) -> None:
    rec = EventRecorder("cam", tmp_path, MediaConfig(clips=False, max_events_per_camera=2), fps=10.0)
    folder = tmp_path / "events" / "cam"
    for k in range(3):
        rec.add_frame(_frame(k, 48, 64), k * 1.0)
        media = rec.open_event(f"ev{k}", start_pts=k * 1.0, peak_evidence=_peak_evidence(k * 1.0))
        assert media == EventMedia(f"events/cam/ev{k}.jpg", None, f"events/cam/ev{k}.heatmap.jpg")
        assert rec.wait_idle(30)  # retention counts the events at open, this one included
        rec.close_event(f"ev{k}", end_pts=k * 1.0 + 0.5)
        with Image.open(folder / f"ev{k}.heatmap.jpg") as img:
            assert img.size == (64, 48)
    # Each opening deleted the oldest event with its heatmap: an event is its stem's files, dots and all.
    rec.add_frame(_frame(3, 48, 64), 4.0)
    rec.open_event("ev3", start_pts=4.0)  # no evidence: a snapshot only
    assert rec.wait_idle(30)
    rec.close(30)
    assert sorted(p.name for p in folder.iterdir()) == [
        "ev2.heatmap.jpg",
        "ev2.jpg",
        "ev3.jpg",
    ]


def test_a_clip_thread_that_cannot_start_costs_only_the_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.outputs import media

    def refuse(_self: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(media._ClipWriter, "start", refuse)
    metrics = ZsadMetrics()
    rec = EventRecorder("cam", tmp_path, MediaConfig(), fps=10.0, metrics=metrics)
    rec.add_frame(_frame(0, 32, 32), 0.0)
    got = rec.open_event("ev", start_pts=0.0)
    assert got.clip is None
    assert got.snapshot == "events/cam/ev.jpg"
    assert metrics.media_errors.value(camera="cam") == 1
    rec.close_event("ev", end_pts=0.1)
    rec.close(5)  # nothing half-started to join
    assert (tmp_path / "events" / "cam" / "ev.jpg").is_file()


def _colour_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)[8, 8].astype(int)


def test_a_snapshot_whose_frame_comes_after_the_alert_is_written_from_it(tmp_path: Path) -> None:
    """The CPU graph delivers event-media frames on their own thread, so the first scored clip can open
    an alert before any frame of its time is buffered: the snapshot (and heatmap) waits for the peak's
    frame instead of being promised in the record and never written."""
    folder = tmp_path / "events" / "cam"
    rec = EventRecorder("cam", tmp_path, MediaConfig(clips=False), fps=10.0)
    media = rec.open_event("late", start_pts=0.8, peak_pts=1.0, peak_evidence=_peak_evidence(1.0))
    assert media == EventMedia("events/cam/late.jpg", None, "events/cam/late.heatmap.jpg")
    rec.add_frame(_frame(9, 32, 32), 0.9)  # before the peak: still waiting for the peak's own frame
    assert rec.wait_idle(10)
    assert not (folder / "late.jpg").exists()
    rec.add_frame(_frame(10, 32, 32), 1.0)
    rec.add_frame(_frame(11, 32, 32), 1.1)
    assert rec.wait_idle(10)
    assert np.abs(_colour_of(folder / "late.jpg") - _frame(10)[0, 0]).max() <= 6
    assert (folder / "late.heatmap.jpg").is_file()
    # A newer peak with no frame yet waits too; when the stream ends first, close() writes the nearest.
    rec.update_peak("late", peak_pts=1.5)
    rec.add_frame(_frame(12, 32, 32), 1.2)
    rec.close_event("late", end_pts=1.5)
    rec.close(10)
    assert np.abs(_colour_of(folder / "late.jpg") - _frame(12)[0, 0]).max() <= 6
    assert not (folder / "late.heatmap.jpg").exists()  # the new peak has no evidence map


def test_a_snapshot_no_frame_ever_came_for_is_reported_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = EventRecorder("cam-z", tmp_path, MediaConfig(clips=False), fps=10.0)
    rec.open_event("never", start_pts=0.0, peak_pts=0.0)
    rec.close_event("never", end_pts=0.5)
    with caplog.at_level(logging.WARNING, logger="pipeline.outputs.media"):
        rec.close(10)
    assert any(
        "no frame came for the snapshot" in r.getMessage() and "never" in r.getMessage()
        for r in caplog.records
    )
    assert not (tmp_path / "events" / "cam-z" / "never.jpg").exists()


def test_half_written_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    events = tmp_path / "events" / "cam"
    events.mkdir(parents=True)
    (events / ".dead.mp4.part").write_bytes(b"x" * 100)
    (events / ".dead.jpg.part").write_bytes(b"x")
    (events / "kept.jpg").write_bytes(b"x")
    long_ago = time.time() - 3600
    for name in (".dead.mp4.part", ".dead.jpg.part"):
        os.utime(events / name, (long_ago, long_ago))
    (events / ".recent.mp4.part").write_bytes(b"x")  # maybe a replaced recorder's writer, still finishing
    rec = EventRecorder("cam", tmp_path, MediaConfig(), fps=10.0, clip_timeout_s=1.0)
    assert sorted(p.name for p in events.iterdir()) == [".recent.mp4.part", "kept.jpg"]
    # Once it has been silent past the clip timeout, the next event's retention pass removes it.
    os.utime(events / ".recent.mp4.part", (long_ago, long_ago))
    rec.add_frame(_frame(0, 32, 32), 0.0)
    rec.open_event("ev", start_pts=0.0)
    assert rec.wait_idle(10)
    assert not (events / ".recent.mp4.part").exists()
    rec.close(10)
    assert "kept.jpg" in {p.name for p in events.iterdir()}


@pytest.mark.parametrize(
    ("camera", "alert_id"),
    [("../../etc", "../../passwd"), ("..", ".."), ("a/b", "/abs/x"), ("cam", "..\\..\\win")],
)
def test_event_paths_never_escape_the_output_folder(tmp_path: Path, camera: str, alert_id: str) -> None:
    out = tmp_path / "out"
    rec = EventRecorder(camera, out, MediaConfig(clips=False), fps=5.0)
    rec.add_frame(_frame(1, 16, 16), 0.0)
    media = rec.open_event(alert_id, 0.0)
    assert rec.wait_idle(10)
    rec.close()
    assert media.snapshot is not None
    assert ".." not in media.snapshot.split("/")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1
    assert out.resolve() in written[0].resolve().parents


def test_an_events_folder_linked_to_another_disk_is_written_through(tmp_path: Path) -> None:
    """events/ as a symlink to a bigger disk: resolving it placed every event outside the output folder,
    and all media were refused (MediaPathError)."""
    out = tmp_path / "out"
    out.mkdir()
    bigger = tmp_path / "bigger-disk" / "zsad-events"
    bigger.mkdir(parents=True)
    (out / "events").symlink_to(bigger, target_is_directory=True)
    metrics = ZsadMetrics()
    rec = EventRecorder("cam", out, MediaConfig(clips=False), fps=10.0, metrics=metrics)
    rec.add_frame(_frame(1, 16, 16), 0.0)
    media = rec.open_event("e", 0.0, peak_pts=0.0)
    assert rec.wait_idle(10)
    rec.close()
    assert media.snapshot == "events/cam/e.jpg"
    assert (bigger / "cam" / "e.jpg").is_file()
    assert metrics.media_errors.value(camera="cam") == 0


def test_safe_component() -> None:
    assert safe_component("../x") == "___x"
    assert safe_component("..") == "__"
    assert safe_component("") == "_"
    assert safe_component("cam-1.a_b") == "cam-1.a_b"
    assert safe_component(".hidden") == "_hidden"


def test_unwritable_output_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output folder should be")  # mkdir fails even as root
    metrics = ZsadMetrics()
    rec = EventRecorder("cam-x", blocker / "out", MediaConfig(), fps=10.0, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="pipeline.outputs.media"):
        for i in range(5):
            rec.add_frame(_frame(i, 16, 16), i / 10)
        m1 = rec.open_event("e1", 0.2)
        m2 = rec.open_event("e2", 0.3)
        rec.close_event("e1", 0.4)
        rec.wait_idle(5)
        rec.close()
    assert (m1.snapshot, m1.clip, m2.clip) == (None, None, None)
    assert metrics.media_errors.value(camera="cam-x") == 2
    assert sum("cam-x" in r.getMessage() for r in caplog.records) == 1


def test_failed_snapshot_write_is_counted(tmp_path: Path) -> None:
    metrics = ZsadMetrics()
    rec = EventRecorder("cam-y", tmp_path, MediaConfig(clips=False), fps=10.0, metrics=metrics)
    rec.add_frame(_frame(0, 16, 16), 0.0)
    # The snapshot's final name is taken by a folder: the rename fails on the I/O thread.
    (tmp_path / "events" / "cam-y" / "e.jpg").mkdir(parents=True)
    media = rec.open_event("e", 0.0)
    assert rec.wait_idle(10)
    rec.close()
    assert media.snapshot == "events/cam-y/e.jpg"
    assert metrics.media_errors.value(camera="cam-y") == 1
    assert not list((tmp_path / "events" / "cam-y").glob(".*"))


class _FloatFrame:
    """A lazy frame whose pixels are float RGB, which Pillow refuses with a TypeError: none of the
    failures the snapshot writer expects (OSError, ValueError, RuntimeError), raised mid-write."""

    shape = (16, 16, 3)

    def rgb(self) -> np.ndarray:
        return np.zeros(self.shape, np.float64)


def test_an_unexpected_error_on_the_media_thread_is_reported_and_leaves_no_part_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ZsadMetrics()
    rec = EventRecorder("cam-z", tmp_path, MediaConfig(clips=False), fps=10.0, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="pipeline.outputs.media"):
        media = rec.open_event("e", 0.0, peak_pts=0.0, peak_frame=_FloatFrame())
        assert rec.wait_idle(10)
    rec.close()
    assert media.snapshot == "events/cam-z/e.jpg"
    # Before, the TypeError ended silently in the I/O thread's future: not logged, not counted.
    assert metrics.media_errors.value(camera="cam-z") == 1
    assert "snapshot e.jpg (TypeError) failed" in caplog.text
    folder = tmp_path / "events" / "cam-z"
    assert not (folder / "e.jpg").exists()
    assert not list(folder.glob(".*"))  # its half-written .part removed


class _CountingSampleFrame(SampleFrame):
    """A real :class:`SampleFrame` (a ``Gst.Buffer`` of raw video) that counts how it is read."""

    __slots__ = ("raw_reads", "rgb_reads")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rgb_reads = 0
        self.raw_reads = 0

    def rgb(self) -> np.ndarray:
        self.rgb_reads += 1
        return super().rgb()

    def raw_video(self) -> tuple[Any, str]:
        self.raw_reads += 1
        return super().raw_video()


def _i420_frames(images: list[np.ndarray], colorimetry: str = "bt601") -> list[_CountingSampleFrame]:
    """``images`` converted to I420 by GStreamer's videoconvert, as the display branch delivers them."""
    Gst = init_gstreamer()
    h, w = images[0].shape[:2]
    pipeline = Gst.parse_launch(
        f"appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},framerate=10/1,"
        f"colorimetry=sRGB ! videoconvert ! video/x-raw,format=I420,colorimetry={colorimetry} ! "
        f"appsink name=sink sync=false max-buffers={len(images) + 1}"
    )
    src, sink = pipeline.get_by_name("src"), pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    stride = (w * 3 + 3) & ~3
    try:
        for i, image in enumerate(images):
            rows = np.zeros((h, stride), np.uint8)
            rows[:, : w * 3] = image.reshape(h, w * 3)
            buf = Gst.Buffer.new_wrapped(rows.tobytes())
            buf.pts = i * Gst.SECOND // 10
            src.emit("push-buffer", buf)
        src.emit("end-of-stream")
        frames = []
        for _ in images:
            sample = sink.emit("try-pull-sample", 5 * Gst.SECOND)
            assert sample is not None
            frames.append(_CountingSampleFrame.from_sample(sample))
    finally:
        pipeline.set_state(Gst.State.NULL)
    return frames


def test_i420_frames_are_read_back_as_the_rgb_they_came_from() -> None:
    # Flat colours and a ramp, at an odd size (chroma planes rounded up, rows padded) and an even one.
    for h, w in ((97, 131), (96, 130)):
        ramp = np.zeros((h, w, 3), np.uint8)
        ramp[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        ramp[..., 1] = 120
        ramp[..., 2] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
        images = [_frame(3, h, w), _frame(40, h, w), ramp]
        for colorimetry in ("bt601", "bt709"):
            frames = _i420_frames(images, colorimetry)
            for image, frame in zip(images, frames, strict=True):
                assert frame.format == "I420"
                assert frame.shape == (h, w, 3)
                rgb = frame.rgb()
                assert rgb.shape == (h, w, 3)
                assert rgb.dtype == np.uint8
                error = np.abs(rgb.astype(int) - image.astype(int))
                assert error.mean() < 3, (h, w, colorimetry, error.mean())


def _record(
    rec: EventRecorder, frames: list[Any], opens: dict[int, str], closes: dict[int, str]
) -> dict[str, EventMedia]:
    """Feed ``frames`` at 10 fps; open alert ``opens[i]`` (peak at its start) and close ``closes[i]`` at frame
    ``i``; wait for the files and close the recorder. Returns each alert's media, clip and snapshot set."""
    media: dict[str, EventMedia] = {}
    for i, frame in enumerate(frames):
        rec.add_frame(frame, i / 10.0)
        if i in opens:
            media[opens[i]] = rec.open_event(opens[i], start_pts=i / 10.0, peak_pts=i / 10.0)
        if i in closes:
            rec.close_event(closes[i], end_pts=i / 10.0)
    assert rec.wait_idle(30)
    rec.close()
    for alert_id, m in media.items():
        assert m.clip is not None, alert_id
        assert m.snapshot is not None, alert_id
    return media


def test_lazy_frames_are_read_only_for_the_media_that_uses_them(tmp_path: Path) -> None:
    rec = EventRecorder("cam-lazy", tmp_path, MediaConfig(pre_s=1.0, post_s=1.0), fps=10.0)
    frames = _i420_frames([_frame(i, 96, 130) for i in range(80)])
    media = _record(rec, frames, opens={50: "lazy1"}, closes={55: "lazy1"})["lazy1"]
    assert media.clip is not None
    assert media.snapshot is not None
    # The clip [4.0, 6.5] s (frames 40..65) takes the I420 buffers as they are; only the snapshot (frame
    # 50) is converted to RGB; no other frame is ever read.
    assert [i for i, f in enumerate(frames) if f.raw_reads] == list(range(40, 66))
    assert [i for i, f in enumerate(frames) if f.rgb_reads] == [50]
    n, width, height = _decode(tmp_path / media.clip)
    assert (n, width, height) == (26, 130, 96)
    jpeg = np.asarray(Image.open(tmp_path / media.snapshot))
    assert np.abs(jpeg.astype(int) - _frame(50, 96, 130).astype(int)).mean() < 6


class _UnreadableFrame:
    """A frame whose pixels are gone (what :class:`SampleFrame` raises for a buffer it cannot map)."""

    shape = (96, 130, 3)

    def rgb(self) -> np.ndarray:
        raise FrameError("cannot map a video buffer for reading")


def test_an_unreadable_frame_costs_only_that_frame_of_the_clip(tmp_path: Path) -> None:
    rec = EventRecorder("cam-bad", tmp_path, MediaConfig(pre_s=0.5, post_s=0.5), fps=10.0)
    frames = [_UnreadableFrame() if i == 12 else _frame(i, 96, 130) for i in range(30)]
    media = _record(rec, frames, opens={10: "bad1"}, closes={15: "bad1"})["bad1"]
    assert media.clip is not None
    # [0.5, 2.0] s is 16 frames; the unreadable one is left out and the clip is still complete.
    assert _decode(tmp_path / media.clip)[0] == 15
    assert rec.errors == 0


def test_overlapping_clips_share_frames_without_touching_their_timestamps(tmp_path: Path) -> None:
    # The second alert opens during the first clip's post-roll, so frames 35..50 go into both clips.
    rec = EventRecorder("cam-overlap", tmp_path, MediaConfig(pre_s=1.0, post_s=1.0), fps=10.0)
    frames = _i420_frames([_frame(i, 96, 130) for i in range(80)])
    before = [f.raw_video()[0].pts for f in frames]
    media = _record(rec, frames, opens={30: "first", 45: "second"}, closes={40: "first", 55: "second"})
    first, second = media["first"].clip, media["second"].clip
    assert first is not None
    assert second is not None
    # Each clip set its own timestamps on buffers of its own; the ring's buffers kept theirs.
    assert [f.raw_video()[0].pts for f in frames] == before
    assert _decode(tmp_path / first)[0] == 31  # [2.0, 5.0] s
    assert _decode(tmp_path / second)[0] == 31  # [3.5, 6.5] s
