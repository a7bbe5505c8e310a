"""The C heap of a long run: fewer glibc malloc arenas, and free pages handed back to the system.

A run has dozens of native threads (GStreamer streaming threads, one encoder pipeline per event clip,
ONNX Runtime's pool). glibc gives busy threads their own malloc arena, up to 8 per core, and keeps freed
memory inside each arena; short-lived clip-writer threads then leave RSS creeping up long after their
buffers are freed. Capping the arenas and trimming now and then keeps RSS flat on a week-long run. Both
are glibc calls: on another C library (musl in an Alpine image) they are skipped and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable

__all__ = ["HeapKeeper", "limit_arenas", "trim"]

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # from glibc's <malloc.h>


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(lib, "mallopt") or not hasattr(lib, "malloc_trim"):
        return None
    return lib


def limit_arenas(count: int = 2) -> bool:
    """Let glibc create at most ``count`` malloc arenas from now on; ``False`` where that is not glibc,
    or where the user chose a number already with the ``MALLOC_ARENA_MAX`` environment variable."""
    if count < 1:
        raise ValueError(f"arena count must be >= 1, got {count}")
    if os.environ.get("MALLOC_ARENA_MAX"):
        log.info("MALLOC_ARENA_MAX=%s set by the environment: kept", os.environ["MALLOC_ARENA_MAX"])
        return False
    lib = _libc()
    if lib is None:
        log.info("not glibc: malloc arenas left as they are")
        return False
    return bool(lib.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(count)))


def trim() -> bool:
    """Return free heap pages to the system (``malloc_trim(0)``); ``True`` if any were released."""
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.malloc_trim(ctypes.c_size_t(0)))


class HeapKeeper:
    """Trims the heap at most every ``interval_s`` seconds; call :meth:`tick` from a loop that already
    wakes up regularly (the application's wait loop does, once a second)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._clock = clock
        self._last = self._clock()
        self.trims = 0

    def tick(self) -> bool:
        """Trim if the interval has passed; return whether it trimmed."""
        now = self._clock()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        trim()
        self.trims += 1
        return True
