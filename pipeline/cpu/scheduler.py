"""Cross-camera batching: many cameras' clips into one inference call.

Each camera has a bounded FIFO of clips (``queue_size``; when full the OLDEST clip is dropped and counted, so
a slow model never makes memory grow and the freshest video is always what gets scored). One worker thread
forms a batch as soon as ``max_batch`` clips are waiting, or when the oldest waiting clip has waited
``max_wait_ms``. Batches are filled round-robin across cameras, starting one camera further each batch, so
one busy camera cannot starve the others. A camera's clips always go to ``infer`` in their arrival order
(within a batch and across batches), and ``on_result`` is called in that same order.

Per-camera state (e.g. DPC history) belongs to the ``infer`` callable, which sees the batch in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.config import SchedulerConfig
from pipeline.clips import Clip

__all__ = [
    "BatchScheduler",
    "CameraQueueStats",
    "InferFn",
    "ResultFn",
    "SchedulerStateError",
    "SchedulerStats",
]

log = logging.getLogger(__name__)

InferFn = Callable[[list[Clip]], Sequence[Any]]
"""``infer(batch) -> results``: one result per clip, in the batch's order."""

ResultFn = Callable[[Clip, Any], None]
"""``on_result(clip, result)``, called from the worker thread in each camera's clip order."""

_LATENCY_WINDOW = 1024


class SchedulerStateError(RuntimeError):
    """``start`` called twice, or a scheduler used after ``stop``."""


@dataclass
class CameraQueueStats:
    """Counters of one camera's queue (a snapshot)."""

    depth: int = 0
    submitted: int = 0
    dropped: int = 0  # oldest clips dropped because the queue was full
    processed: int = 0  # clips whose result reached on_result
    failed: int = 0  # clips in a batch whose infer raised or returned the wrong count
    discarded: int = 0  # clips thrown away by stop(drain=False) (a removed camera's: removed_discarded)


@dataclass
class SchedulerStats:
    """A snapshot of the scheduler: per-camera queues, batch sizes and latencies (seconds)."""

    cameras: dict[str, CameraQueueStats] = field(default_factory=dict)
    batches: int = 0
    failed_batches: int = 0
    result_errors: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> count
    infer_latency_mean_s: float = 0.0
    infer_latency_p50_s: float = 0.0
    infer_latency_p95_s: float = 0.0
    infer_latency_max_s: float = 0.0
    queue_wait_p95_s: float = 0.0  # submit -> batch start, p95 over recent clips
    removed_discarded: int = 0  # clips queued for cameras when they were removed

    @property
    def mean_batch_size(self) -> float:
        n = sum(self.batch_sizes.values())
        return sum(k * v for k, v in self.batch_sizes.items()) / n if n else 0.0


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


class BatchScheduler:
    """Batches clips across cameras into calls of ``infer``.

    Args:
        infer: ``infer(batch: list[Clip]) -> Sequence[result]`` with ``len(results) == len(batch)``.
        on_result: ``on_result(clip, result)`` for each clip of a successful batch, in batch order.
        max_batch: most clips in one ``infer`` call.
        max_wait_ms: longest the oldest waiting clip waits for a batch to fill.
        queue_size: per-camera queue bound; when full, the oldest clip is dropped.
        max_per_camera: most clips of one camera in one batch (None: no limit beyond ``max_batch``).
    """

    def __init__(
        self,
        infer: InferFn,
        on_result: ResultFn,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 50.0,
        queue_size: int = 8,
        max_per_camera: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if max_per_camera is not None and max_per_camera < 1:
            raise ValueError(f"max_per_camera must be >= 1 or None, got {max_per_camera}")
        self._infer = infer
        self._on_result = on_result
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.max_per_camera = max_per_camera or max_batch
        self._cond = threading.Condition()
        self._queues: dict[str, deque[tuple[float, Clip]]] = {}
        self._order: list[str] = []  # round-robin order of cameras (insertion order)
        self._rr = 0
        self._counts: dict[str, CameraQueueStats] = {}
        self._batches = 0
        self._failed_batches = 0
        self._removed_discarded = 0
        self._result_errors = 0
        self._batch_sizes: dict[int, int] = {}
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._waits: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stopping = False
        self._drain = True
        self._stopped = False

    @classmethod
    def from_config(
        cls, cfg: SchedulerConfig, infer: InferFn, on_result: ResultFn, **kwargs: Any
    ) -> BatchScheduler:
        return cls(
            infer,
            on_result,
            max_batch=cfg.max_batch,
            max_wait_ms=cfg.max_wait_ms,
            queue_size=cfg.queue_size,
            **kwargs,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker thread."""
        with self._cond:
            if self._thread is not None or self._stopped:
                raise SchedulerStateError("BatchScheduler.start: already started (or stopped)")
            self._accepting = True
            self._thread = threading.Thread(target=self._run, name="zsad-scheduler", daemon=True)
            self._thread.start()

    def stop(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop accepting clips and end the worker.

        ``drain=True`` runs every queued clip through ``infer`` first (without waiting for batches to fill);
        ``drain=False`` discards queued clips (counted as ``discarded``) after the batch in flight.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._drain = drain
            self._stopped = True
            thread = self._thread
            if not drain:
                self._discard_all_locked()
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.error("scheduler worker did not stop within %.1f s (infer still running?)", timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ producers

    def submit(self, clip: Clip, *, block: bool = False) -> bool:
        """Queue a clip (thread-safe). Returns False when the scheduler is not accepting clips.

        When the camera's queue is full its oldest clip is dropped (counted in ``dropped``), unless
        ``block`` is set: then the caller waits for room. Blocking is for offline runs over files, where
        back-pressure on the decoder is right; a live camera must never block.
        """
        with self._cond:
            if not self._accepting:
                return False
            cid = clip.camera_id
            q = self._queues.get(cid)
            if q is None:
                q = self._queues[cid] = deque()
                self._order.append(cid)
                self._counts[cid] = CameraQueueStats()
            while block and self._accepting and self._queues.get(cid) is q and len(q) >= self.queue_size:
                self._cond.wait(0.1)
            if not self._accepting or self._queues.get(cid) is not q:
                return False  # stopped, or the camera was removed while this clip waited for room
            counts = self._counts[cid]
            counts.submitted += 1
            if len(q) >= self.queue_size:
                q.popleft()
                counts.dropped += 1
            # Timed once queued, not before a blocked wait: the queue wait and the partial-batch deadline
            # count from here.
            q.append((time.monotonic(), clip))
            # Every waiter: the worker, and submitters of other cameras that waited for room (a notify()
            # could wake one of those instead of the worker, which would then wait out max_wait_ms).
            self._cond.notify_all()
            return True

    def remove_camera(self, camera_id: str) -> None:
        """Discard a camera's queued clips and forget it (its counters go too, its discarded clips into
        :attr:`SchedulerStats.removed_discarded`). A ``submit(block=True)`` of it waiting for room returns
        False."""
        with self._cond:
            q = self._queues.pop(camera_id, None)
            if q is None:
                return
            self._removed_discarded += len(q)
            q.clear()
            self._order.remove(camera_id)
            self._counts.pop(camera_id, None)
            self._rr = self._rr % len(self._order) if self._order else 0
            self._cond.notify_all()  # a blocked submit() of this camera must not wait on a forgotten queue

    # ------------------------------------------------------------------ observers

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {cid: len(q) for cid, q in self._queues.items()}

    def stats(self) -> SchedulerStats:
        with self._cond:
            cams = {}
            for cid, c in self._counts.items():
                cams[cid] = CameraQueueStats(
                    depth=len(self._queues[cid]),
                    submitted=c.submitted,
                    dropped=c.dropped,
                    processed=c.processed,
                    failed=c.failed,
                    discarded=c.discarded,
                )
            lat = sorted(self._latencies)
            waits = sorted(self._waits)
            return SchedulerStats(
                cameras=cams,
                batches=self._batches,
                failed_batches=self._failed_batches,
                result_errors=self._result_errors,
                batch_sizes=dict(self._batch_sizes),
                infer_latency_mean_s=sum(lat) / len(lat) if lat else 0.0,
                infer_latency_p50_s=_quantile(lat, 0.5),
                infer_latency_p95_s=_quantile(lat, 0.95),
                infer_latency_max_s=lat[-1] if lat else 0.0,
                queue_wait_p95_s=_quantile(waits, 0.95),
                removed_discarded=self._removed_discarded,
            )

    # ------------------------------------------------------------------ worker

    def _discard_all_locked(self) -> None:
        for cid, q in self._queues.items():
            self._counts[cid].discarded += len(q)
            q.clear()

    def _total_locked(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _oldest_locked(self) -> float | None:
        heads = [q[0][0] for q in self._queues.values() if q]
        return min(heads) if heads else None

    def _take_batch_locked(self) -> list[tuple[float, Clip]]:
        """Round-robin: one clip per camera per round, each camera's clips in FIFO order."""
        batch: list[tuple[float, Clip]] = []
        n = len(self._order)
        taken = dict.fromkeys(self._order, 0)
        start = self._rr
        last = start - 1
        while len(batch) < self.max_batch:
            progressed = False
            for k in range(n):
                pos = (start + k) % n
                cid = self._order[pos]
                q = self._queues[cid]
                if q and taken[cid] < self.max_per_camera:
                    batch.append(q.popleft())
                    self._cond.notify_all()  # a blocked submit() may have room now
                    taken[cid] += 1
                    last = pos
                    progressed = True
                    if len(batch) >= self.max_batch:
                        break
            if not progressed:
                break
        # The next batch starts right after the last camera served, so a batch smaller than the number of
        # busy cameras still serves them all in turn.
        self._rr = (last + 1) % n if n else 0
        return batch

    def _next_batch(self) -> list[tuple[float, Clip]] | None:
        """Block until a batch is due; None when the worker should exit."""
        with self._cond:
            while True:
                total = self._total_locked()
                if self._stopping:
                    if not self._drain or total == 0:
                        return None
                    return self._take_batch_locked()
                if total >= self.max_batch:
                    return self._take_batch_locked()
                oldest = self._oldest_locked()
                if oldest is None:
                    self._cond.wait()
                    continue
                remaining = oldest + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    return self._take_batch_locked()
                self._cond.wait(remaining)

    def _run(self) -> None:
        while True:
            entries = self._next_batch()
            if entries is None:
                return
            if entries:
                self._process(entries)

    def _process(self, entries: list[tuple[float, Clip]]) -> None:
        batch = [clip for _, clip in entries]
        started = time.monotonic()
        try:
            results = list(self._infer(batch))
            if len(results) != len(batch):
                raise ValueError(f"infer returned {len(results)} results for a batch of {len(batch)} clips")
        except Exception:
            ids = ", ".join(f"{c.camera_id}#{c.index}" for c in batch)
            log.exception("inference failed for a batch of %d clips (%s); clips dropped", len(batch), ids)
            with self._cond:
                self._batches += 1
                self._failed_batches += 1
                self._batch_sizes[len(batch)] = self._batch_sizes.get(len(batch), 0) + 1
                for clip in batch:
                    counts = self._counts.get(clip.camera_id)
                    if counts is not None:
                        counts.failed += 1
            return
        elapsed = time.monotonic() - started
        with self._cond:
            self._batches += 1
            self._batch_sizes[len(batch)] = self._batch_sizes.get(len(batch), 0) + 1
            self._latencies.append(elapsed)
            self._waits.extend(started - queued for queued, _ in entries)
        for clip, result in zip(batch, results, strict=True):
            try:
                self._on_result(clip, result)
            except Exception:
                log.exception("on_result failed for clip %s#%d", clip.camera_id, clip.index)
                with self._cond:
                    self._result_errors += 1
            with self._cond:
                counts = self._counts.get(clip.camera_id)
                if counts is not None:
                    counts.processed += 1
