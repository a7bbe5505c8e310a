"""JSON Lines file sink (the default): one alert per line, flushed and fsync'd before the spool is acked."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

from pipeline.outputs.sinks.base import DeliveryError, Sink

__all__ = ["JsonlFileSink"]

log = logging.getLogger(__name__)


class JsonlFileSink(Sink):
    """Appends each record as one line of JSON to ``path``.

    A failed write (disk full) is rolled back to the previous end of file, so the file never holds a torn
    line; the record stays in the spool and is retried.
    """

    kind = "jsonl"

    def __init__(self, name: str, spool_dir: str | Path, path: str | Path, **kwargs: Any) -> None:
        super().__init__(name, spool_dir, **kwargs)
        self.path = Path(path)
        self._file: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"JsonlFileSink({self.name!r}, {self.path})"

    def start(self) -> JsonlFileSink:
        """Create the file (empty) before the first alert, so that whoever tails it finds it; then start."""
        try:
            self._open()
        except OSError as exc:
            log.warning(
                "sink %r: cannot create %s: %s; alerts stay in the spool until it can be written",
                self,
                self.path,
                exc.strerror or exc,
            )
        super().start()
        return self

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_torn_tail()
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across deliveries, closed in shutdown
        return self._file

    def _drop_torn_tail(self) -> None:
        """Cut a last line without its newline (a process killed mid-write, a rollback whose truncate
        failed) back to the previous line: its record is still in the spool and is written again whole,
        where it would otherwise be glued onto the torn text."""
        try:
            with open(self.path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                end = size
                while end > 0:  # find the last newline, a block at a time
                    start = max(0, end - 65536)
                    f.seek(start)
                    at = f.read(end - start).rfind(b"\n")
                    if at >= 0:
                        keep = start + at + 1
                        break
                    end = start
                else:
                    keep = 0
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            log.warning("sink %r: cut a torn last line (%d byte(s)) from %s", self, size - keep, self.path)
        except FileNotFoundError:
            return

    def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        try:
            f = self._open()
        except OSError as exc:
            raise DeliveryError(f"cannot open {self.path}: {exc.strerror or exc}") from exc
        start = f.seek(0, os.SEEK_END)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            self._rollback(start)
            raise DeliveryError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _rollback(self, size: int) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        # Closing may fail on the buffered tail we are discarding anyway; if truncating fails too, the retry
        # appends after the torn line, which a reader skips.
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.truncate(self.path, size)

    def shutdown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
