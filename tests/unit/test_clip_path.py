"""The clip path's history resets: a new stream's clips never follow the old stream's in a camera's history,
whatever the threads' timing, a failed batch or a dropped clip.

The inference is a recorder of ``ClipInference``'s two calls (our own interface, not an external API): what
is checked is the order in which the clip path scores clips and resets histories. The end-to-end cases with
the real inference are in tests/integration/test_run.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.config import SchedulerConfig
from pipeline.clip_path import ClipPath
from pipeline.clips import Clip, ClipAssembler

OLD, NEW = 1, 2  # the pixel value of each stream's frames


class _RecordingInference:
    """Records ``("score", index, stream)`` per clip and ``("reset",)`` per history reset, in order."""

    def __init__(
        self, fail_first: bool = False, gate: Callable[[Sequence[Clip]], None] | None = None
    ) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.calls = 0
        self.fail_first = fail_first
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, clips: Sequence[Clip]) -> list[None]:
        if self.gate is not None:
            self.gate(clips)
        with self.lock:
            self.calls += 1
            if self.fail_first and self.calls == 1:
                raise RuntimeError("a transient engine error")
            self.events += [("score", c.index, int(c.frames[0, 0, 0, 0])) for c in clips]
        return [None] * len(clips)

    def reset(self, camera: str) -> None:
        with self.lock:
            self.events.append(("reset",))

    def streams_after_reset(self) -> list[int]:
        """The stream of each clip scored since the last reset."""
        with self.lock:
            last = max((i for i, e in enumerate(self.events) if e[0] == "reset"), default=-1)
            return [e[2] for e in self.events[last + 1 :] if e[0] == "score"]


def _frame(stream: int) -> np.ndarray:
    return np.full((4, 4, 3), stream, np.uint8)


def _path(inference: _RecordingInference, assembler: ClipAssembler, **scheduler: Any) -> tuple[ClipPath, Any]:
    done = threading.Condition()
    scored: list[Clip] = []

    def on_result(clip: Clip, _result: Any) -> None:
        with done:
            scored.append(clip)
            done.notify_all()

    path = ClipPath(
        inference,  # type: ignore[arg-type]
        assembler,
        on_result,
        scheduler=SchedulerConfig(**scheduler),
        block=False,
    )

    def wait_scored(n: int) -> None:
        with done:
            assert done.wait_for(lambda: len(scored) >= n, 10), f"{len(scored)} of {n} clips scored"

    return path, wait_scored


class _HeldAssembler(ClipAssembler):
    """Holds the clip of ``index`` between its assembly and its return to the clip path (the window in which
    a reconnect's restart can land while the old stream's last frame is still being pushed)."""

    def __init__(self, index: int) -> None:
        super().__init__(2, 1, 2)
        self.index = index
        self.assembled = threading.Event()
        self.release = threading.Event()

    def push(self, camera_id: str, pts_s: float, frame: np.ndarray | None) -> Clip | None:
        clip = super().push(camera_id, pts_s, frame)
        if clip is not None and clip.index == self.index:
            self.assembled.set()
            assert self.release.wait(10)
        return clip


def test_a_restart_while_the_old_streams_last_clip_is_being_pushed_resets_after_that_clip() -> None:
    inference = _RecordingInference()
    assembler = _HeldAssembler(index=2)
    path, wait_scored = _path(inference, assembler, max_batch=8, max_wait_ms=20, queue_size=32)
    path.start()
    try:
        t = 0.0
        for _ in range(5):  # clips 0 and 1, and the first frame of clip 2
            path.push("cam", t, _frame(OLD))
            t += 0.1
        last = threading.Thread(target=path.push, args=("cam", t, _frame(OLD)))
        last.start()  # completes the old stream's clip 2, held before the clip path books it
        assert assembler.assembled.wait(10)
        path.restart("cam")  # the reconnect
        assembler.release.set()
        last.join(10)
        for _ in range(4):
            t += 0.1
            path.push("cam", t, _frame(NEW))
        wait_scored(5)
    finally:
        assembler.release.set()
        path.stop()
    assert inference.streams_after_reset() == [NEW, NEW]  # before the fix: [OLD, NEW, NEW]
    assert [e for e in inference.events if e[0] == "score"][:3] == [("score", i, OLD) for i in range(3)]


def test_a_batch_that_fails_before_a_restart_point_still_restarts_the_history() -> None:
    inference = _RecordingInference(fail_first=True)
    # Batches of four, formed at once when full: the first holds the old stream's clips 0-1 and the new
    # stream's 2-3, and its first part (0-1) fails.
    path, wait_scored = _path(
        inference, ClipAssembler(1, 1, 1), max_batch=4, max_wait_ms=10_000, queue_size=32
    )
    path.start()
    try:
        path.push("cam", 0.0, _frame(OLD))
        path.push("cam", 0.1, _frame(OLD))
        path.restart("cam")
        for i in range(6):
            path.push("cam", 5.0 + 0.1 * i, _frame(NEW))
        wait_scored(4)  # the second batch: clips 4-7
    finally:
        path.stop()
    assert path.stats().cameras["cam"].failed == 4
    assert inference.events[0] == ("reset",)  # before the fix: no reset at all
    assert inference.streams_after_reset() == [NEW] * 4


def test_a_camera_added_again_restarts_its_history_even_when_its_first_clip_is_dropped() -> None:
    """A reload restarts a camera just after the worker took a batch of its old stream, before scoring it
    (so the removal's reset comes first and the old clip puts its history back), and the new stream's first
    clip is dropped unscored: the new stream's history must still start afresh."""
    taken = threading.Event()
    release = threading.Event()
    inference = _RecordingInference()
    path, wait_scored = _path(inference, ClipAssembler(1, 1, 1), max_batch=1, max_wait_ms=0, queue_size=1)
    score = path.scheduler._infer  # the clip path's own: hold the old batch between its taking and it

    def held(clips: Sequence[Clip]) -> Any:
        if int(clips[0].frames[0, 0, 0, 0]) == OLD:
            taken.set()
            assert release.wait(10)
        return score(clips)

    path.scheduler._infer = held
    path.start()
    try:
        path.push("cam", 0.0, _frame(OLD))
        assert taken.wait(10)  # the worker took the old clip
        path.forget("cam")  # the reload removes the camera ...
        path.push("cam", 0.0, _frame(NEW))  # ... and adds it again: its clip 0 is dropped by clip 1
        path.push("cam", 0.1, _frame(NEW))
        release.set()
        wait_scored(2)
    finally:
        release.set()
        path.stop()
    assert path.stats().cameras["cam"].dropped == 1
    assert inference.streams_after_reset() == [NEW]  # before the fix: [OLD, NEW], no reset between
