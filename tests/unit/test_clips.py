"""Clip assembly: indices, stride, hop, pts, memory bound and the model-input layout."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.config import PreprocessConfig
from pipeline.clips import Clip, ClipAssembler, ClipRing, FrameShapeError, to_model_input


def _frame(n: int, h: int = 4, w: int = 6) -> np.ndarray:
    """A frame whose every pixel holds ``n % 256`` so the frame number can be read back."""
    return np.full((h, w, 3), n % 256, dtype=np.uint8)


def _feed(ring: ClipRing, count: int) -> list[Clip]:
    clips = []
    for n in range(count):
        clip = ring.push(n * 0.1, _frame(n))
        if clip is not None:
            clips.append(clip)
    return clips


@pytest.mark.parametrize(
    ("t", "stride", "hop"),
    [(4, 2, 4), (4, 1, 1), (3, 3, 2), (2, 1, 5), (8, 2, 16), (1, 1, 1)],
)
def test_clips_hold_strided_frames_at_hop_starts(t: int, stride: int, hop: int) -> None:
    ring = ClipRing("cam", t, stride, hop)
    total = 60
    clips = _feed(ring, total)
    span = (t - 1) * stride + 1
    expected_starts = list(range(0, total - span + 1, hop))
    assert [c.start_frame for c in clips] == expected_starts
    assert [c.index for c in clips] == list(range(len(expected_starts)))
    for clip in clips:
        want = [clip.start_frame + j * stride for j in range(t)]
        assert clip.frames.shape == (t, 4, 6, 3)
        assert clip.frames.dtype == np.uint8
        assert [int(f[0, 0, 0]) for f in clip.frames] == want
        assert np.allclose(clip.pts, [n * 0.1 for n in want])
        assert clip.start_pts == pytest.approx(want[0] * 0.1)
        assert clip.end_pts == pytest.approx(want[-1] * 0.1)
        assert clip.camera_id == "cam"


def test_ring_memory_is_bounded_to_one_clip_span() -> None:
    ring = ClipRing("cam", 4, 3, 2)
    for n in range(500):
        ring.push(float(n), _frame(n))
        assert ring.buffered <= (4 - 1) * 3 + 1
    assert ring.buffered == 10
    assert ring.frames_seen == 500


def test_clip_frames_are_independent_copies() -> None:
    ring = ClipRing("cam", 2, 1, 1)
    f0, f1 = _frame(1), _frame(2)
    ring.push(0.0, f0)
    clip = ring.push(0.1, f1)
    assert clip is not None
    f0[:] = 99  # the producer reusing its buffer must not change an emitted clip
    assert int(clip.frames[0, 0, 0, 0]) == 1
    assert clip.frames.flags.c_contiguous


def test_reset_restarts_the_hop_grid_without_reusing_indices() -> None:
    ring = ClipRing("cam", 3, 1, 3)
    first = _feed(ring, 7)  # starts 0, 3 (frames 0..2, 3..5); frame 6 buffered
    assert [c.start_frame for c in first] == [0, 3]
    ring.reset()
    assert ring.buffered == 0
    later = []
    for n in range(7, 16):
        clip = ring.push(float(n), _frame(n))
        if clip is not None:
            later.append(clip)
    # After the gap no clip mixes frames from before the reset; the grid restarts at frame 7.
    assert [c.start_frame for c in later] == [7, 10, 13]
    assert [c.index for c in later] == [2, 3, 4]


def test_bad_frames_are_refused() -> None:
    ring = ClipRing("cam", 2, 1, 1)
    with pytest.raises(FrameShapeError):
        ring.push(0.0, np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(FrameShapeError):
        ring.push(0.0, np.zeros((4, 6, 3), dtype=np.float32))
    ring.push(0.0, _frame(0))
    with pytest.raises(FrameShapeError, match="differs"):
        ring.push(0.1, _frame(1, h=5))


@pytest.mark.parametrize("bad", [{"clip_len": 0}, {"frame_stride": 0}, {"clip_hop": -1}])
def test_bad_parameters_are_refused(bad: dict[str, int]) -> None:
    kwargs = {"clip_len": 4, "frame_stride": 2, "clip_hop": 4} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        ClipRing("cam", **kwargs)


def test_assembler_keeps_cameras_apart_and_is_thread_safe() -> None:
    asm = ClipAssembler.from_config(PreprocessConfig(clip_len=4, frame_stride=2, clip_hop=4))
    out: dict[str, list[Clip]] = {"a": [], "b": [], "c": []}

    def produce(cid: str, base: int) -> None:
        for n in range(101):
            clip = asm.push(cid, n / 25, _frame(base + n))
            if clip is not None:
                out[cid].append(clip)

    threads = [threading.Thread(target=produce, args=(cid, i * 50)) for i, cid in enumerate(out)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i, (cid, clips) in enumerate(out.items()):
        # span 7: starts 0, 4, ..., 92 -> 24 clips
        assert len(clips) == 24
        assert [c.index for c in clips] == list(range(24))
        assert all(c.camera_id == cid for c in clips)
        assert int(clips[-1].frames[-1, 0, 0, 0]) == (i * 50 + 98) % 256
    assert max(asm.buffered().values()) <= 7
    asm.remove("a")
    assert "a" not in asm.buffered()


def test_model_input_layout_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    clips = []
    for i in range(3):
        frames = rng.integers(0, 256, size=(4, 5, 7, 3), dtype=np.uint8)
        clips.append(Clip("cam", i, frames, np.arange(4, dtype=np.float64), 0))
    mean = (0.4, 0.5, 0.6)
    std = (0.2, 0.25, 0.3)
    x = to_model_input(clips, mean, std)
    assert x.shape == (3, 4, 3, 5, 7)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    # Pixel (n=1, t=2, y=3, x=4), each channel c: (v/255 - mean[c]) / std[c].
    for c in range(3):
        v = clips[1].frames[2, 3, 4, c]
        assert x[1, 2, c, 3, 4] == pytest.approx((v / 255 - mean[c]) / std[c], rel=1e-5, abs=1e-5)
    ref = (np.stack([c.frames for c in clips]).astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(x, ref.transpose(0, 1, 4, 2, 3), rtol=1e-5, atol=1e-5)


def test_model_input_checks() -> None:
    good = Clip("cam", 0, np.zeros((2, 3, 3, 3), np.uint8), np.zeros(2), 0)
    other = Clip("cam", 1, np.zeros((2, 4, 3, 3), np.uint8), np.zeros(2), 0)
    with pytest.raises(ValueError, match="at least one"):
        to_model_input([], (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(FrameShapeError):
        to_model_input([good, other], (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="std"):
        to_model_input([good], (0.5,) * 3, (0.5, 0.0, 0.5))
    out = np.zeros((1, 2, 3, 3, 3), np.float32)
    assert to_model_input([good], (0.5,) * 3, (0.5,) * 3, out=out) is out
    assert np.all(out == -1.0)


@pytest.mark.parametrize(
    ("t", "stride", "hop"),
    [(4, 2, 8), (4, 2, 4), (4, 2, 6), (3, 3, 2), (2, 1, 5), (8, 2, 16), (1, 1, 1)],
)
def test_frames_no_clip_holds_can_go_unread_and_every_clip_stays_the_same(
    t: int, stride: int, hop: int
) -> None:
    every, sparse = ClipRing("cam", t, stride, hop), ClipRing("cam", t, stride, hop)
    from_every, from_sparse = [], []
    read = 0
    for n in range(90):
        if n == 41:  # a reconnect: the hop grid restarts at the next frame in both
            every.reset()
            sparse.reset()
        wanted = sparse.wants_next()
        read += wanted
        a = every.push(n * 0.1, _frame(n))
        b = sparse.push(n * 0.1, _frame(n) if wanted else None)
        from_every += [a] if a is not None else []
        from_sparse += [b] if b is not None else []
    assert len(from_every) > 3
    assert [(c.index, c.start_frame) for c in from_sparse] == [(c.index, c.start_frame) for c in from_every]
    for a, b in zip(from_every, from_sparse, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.pts, b.pts)
    assert sparse.frames_seen == every.frames_seen == 90
    # Frames a clip holds are read, and no others.
    held = {c.start_frame + j * stride for c in from_every for j in range(t)}
    assert read >= len(held)
    if (t, stride, hop) == (4, 2, 8):
        assert read == 21 + 25  # every second frame: 0, 2, ..., 40, then from the reset 41, 43, ..., 89


def test_a_wanted_frame_that_comes_unread_starts_a_new_segment_after_it() -> None:
    # Asked, then the ring was reset by a reconnect before the frame arrived: it comes as None although the
    # restarted grid needs it. No clip may hold it; the next clip starts after it.
    ring = ClipRing("cam", 4, 2, 8)
    clips = []
    for n in range(30):
        frame = None if n == 4 else (_frame(n) if ring.wants_next() else None)
        clip = ring.push(n * 0.1, frame)
        clips += [clip] if clip is not None else []
    assert [c.start_frame for c in clips] == [5, 13, 21]
    assert [int(f[0, 0, 0]) for f in clips[0].frames] == [5, 7, 9, 11]


def test_the_assembler_says_which_frames_it_will_read() -> None:
    asm = ClipAssembler(4, 2, 8)
    pattern = []
    for n in range(10):
        wanted = asm.wants_next("cam")
        pattern.append(wanted)
        asm.push("cam", n * 0.1, _frame(n) if wanted else None)
    assert pattern == [True, False] * 5
    assert asm.wants_next("other")  # a camera's first frame is always read
    asm.remove("cam")
    assert asm.wants_next("cam")
    assert "cam" not in asm.buffered()  # asking gave a removed camera no ring back


def test_clips_assembled_before_a_camera_was_removed_are_stale_for_its_return() -> None:
    """A reload restarts a camera (removed, then added under the same id) while a batch of its old stream
    is being scored: those results must not reach the new camera (pipeline.run drops them)."""
    import time
    from typing import Any, cast

    from core.config import SchedulerConfig
    from pipeline.clip_path import ClipPath

    path = ClipPath(
        cast(Any, None),  # inference: not called here
        ClipAssembler(2, 1, 1),
        lambda clip, result: None,
        scheduler=SchedulerConfig(),
        block=True,
    )
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    pts = np.array([0.0, 0.1])

    def clip(camera: str) -> Clip:
        return Clip(camera, 0, frames, pts, 0, created_s=time.monotonic())

    before, other = clip("gate"), clip("lobby")
    assert not path.is_stale(before)
    path.forget("gate")
    after = clip("gate")
    assert path.is_stale(before)
    assert not path.is_stale(after)
    assert not path.is_stale(other)


def test_the_clip_path_blocks_per_camera_when_told_so() -> None:
    """A --fast run of files beside a live camera: the files wait for room in the scheduler (no clip lost);
    the live camera never does (its server would drop the session), as the docs say of live cameras."""
    from typing import Any, cast

    from core.config import SchedulerConfig
    from pipeline.clip_path import ClipPath

    path = ClipPath(
        cast(Any, None),
        ClipAssembler(1, 1, 1),
        lambda clip, result: None,
        scheduler=SchedulerConfig(),
        block=lambda camera: camera == "file-cam",
    )
    seen: list[tuple[str, bool]] = []
    path.scheduler.submit = lambda clip, block=False: seen.append((clip.camera_id, block)) or True  # type: ignore[method-assign]
    frame = np.zeros((4, 4, 3), np.uint8)
    assert path.push("file-cam", 0.0, frame)
    assert path.push("rtsp-cam", 0.0, frame)
    assert seen == [("file-cam", True), ("rtsp-cam", False)]
    every = ClipPath(
        cast(Any, None), ClipAssembler(1, 1, 1), lambda c, r: None, scheduler=SchedulerConfig(), block=True
    )
    every.scheduler.submit = lambda clip, block=False: seen.append((clip.camera_id, block)) or True  # type: ignore[method-assign]
    every.push("x", 0.0, frame)
    assert seen[-1] == ("x", True)
