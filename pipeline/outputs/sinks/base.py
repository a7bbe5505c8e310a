"""The sink contract: spool first, then deliver in order from a background worker, with capped backoff.

:meth:`Sink.publish` appends the record to the sink's :class:`~pipeline.outputs.sinks.spool.Spool`
(fsync'd) and
returns at once; the worker thread delivers the oldest record, acks it on success, backs off exponentially
(capped) while the receiver is down, and moves a record the receiver refuses permanently to ``dead/``.
Records are delivered strictly in spool order; a record that may already have reached the receiver (found
in the spool at start, or after an attempt that failed without a clear "not received") is delivered with
``redelivered: true``. :meth:`Sink.close` keeps delivering until the spool is empty or its timeout passes;
what is left stays in the spool for the next start.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.outputs.sinks.spool import Spool, SpoolReadError

if TYPE_CHECKING:
    from pipeline.outputs.metrics import ZsadMetrics

__all__ = ["DeliveryError", "PermanentDeliveryError", "Sink"]

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A delivery that failed but may succeed later.

    ``maybe_delivered``: the receiver may have got the record (a timeout after sending, a lost ack), so the
    retry is marked ``redelivered``. ``retry_after_s``: the receiver asked for this delay (HTTP Retry-After).
    """

    def __init__(self, message: str, *, maybe_delivered: bool = False, retry_after_s: float | None = None):
        super().__init__(message)
        self.maybe_delivered = maybe_delivered
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(DeliveryError):
    """The receiver refused this record for good (e.g. HTTP 400): it goes to the dead-letter folder."""


class Sink(abc.ABC):
    """Base class of every alert sink. Subclasses implement :meth:`deliver` (and optionally
    :meth:`shutdown`); ``deliver`` runs only on the worker thread, so it needs no locking of its own.

    ``name`` identifies the sink in logs and metrics and names its spool folder (stable across restarts).
    """

    kind = "sink"

    def __init__(
        self,
        name: str,
        spool_dir: str | Path,
        *,
        metrics: ZsadMetrics | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        escalate_after: int = 5,
    ) -> None:
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"backoff needs 0 < initial <= max, got initial={backoff_initial_s} max={backoff_max_s}"
            )
        self.name = name
        self.spool = Spool(spool_dir)
        self.metrics = metrics
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.escalate_after = max(1, escalate_after)
        self.delivered = 0
        self.dead_letters = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._wake = threading.Event()  # cuts a backoff sleep short (closing: one more try at once)
        self._deadline = float("inf")
        self._failures = 0
        self._update_gauge()

    def __repr__(self) -> str:
        # What the logs show ("sink JsonlFileSink('jsonl-…', out/alerts.jsonl) ready"); never a secret.
        return f"{type(self).__name__}({self.name!r})"

    # ---------------------------------------------------------------- contract for subclasses

    @abc.abstractmethod
    def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
        """Deliver one record (a JSON-serialisable dict) or raise :class:`DeliveryError` /
        :class:`PermanentDeliveryError`. Must not block much longer than its own timeout, and should give up
        (raising ``DeliveryError``) soon after ``stop`` is set."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release connections and files; called on the caller's thread after the worker stopped."""

    # ---------------------------------------------------------------- public API

    @property
    def pending(self) -> int:
        """Records waiting in the spool."""
        return len(self.spool)

    def start(self) -> Sink:
        """Start the worker: first what a previous run left in the spool, then new records."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"zsad-sink-{self.name}", daemon=True)
        self._thread.start()
        return self

    def publish(self, record: Mapping[str, Any]) -> int:
        """Spool ``record`` (fsync'd) and return its spool sequence number; delivery happens later.
        Never raises for an unreachable receiver or a full disk."""
        seq = self.spool.append(record)
        self._update_gauge()
        return seq

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what can be delivered within ``timeout`` seconds, stop the worker, release resources.
        Returns the number of records left in the spool (delivered, marked, on the next start)."""
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._closing.set()
        self._wake.set()  # a worker backing off tries once more now: the receiver may be back
        self.spool.notify()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            if self._thread.is_alive():
                self._stop.set()
                self._wake.set()
                self.spool.notify()
                self._thread.join(5.0)
                if self._thread.is_alive():
                    log.warning("sink %s: worker did not stop in time; it is abandoned", self.name)
            self._thread = None
        self._stop.set()
        try:
            self.shutdown()
        except Exception:  # a broken connection must not stop the remaining sinks closing
            log.exception("sink %s: error while shutting down", self.name)
        lost = self.spool.persist()  # records kept in memory while the disk refused them
        self.spool.close()
        left = self.pending
        if lost:
            log.error(
                "sink %s: %d record(s) could not be written to the spool (the disk refused them) and are "
                "lost with this process",
                self.name,
                lost,
            )
        if left - lost:
            log.warning("sink %s: %d record(s) left in the spool for the next start", self.name, left - lost)
        return left

    # ---------------------------------------------------------------- worker

    def _update_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.sink_spooled.set(len(self.spool), sink=self.name)

    def _should_exit(self) -> bool:
        if self._stop.is_set():
            return True
        return self._closing.is_set() and (len(self.spool) == 0 or time.monotonic() >= self._deadline)

    def _sleep(self, seconds: float) -> None:
        if self._closing.is_set():
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        self._wake.wait(seconds)
        self._wake.clear()

    def _run(self) -> None:
        while not self._should_exit():
            try:
                entry = self.spool.peek()
            except SpoolReadError as exc:
                self._on_failure(str(exc), None)
                continue
            if entry is None:
                self.spool.wait(0.5)
                continue
            record = dict(entry.record)
            record["redelivered"] = bool(record.get("redelivered")) or entry.possibly_delivered
            try:
                self.deliver(record, self._stop)
            except PermanentDeliveryError as exc:
                path = self.spool.dead_letter(entry.seq, str(exc))
                self.dead_letters += 1
                if self.metrics is not None:
                    self.metrics.sink_dead_letters.inc(sink=self.name)
                log.error(
                    "sink %s: record %s refused permanently (%s); moved to %s",
                    self.name,
                    record.get("alert_id", entry.seq),
                    exc,
                    path,
                )
                self._update_gauge()
            except DeliveryError as exc:
                if exc.maybe_delivered:
                    self.spool.mark_attempted(entry.seq)
                self._on_failure(str(exc), exc.retry_after_s)
            except Exception as exc:  # a bug in one sink must not kill its worker; retry
                log.exception("sink %s: unexpected error delivering record %d", self.name, entry.seq)
                self.spool.mark_attempted(entry.seq)
                self._on_failure(f"{type(exc).__name__}: {exc}", None)
            else:
                self.spool.ack(entry.seq)
                if self.spool.memory_only:  # the disk refused them earlier: off the scoring thread, now
                    self.spool.persist()
                self.delivered += 1
                if self.metrics is not None:
                    self.metrics.sink_delivered.inc(sink=self.name)
                if self._failures:
                    log.info(
                        "sink %s: delivering again after %d failed attempt(s)", self.name, self._failures
                    )
                self._failures = 0
                self._update_gauge()

    def _on_failure(self, reason: str, retry_after_s: float | None) -> None:
        self._failures += 1
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(self._failures - 1, 30))
        if retry_after_s is not None:
            delay = min(max(delay, retry_after_s), self.backoff_max_s)
        # The escalation first: with escalate_after 1 (a webhook's max_retries 0 or 1) the first failure is
        # the one to report at ERROR, and the WARNING below would otherwise take it.
        if self._failures == self.escalate_after:
            log.error(
                "sink %s: still failing after %d attempt(s) (%s); %d record(s) waiting, retrying every "
                "<=%.0fs",
                self.name,
                self._failures,
                reason,
                self.pending,
                self.backoff_max_s,
            )
        elif self._failures == 1:
            log.warning(
                "sink %s: delivery failed (%s); retrying in %.1fs, records stay in the spool",
                self.name,
                reason,
                delay,
            )
        else:
            log.debug("sink %s: attempt %d failed: %s", self.name, self._failures, reason)
        self._sleep(delay)
