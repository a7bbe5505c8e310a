"""The one place GStreamer is initialised.

libgstreamer links libunwind: unless libgcc_s's unwinder is loaded globally before ``Gst.init()``, a C++
exception in a module loaded later (matplotlib's ft2font on import) aborts the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any

__all__ = ["DEBIAN_PACKAGES", "GstUnavailable", "init_gstreamer", "package_for"]

# The Debian/Ubuntu package that ships each stock element zsad creates (named in missing-element errors).
DEBIAN_PACKAGES: dict[str, str] = {
    "filesrc": "libgstreamer1.0-0",
    "filesink": "libgstreamer1.0-0",
    "capsfilter": "libgstreamer1.0-0",
    "queue": "libgstreamer1.0-0",
    "tee": "libgstreamer1.0-0",
    "fakesink": "libgstreamer1.0-0",
    "appsrc": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "decodebin": "gstreamer1.0-plugins-base",
    "uridecodebin": "gstreamer1.0-plugins-base",
    "videorate": "gstreamer1.0-plugins-base",
    "videoconvert": "gstreamer1.0-plugins-base",
    "videoscale": "gstreamer1.0-plugins-base",
    "rtspsrc": "gstreamer1.0-plugins-good",
    "v4l2src": "gstreamer1.0-plugins-good",
    "souphttpsrc": "gstreamer1.0-plugins-good",
    "mp4mux": "gstreamer1.0-plugins-good",
    "qtdemux": "gstreamer1.0-plugins-good",
    "h264parse": "gstreamer1.0-plugins-bad",
    "x264enc": "gstreamer1.0-plugins-ugly",
    "avdec_h264": "gstreamer1.0-libav",
}


def package_for(element: str) -> str:
    """The package that provides a stock GStreamer element, or a generic hint."""
    return DEBIAN_PACKAGES.get(element, "a GStreamer plugins package")


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
