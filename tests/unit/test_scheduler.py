"""Batching scheduler: batch by size and by timeout, fairness, drop-oldest, ordering, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from core.config import SchedulerConfig
from pipeline.clips import Clip
from pipeline.cpu.scheduler import BatchScheduler, SchedulerStateError

_FRAMES = np.zeros((2, 2, 2, 3), dtype=np.uint8)


def _clip(cid: str, index: int) -> Clip:
    return Clip(cid, index, _FRAMES, np.zeros(2), index)


class Recorder:
    """A real infer callable: records batches, can block or fail on demand."""

    def __init__(self, delay_s: float = 0.0, fail_when: Callable[[list[Clip]], bool] | None = None) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.results: list[tuple[str, int, Any]] = []
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def infer(self, batch: list[Clip]) -> Sequence[Any]:
        self.gate.wait(60)  # held shut by a test until it opens it: never opened by a timeout first
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.batches.append([(c.camera_id, c.index) for c in batch])
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("model exploded")
        return [f"{c.camera_id}:{c.index}" for c in batch]

    def on_result(self, clip: Clip, result: Any) -> None:
        with self.lock:
            self.results.append((clip.camera_id, clip.index, result))


def _wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:  # an upper bound (loaded CI)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError("condition not reached in time")


def test_full_batch_goes_out_without_waiting_for_the_timeout() -> None:
    rec = Recorder()
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=4, max_wait_ms=5000, queue_size=8)
    sched.start()
    try:
        t0 = time.monotonic()
        for i in range(4):
            sched.submit(_clip(f"c{i}", 0))
        _wait_for(lambda: len(rec.results) == 4, timeout=4.0)
        assert time.monotonic() - t0 < 3.0  # far below the 5 s max_wait, with room for a loaded machine
        assert [len(b) for b in rec.batches] == [4]
        assert all(r == f"{cid}:{idx}" for cid, idx, r in rec.results)
    finally:
        sched.stop()


def test_partial_batch_goes_out_after_max_wait() -> None:
    rec = Recorder()
    # A second's wait: the test thread's two submits must land in one batch even on a loaded machine.
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=8, max_wait_ms=1000, queue_size=8)
    sched.start()
    try:
        t0 = time.monotonic()
        sched.submit(_clip("a", 0))
        sched.submit(_clip("b", 0))
        _wait_for(lambda: len(rec.results) == 2)
        waited = time.monotonic() - t0
        assert 0.95 <= waited < 30.0  # sent after its wait, not held on for ever
        assert rec.batches == [[("a", 0), ("b", 0)]]
        stats = sched.stats()
        assert stats.batch_sizes == {2: 1}
        assert stats.cameras["a"].processed == 1
        assert stats.infer_latency_max_s >= 0.0
    finally:
        sched.stop()


def test_round_robin_busy_camera_cannot_starve_the_others() -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the worker while the queues fill
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=4, max_wait_ms=0, queue_size=100)
    sched.start()
    try:
        sched.submit(_clip("busy", 0))
        _wait_for(lambda: sched.depths()["busy"] == 0)  # the worker took it and is blocked in infer
        for i in range(1, 41):
            sched.submit(_clip("busy", i))
        for cid in ("q1", "q2", "q3"):
            sched.submit(_clip(cid, 0))
        rec.gate.set()
        _wait_for(lambda: len(rec.results) == 44)
        # The batch right after the blocked one serves every waiting camera once, busy in its FIFO order.
        second = rec.batches[1]
        assert sorted(cid for cid, _ in second) == ["busy", "q1", "q2", "q3"]
        assert ("busy", 1) in second
    finally:
        sched.stop()


def test_small_batches_rotate_over_all_busy_cameras() -> None:
    rec = Recorder()
    rec.gate.clear()
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=2, max_wait_ms=0, queue_size=100)
    sched.start()
    try:
        sched.submit(_clip("x", 0))
        _wait_for(lambda: sched.depths()["x"] == 0)
        for i in range(3):
            for cid in ("a", "b", "c", "d"):
                sched.submit(_clip(cid, i))
        rec.gate.set()
        _wait_for(lambda: len(rec.results) == 13)
        served = [cid for batch in rec.batches[1:7] for cid, _ in batch]
        # Every window of 4 consecutive picks covers the 4 busy cameras: nobody waits two turns.
        for k in range(0, len(served) - 3):
            assert len(set(served[k : k + 4])) == 4, served
    finally:
        sched.stop()


def test_overload_keeps_queues_bounded_and_counts_drops() -> None:
    """Frames arriving faster than inference: queues stay bounded, drops counted, freshest clips kept."""
    rec = Recorder(delay_s=0.02)
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=2, max_wait_ms=1, queue_size=3)
    sched.start()
    try:
        n = 300
        max_depth = 0
        for i in range(n):
            for cid in ("a", "b"):
                sched.submit(_clip(cid, i))
            max_depth = max(max_depth, *sched.depths().values())
        assert max_depth <= 3
        sched.stop(drain=True)
        stats = sched.stats()
        for cid in ("a", "b"):
            c = stats.cameras[cid]
            assert c.submitted == n
            assert c.dropped > n // 2  # inference is far slower than submission
            assert c.processed + c.dropped == n
            assert c.depth == 0
            done = [idx for cam, idx, _ in rec.results if cam == cid]
            assert done == sorted(done)  # drops leave gaps, never reorder
            assert done[-1] == n - 1  # the newest clip survives
    finally:
        sched.stop()


def test_each_camera_is_processed_in_order_across_and_within_batches() -> None:
    rec = Recorder(delay_s=0.001)
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=5, max_wait_ms=2, queue_size=1000)
    sched.start()
    cams = ["a", "b", "c"]

    def produce(cid: str) -> None:
        for i in range(200):
            sched.submit(_clip(cid, i))
            if i % 17 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=produce, args=(cid,)) for cid in cams]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    sched.stop(drain=True)
    for cid in cams:
        assert [idx for cam, idx, _ in rec.results if cam == cid] == list(range(200))
        in_batches = [idx for batch in rec.batches for cam, idx in batch if cam == cid]
        assert in_batches == list(range(200))
    assert max(len(b) for b in rec.batches) <= 5


def test_infer_exception_is_counted_and_the_worker_survives(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(fail_when=lambda batch: any(c.index == 1 for c in batch))
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=1, max_wait_ms=0, queue_size=10)
    sched.start()
    try:
        for i in range(4):
            sched.submit(_clip("cam7", i))
        _wait_for(lambda: len(rec.results) == 3)
        assert [idx for _, idx, _ in rec.results] == [0, 2, 3]
        stats = sched.stats()
        assert stats.cameras["cam7"].failed == 1
        assert stats.failed_batches == 1
        assert sched.running
        assert "cam7#1" in caplog.text
    finally:
        sched.stop()


def test_wrong_result_count_and_on_result_errors_are_contained() -> None:
    calls: list[int] = []

    def infer(batch: list[Clip]) -> list[int]:
        calls.append(len(batch))
        return [] if batch[0].index == 0 else [1] * len(batch)

    def on_result(clip: Clip, result: Any) -> None:
        if clip.index == 1:
            raise KeyError("sink down")

    sched = BatchScheduler(infer, on_result, max_batch=1, max_wait_ms=0, queue_size=10)
    sched.start()
    try:
        for i in range(3):
            sched.submit(_clip("a", i))
        _wait_for(lambda: sched.stats().cameras["a"].processed == 2)
        stats = sched.stats()
        assert stats.cameras["a"].failed == 1
        assert stats.result_errors == 1
        assert sched.running
    finally:
        sched.stop()


def test_stop_without_drain_discards_and_later_submits_are_refused() -> None:
    rec = Recorder()
    rec.gate.clear()
    sched = BatchScheduler.from_config(
        SchedulerConfig(max_batch=1, max_wait_ms=0, queue_size=50), rec.infer, rec.on_result
    )
    sched.start()
    for i in range(10):
        sched.submit(_clip("a", i))
    _wait_for(lambda: len(rec.batches) == 0 and sched.depths()["a"] == 9)

    def open_once_discarded() -> None:
        # The clip in flight finishes only after the stop has discarded the queue (a timer raced it).
        _wait_for(lambda: sched.stats().cameras["a"].discarded == 9)
        rec.gate.set()

    threading.Thread(target=open_once_discarded, daemon=True).start()
    sched.stop(drain=False)
    assert not sched.running
    stats = sched.stats()
    assert stats.cameras["a"].discarded == 9
    assert stats.cameras["a"].processed == 1
    assert sched.submit(_clip("a", 11)) is False
    with pytest.raises(SchedulerStateError):
        sched.start()


def test_remove_camera_forgets_its_queue() -> None:
    rec = Recorder()
    rec.gate.clear()
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=1, max_wait_ms=0, queue_size=50)
    sched.start()
    try:
        sched.submit(_clip("x", 0))
        _wait_for(lambda: sched.depths()["x"] == 0)
        for i in range(5):
            sched.submit(_clip("gone", i))
            sched.submit(_clip("kept", i))
        sched.remove_camera("gone")
        rec.gate.set()
        _wait_for(lambda: len(rec.results) == 6)
        assert {cid for cid, _, _ in rec.results} == {"x", "kept"}
        assert "gone" not in sched.stats().cameras
    finally:
        sched.stop()


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"queue_size": 0}, {"max_wait_ms": -1}])
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BatchScheduler(rec.infer, rec.on_result, **kwargs)  # type: ignore[arg-type]


def test_blocking_submit_applies_back_pressure_instead_of_dropping() -> None:
    """Offline runs over files block the producer when a queue is full: nothing is dropped."""
    import threading

    from pipeline.cpu.scheduler import BatchScheduler

    release = threading.Event()
    seen: list[int] = []

    def infer(batch: list) -> list:
        release.wait(5)
        return [None] * len(batch)

    sched = BatchScheduler(
        infer, lambda clip, _r: seen.append(clip.index), max_batch=1, max_wait_ms=0, queue_size=2
    )
    sched.start()
    producer = threading.Thread(target=lambda: [sched.submit(_clip("cam", i), block=True) for i in range(10)])
    producer.start()
    producer.join(0.5)
    assert producer.is_alive()  # blocked on the full queue
    release.set()
    producer.join(10)
    sched.stop(drain=True)
    assert seen == list(range(10))
    assert sched.stats().cameras["cam"].dropped == 0


class _WatchedCondition(threading.Condition):
    """The scheduler's condition, telling when the thread named ``name`` first waits on it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread().name == self.name:
            self.waiting.set()
        return super().wait(timeout)


def test_a_submit_waiting_for_room_returns_false_when_its_camera_is_removed() -> None:
    """A file camera blocked on its full queue, then removed (a reload): the producer is released at once,
    its clip refused, and what was queued is counted as discarded, not lost from the books."""
    rec = Recorder()
    rec.gate.clear()  # the model is busy with the first clip
    sched = BatchScheduler(rec.infer, rec.on_result, max_batch=1, max_wait_ms=0, queue_size=1)
    cond = sched._cond = _WatchedCondition("producer")  # to know when the producer waits for room
    sched.start()
    try:
        assert sched.submit(_clip("cam", 0))
        _wait_for(lambda: sched.depths()["cam"] == 0)  # taken by the worker, which waits on the gate
        assert sched.submit(_clip("cam", 1))  # fills the queue
        answers: list[bool] = []
        producer = threading.Thread(
            target=lambda: answers.append(sched.submit(_clip("cam", 2), block=True)), name="producer"
        )
        producer.start()
        assert cond.waiting.wait(5)
        sched.remove_camera("cam")
        producer.join(5)
        assert not producer.is_alive()  # before the fix it waited on the forgotten queue until stop()
        assert answers == [False]
        assert sched.stats().removed_discarded == 1
        rec.gate.set()
        _wait_for(lambda: len(rec.results) == 1)
    finally:
        rec.gate.set()
        sched.stop()
