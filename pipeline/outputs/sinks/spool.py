"""A crash-safe, append-only FIFO of JSON records in a directory: the write-ahead log of one sink.

Layout (one directory per sink)::

    <dir>/0000000000000042.json    one record per file, named by a increasing sequence number
    <dir>/dead/<ns>-<seq>.json     records a receiver refused permanently, with the reason
    <dir>/corrupt/<name>           unreadable records (never silently deleted, nor overwritten: a name
                                   already there gets a ``.<n>`` before ``.json``)

A record is written to a hidden temp file, flushed, fsync'd, renamed into place and the directory fsync'd:
after :meth:`Spool.append` returns, the record survives a crash or power loss; a crash mid-write leaves only
a temp file, removed at the next start. :meth:`Spool.ack` deletes the file once the sink delivered it.
Records found at start (left by a previous process) are flagged ``recovered``: they may have been delivered
already, so the sink marks them ``redelivered``.

If the disk refuses a write (full, read-only), the record is kept in memory instead (delivered in order,
but lost on a crash), an error is logged once per failure streak and :attr:`Spool.write_errors` counts it.
Once the disk takes writes again, each append writes a few of those records out beside its own, and the
sink's worker and its close write the rest (:meth:`Spool.persist`), so a disk that was full for a while
loses nothing once it has room again. Records on disk are not
kept in memory: a receiver down for days costs disk, not RAM (only the oldest, being delivered, is loaded).

One process at a time: the directory is locked (``flock`` on ``.lock``) while a :class:`Spool` is open, and a
second one is refused (:class:`SpoolError`): two runs on one output folder would number their records from
the same point and overwrite each other's.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from core.datafile import write_atomic

__all__ = ["Spool", "SpoolEntry", "SpoolError", "SpoolReadError", "spooled_records"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{16})\.json\Z")  # \Z: $ would take a final newline


class SpoolError(OSError):
    """The spool directory cannot be used at all (cannot be created or listed, or another process has it)."""


class SpoolReadError(SpoolError):
    """A spooled record cannot be read just now (an I/O error, too many open files): kept, retried later."""


@dataclass
class SpoolEntry:
    """The oldest record waiting. ``recovered``: it was in the spool when this process opened it.
    ``attempted``: a delivery attempt may have reached the receiver (so the next one is a possible duplicate).
    """

    seq: int
    record: dict[str, Any]
    recovered: bool = False
    attempted: bool = False

    @property
    def possibly_delivered(self) -> bool:
        return self.recovered or self.attempted


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spooled_records(directory: str | Path) -> int:
    """How many records wait in the spool folder ``directory`` (without opening, so without locking, it).
    Raises OSError when it cannot be listed."""
    return sum(1 for p in Path(directory).iterdir() if _NAME.match(p.name))


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>.<n><suffix>`` with the smallest ``n`` not taken: sequence numbers
    start again at 1 once a spool is drained, so a record's name in ``corrupt/`` (or ``dead/``) may be that
    of an older one, which must not be overwritten. One process has the spool (its lock), and the caller
    holds the spool's lock or is the only writer of ``folder``."""
    candidate = folder / name
    n = 1
    while candidate.exists():
        candidate = folder / f"{Path(name).stem}.{n}{Path(name).suffix}"
        n += 1
    return candidate


def _encode(record: Mapping[str, Any]) -> bytes:
    """A record as the bytes of its spool file (compact JSON; NaN refused)."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")


#: Memory-only records an append writes out beside its own once the disk takes writes again.
PERSIST_PER_APPEND = 4


class Spool:
    """FIFO of JSON-serialisable dicts in ``directory``; thread-safe."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.write_errors = 0
        self._lock = threading.Condition()
        # seq -> record (None: on disk, not loaded yet); insertion order == seq order.
        self._items: dict[int, dict[str, Any] | None] = {}
        self._on_disk: set[int] = set()
        self._recovered: set[int] = set()
        self._attempted: set[int] = set()
        self._failing = False
        # Closed (and the lock released) by close(), or when the spool is collected.
        self._lock_file: IO[bytes] | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.directory / ".lock", "ab")  # noqa: SIM115 - held while the spool is open
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise
                # A file system without locks (NFS mounted nolock, some FUSE or CIFS mounts): run unlocked.
                log.warning(
                    "spool %s: the file system cannot lock it (%s): make sure no other zsad run uses this "
                    "output_dir",
                    self.directory,
                    exc.strerror or exc,
                )
            names = sorted(p.name for p in self.directory.iterdir())
        except OSError as exc:
            self.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolError(
                    exc.errno,
                    f"spool directory {self.directory} is in use by another process (another zsad run on the "
                    "same output_dir?); give each run its own output_dir",
                ) from exc
            raise SpoolError(
                exc.errno, f"cannot use spool directory {self.directory}: {exc.strerror}"
            ) from exc
        for name in names:
            m = _NAME.match(name)
            if m:
                seq = int(m.group(1))
                self._items[seq] = None
                self._on_disk.add(seq)
                self._recovered.add(seq)
            elif name.startswith(".") and name.endswith(".tmp"):
                # A write that never completed: the record was never acknowledged to the caller.
                (self.directory / name).unlink(missing_ok=True)
        self._next_seq = max(self._items, default=0) + 1
        if self._items:
            log.info("spool %s: %d record(s) left by a previous run", self.directory, len(self._items))

    def close(self) -> None:
        """Release the directory's lock (the records stay). Idempotent."""
        f, self._lock_file = self._lock_file, None
        if f is not None:
            f.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}.json"

    def append(self, record: Mapping[str, Any]) -> int:
        """Persist one record; return its sequence number. Never raises for disk errors (see module doc);
        raises ``TypeError``/``ValueError`` if the record is not JSON-serialisable."""
        data = _encode(record)
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            try:
                self._write(seq, data)
            except OSError as exc:
                self.write_errors += 1
                if not self._failing:
                    log.error(
                        "spool %s: cannot write record %d (%s); keeping it in memory until delivered",
                        self.directory,
                        seq,
                        exc.strerror or exc,
                    )
                self._failing = True
            else:
                self._on_disk.add(seq)
                if self._failing:
                    log.info("spool %s: writing to disk again", self.directory)
                    self._failing = False
            # On disk: read back when it is the oldest (peek), not held here for the whole outage.
            self._items[seq] = None if seq in self._on_disk else dict(record)
            if seq in self._on_disk and len(self._items) > len(self._on_disk):
                # Records the disk refused earlier, a few at a time: append runs on the scoring thread
                # (the sink's worker and its close write the rest, persist()).
                self._persist_locked(limit=PERSIST_PER_APPEND)
            self._lock.notify_all()
            return seq

    @property
    def memory_only(self) -> int:
        """Records held in memory only (written while the disk refused): lost if the process ends."""
        with self._lock:
            return len(self._items) - len(self._on_disk)

    def persist(self) -> int:
        """Write the memory-only records to disk; return how many are still memory-only."""
        with self._lock:
            self._persist_locked()
            return len(self._items) - len(self._on_disk)

    def _persist_locked(self, limit: int | None = None) -> None:
        written = 0
        for seq, record in list(self._items.items()):
            if seq in self._on_disk or record is None:
                continue
            if limit is not None and written >= limit:
                return
            written += 1
            try:
                self._write(seq, _encode(record))
            except OSError as exc:
                if not self._failing:  # once per streak, as append says it
                    log.error(
                        "spool %s: still cannot write record %d: %s", self.directory, seq, exc.strerror or exc
                    )
                self._failing = True
                return
            self._on_disk.add(seq)

    def _write(self, seq: int, data: bytes) -> None:
        tmp = self.directory / f".{seq:016d}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self._path(seq))
            _fsync_dir(self.directory)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def peek(self) -> SpoolEntry | None:
        """The oldest record, or None. An unreadable file is moved to ``corrupt/`` and skipped; a disk that
        cannot be read just now raises :class:`SpoolReadError`."""
        with self._lock:
            while self._items:
                seq = next(iter(self._items))
                record = self._items[seq]
                if record is None:
                    record = self._load(seq)
                    if record is None:
                        continue
                    self._items[seq] = record
                return SpoolEntry(
                    seq=seq,
                    record=record,
                    recovered=seq in self._recovered,
                    attempted=seq in self._attempted,
                )
            return None

    def _load(self, seq: int) -> dict[str, Any] | None:
        """Read record ``seq`` from disk; None when it is gone or unreadable (moved to ``corrupt/``).
        Raises :class:`SpoolReadError` when the disk cannot be read just now (the file may be fine)."""
        path = self._path(seq)
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            return data
        except FileNotFoundError:
            log.error("spool %s: record %s is gone from the disk", self.directory, path.name)
            self._forget(seq)
            return None
        except OSError as exc:  # EIO, EMFILE, ...: not the record's fault; the worker retries
            raise SpoolReadError(exc.errno, f"cannot read {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            log.error(
                "spool %s: unreadable record %s (%s); moved to corrupt/", self.directory, path.name, exc
            )
            self._forget(seq)
            try:
                target = self.directory / "corrupt"
                target.mkdir(exist_ok=True)
                path.replace(_free_name(target, path.name))
            except OSError as move_exc:
                log.error("spool %s: cannot move %s aside: %s", self.directory, path.name, move_exc)
            return None

    def _forget(self, seq: int) -> None:
        self._items.pop(seq, None)
        self._on_disk.discard(seq)
        self._recovered.discard(seq)
        self._attempted.discard(seq)

    def mark_attempted(self, seq: int) -> None:
        """Remember that a delivery of ``seq`` may have reached the receiver."""
        with self._lock:
            if seq in self._items:
                self._attempted.add(seq)

    def ack(self, seq: int) -> None:
        """Delivered: delete the record. Unknown sequence numbers are ignored."""
        with self._lock:
            on_disk = seq in self._on_disk
            self._forget(seq)
        if on_disk:
            try:
                self._path(seq).unlink(missing_ok=True)
                _fsync_dir(self.directory)
            except OSError as exc:
                # A record that cannot be deleted would be redelivered (marked) after a restart: not lost.
                log.error("spool %s: cannot delete delivered record %d: %s", self.directory, seq, exc)

    def dead_letter(self, seq: int, reason: str) -> Path | None:
        """Refused permanently: move the record to ``dead/`` with ``reason``; return its new path."""
        with self._lock:
            record = self._items.get(seq)
            if record is None and seq in self._items:
                record = self._load(seq)
            self._forget(seq)
        if record is None:
            return None
        path = _free_name(self.directory / "dead", f"{time.time_ns()}-{seq:016d}.json")
        data = json.dumps({"reason": reason, "record": record}, indent=1).encode("utf-8")
        try:
            # The dead letter is on disk (the file and its name) before the record leaves the spool: a crash
            # in between leaves the record in both places, never in neither.
            write_atomic(path, lambda fh: fh.write(data))
            _fsync_dir(path.parent)
            self._path(seq).unlink(missing_ok=True)
            _fsync_dir(self.directory)
        except OSError as exc:
            log.error("spool %s: cannot write dead letter for record %d: %s", self.directory, seq, exc)
            return None
        return path

    def wait(self, timeout: float) -> bool:
        """Block until the spool holds a record or ``timeout`` seconds pass; True if it holds one."""
        with self._lock:
            if not self._items:
                self._lock.wait(timeout)
            return bool(self._items)

    def notify(self) -> None:
        """Wake any :meth:`wait` (used when closing)."""
        with self._lock:
            self._lock.notify_all()
