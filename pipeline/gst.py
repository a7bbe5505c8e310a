"""The one place GStreamer is initialised.

libgstreamer links libunwind: unless libgcc_s's unwinder is loaded globally before ``Gst.init()``, a C++
exception in a module loaded later (matplotlib's ft2font on import) aborts the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any

__all__ = ["GstUnavailable", "init_gstreamer"]

_lock = threading.Lock()
_gst: Any = None


class GstUnavailable(RuntimeError):
    """GStreamer or its Python bindings are missing."""


def init_gstreamer() -> Any:
    """Return the initialised ``Gst`` module (idempotent, thread-safe)."""
    global _gst
    with _lock:
        if _gst is not None:
            return _gst
        with contextlib.suppress(OSError):
            ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)
        try:
            import gi

            gi.require_version("Gst", "1.0")
            from gi.repository import Gst
        except (ImportError, ValueError) as exc:
            raise GstUnavailable(
                "GStreamer Python bindings are missing: install gir1.2-gstreamer-1.0 and PyGObject<3.51 "
                "(make setup does both)"
            ) from exc
        Gst.init(None)
        _gst = Gst
        return Gst
