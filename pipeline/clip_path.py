"""The clip path of both graphs: frames in, scored clips out.

The CPU graph's frame callback (:class:`pipeline.run.Application`) and the DeepStream graph's score probe
(:class:`pipeline.deepstream.probe.ClipScoringProbe`, on the score branch's streaming thread) hand every
camera's frames to :meth:`ClipPath.push`. From there on both graphs run the same code:
:class:`pipeline.clips.ClipAssembler` makes the clips, :class:`pipeline.cpu.scheduler.BatchScheduler` batches
them across cameras on its own worker thread, and :class:`pipeline.inference.ClipInference` runs the
backbone, the DPC head (the per-camera history of :class:`plugins.scorer.ClipScorer`), the memory streams
and the semantic head through the configured engines backend (TensorRT on a device). ``on_result(clip,
result)`` receives each scored clip, in each camera's order, on the scheduler's thread.

Why the scheduler and not inference in the probe: a probe runs on the streaming thread, so inference there
would stall the whole batch of cameras for as long as the engines take, and it could not batch clips that
complete on different mux batches. The frames the probe hands over are copies (see
:func:`pipeline.deepstream.meta.frame_rgb`), so the surfaces are unmapped before inference starts.

Every change to a camera's history happens on the scheduler's thread, between two inference calls, so never
while that camera's clips are being scored (the memory streams' states are read on a feeds thread during
inference, :class:`pipeline.inference.ClipInference`):

* **Restarts.** When a camera's stream restarts (a file loop, a reconnect), :meth:`ClipPath.restart` drops
  its buffered frames at once, so no clip spans the gap, and resets its history *in clip order*: clips of
  the old stream still queued in the scheduler are scored with the old history, the first clip of the new
  stream with an empty one (a batch holding both is split at that clip).
* **Removal.** :meth:`ClipPath.forget` (a camera removed while running) drops its queued clips and buffered
  frames at once, and its history before the next batch is scored; should a batch taken just before the
  removal still hold old clips (they put some history back), the first clip of a camera added again under
  the same id resets it once more before it is scored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from core.config import SchedulerConfig
from pipeline.clips import Clip, ClipAssembler
from pipeline.cpu.scheduler import BatchScheduler, ResultFn, SchedulerStats
from pipeline.inference import ClipInference, ClipResult

__all__ = ["ClipPath"]

log = logging.getLogger(__name__)


class ClipPath:
    """Clip assembly, cross-camera batching and inference for frames that arrive on a streaming thread.

    Args:
        inference: the CPU graph's clip inference (backbone, DPC head, semantic head); it keeps the DPC
            history.
        assembler: the CPU graph's clip assembler.
        on_result: ``on_result(clip, result)`` for every scored clip (the scheduler's thread).
        scheduler: the run's ``scheduler`` section (batch size, wait, per-camera queue bound).
        block: when a camera's queue is full, wait for room (files: back-pressure, no clip lost) instead of
            dropping its oldest clip (live cameras: never hold the stream back). A bool for every camera, or
            ``block(camera_id)`` per camera (a run of files with ``--fast`` beside live cameras).
        max_batch: the engines' largest batch, if smaller than ``scheduler.max_batch``.
    """

    def __init__(
        self,
        inference: ClipInference,
        assembler: ClipAssembler,
        on_result: ResultFn,
        *,
        scheduler: SchedulerConfig,
        block: bool | Callable[[str], bool],
        max_batch: int | None = None,
    ) -> None:
        self.inference = inference
        self.assembler = assembler
        self._blocks = block if callable(block) else (lambda _camera, b=bool(block): b)
        self.max_batch = min(scheduler.max_batch, max_batch) if max_batch else scheduler.max_batch
        if self.max_batch < scheduler.max_batch:
            log.info(
                "batches of at most %d clips: the engines' profile stops there (scheduler.max_batch is %d)",
                self.max_batch,
                scheduler.max_batch,
            )
        self.scheduler = BatchScheduler(
            self._infer,
            on_result,
            max_batch=self.max_batch,
            max_wait_ms=scheduler.max_wait_ms,
            queue_size=scheduler.queue_size,
        )
        self._lock = threading.Lock()
        self._last_index: dict[str, int] = {}  # the newest clip assembled per camera (the pushing thread)
        self._resets: dict[str, deque[int]] = {}  # per camera: the first clip index of each new stream
        self._forgotten: set[str] = set()  # cameras removed since the last batch: their history goes next
        self._forgotten_at: dict[str, float] = {}  # per camera: time.monotonic() of its last removal
        # Removed cameras whose history restarts before the first clip assembled after the removal that is
        # scored (by time, not by clip: that first clip may be dropped unscored, and a batch taken before
        # the removal may put the old stream's history back).
        self._renew_after: dict[str, float] = {}
        self.refused = 0

    # -- the pushing thread (the CPU graph's frame callback, the score probe) ------------------------------

    def push(self, camera: str, t: float, frame: np.ndarray | None) -> bool:
        """Add a camera's frame ``(H, W, 3) uint8`` RGB at stream time ``t`` (None: one no clip holds, see
        :meth:`pipeline.clips.ClipAssembler.wants_next`); a completed clip goes to the scheduler. Returns
        False only when a clip completed and the scheduler refused it (stopping)."""
        clip = self.assembler.push(camera, t, frame)
        if clip is None:
            return True
        with self._lock:
            self._last_index[camera] = clip.index
        if self.scheduler.submit(clip, block=self.blocks(camera)):
            return True
        self.refused += 1
        return False

    def restart(self, camera: str) -> None:
        """The camera's stream restarted: no clip may span the gap, and its history starts again with its
        next clip. Call it before the new stream's first frame: from the thread that pushes the camera's
        frames, or from any thread once the old stream's frames have stopped (a reconnect)."""
        first = self.assembler.reset(camera)
        with self._lock:
            if first is None:  # no ring: nothing was assembled since the camera (re)appeared
                first = self._last_index.get(camera, -1) + 1
            pending = self._resets.setdefault(camera, deque())
            if not pending or pending[-1] != first:  # a camera that keeps reconnecting adds one reset
                pending.append(first)

    def forget(self, camera: str) -> None:
        """The camera was removed (any thread): its queued clips and buffered frames are dropped now, its
        history before the next batch is scored. Its next frames, if it is added again, start it anew."""
        self.scheduler.remove_camera(camera)
        self.assembler.remove(camera)
        with self._lock:
            self._last_index.pop(camera, None)
            self._resets.pop(camera, None)
            self._forgotten.add(camera)
            self._forgotten_at[camera] = self._renew_after[camera] = time.monotonic()

    def blocks(self, camera: str) -> bool:
        """Whether ``camera``'s clips wait for room in the scheduler (True) or drop its oldest (False)."""
        return self._blocks(camera)

    def is_stale(self, clip: Clip) -> bool:
        """Whether ``clip`` was assembled before its camera was last removed (:meth:`forget`): a clip of a
        batch already being scored when a reload restarted the camera. Its result belongs to the old
        stream and must not reach the camera added again under the same id (its stream time, its alerts)."""
        with self._lock:
            removed = self._forgotten_at.get(clip.camera_id)
        return removed is not None and clip.created_s <= removed

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.scheduler.start()

    def stop(self, *, drain: bool = True) -> None:
        """Stop taking clips; with ``drain`` every queued clip is scored first."""
        self.scheduler.stop(drain=drain)

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    # -- the scheduler's thread ---------------------------------------------------------------------------

    def _reset_due(self, clip: Clip) -> bool:
        with self._lock:
            due = False
            removed = self._renew_after.get(clip.camera_id)
            if removed is not None and clip.created_s > removed:
                del self._renew_after[clip.camera_id]
                due = True
            pending = self._resets.get(clip.camera_id)
            if not pending:
                return due
            while pending and pending[0] <= clip.index:
                pending.popleft()
                due = True
            if not pending:
                del self._resets[clip.camera_id]
            return due

    def _infer(self, clips: Sequence[Clip]) -> list[ClipResult]:
        """The scheduler's ``infer``: :class:`ClipInference` over the batch, split where a camera's history
        must be reset between two of its clips; removed cameras' histories go first."""
        with self._lock:
            forgotten, self._forgotten = self._forgotten, set()
        for camera in sorted(forgotten):
            self.inference.reset(camera)
        # Every reset is taken from the books first: a part of the batch that fails must not lose the
        # resets after it (the whole batch fails, and the camera's next clips are its new stream's).
        due = [i for i, clip in enumerate(clips) if self._reset_due(clip)]
        results: list[ClipResult] = []
        start = 0
        applied = 0
        try:
            for i in due:
                if i > start:
                    results.extend(self.inference(clips[start:i]))
                    start = i
                clip = clips[i]
                log.info("camera %s: history reset at clip %d (a new stream)", clip.camera_id, clip.index)
                self.inference.reset(clip.camera_id)
                applied += 1
            if start < len(clips):
                results.extend(self.inference(clips[start:]))
        except BaseException:
            for i in due[applied:]:
                self.inference.reset(clips[i].camera_id)
            raise
        return results
