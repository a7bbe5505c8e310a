"""The GStreamer toolkit: the one place outside the DeepStream wing that imports ``gi``.

* :func:`init_gstreamer` returns ``Gst``, imported and initialised once; :func:`load_typelib` returns the
  other GObject namespaces zsad uses (``GLib``, ``GstApp``, ``GstVideo``, ``GstRtspServer``).
* :func:`make`, :func:`link` and :func:`link_pads` create and link elements, raising
  :class:`ElementMissingError` (naming the package that provides the element) and :class:`LinkError`
  where GStreamer returns None or False.
* :mod:`core.gst.frames` reads a sample or buffer out as an RGB array (row strides, I420 colour).
* :mod:`core.gst.mp4` is the one H.264 MP4 writer.

Importing this package does not import ``gi``: only code that really runs GStreamer needs the bindings.

libgstreamer links libunwind: unless libgcc_s's unwinder is loaded globally before ``Gst.init()``, a C++
exception in a module loaded later (matplotlib's ft2font on import) aborts the process.

The Python classes of the plain structs that streaming threads use (``Gst.MapInfo``, ``Gst.PadProbeInfo``)
are created during :func:`init_gstreamer`, before any pipeline runs: PyGObject creates them lazily and, for
a struct without a GType, can create two at once (see :func:`_bind_plain_structs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import threading
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEBIAN_PACKAGES",
    "ElementMissingError",
    "GstError",
    "GstUnavailable",
    "LinkError",
    "TypelibMissingError",
    "elements_of",
    "init_gstreamer",
    "link",
    "link_pads",
    "load_typelib",
    "make",
    "missing_elements",
    "package_for",
]

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

# GObject namespace -> (version, the Debian package of its typelib) for load_typelib.
_TYPELIBS: dict[str, tuple[str, str]] = {
    "Gst": ("1.0", "gir1.2-gstreamer-1.0"),
    "GstApp": ("1.0", "gir1.2-gst-plugins-base-1.0"),
    "GstVideo": ("1.0", "gir1.2-gst-plugins-base-1.0"),
    "GstRtspServer": ("1.0", "gir1.2-gst-rtsp-server-1.0"),
    "GLib": ("2.0", "gir1.2-glib-2.0"),
}


def package_for(element: str) -> str:
    """The package that provides a stock GStreamer element, or a generic hint."""
    return DEBIAN_PACKAGES.get(element, "a GStreamer plugins package")


class GstError(RuntimeError):
    """Something GStreamer was asked to do could not be done (the toolkit's errors derive from it)."""


class GstUnavailable(GstError):
    """GStreamer or its Python bindings are missing."""


class TypelibMissingError(GstUnavailable):
    """A GObject typelib (``gi.repository.<namespace>``) is not installed. ``namespace``, ``version`` and
    ``package`` (the Debian/Ubuntu package that ships it) name what is missing."""

    def __init__(self, namespace: str, version: str, package: str, reason: str = "") -> None:
        self.namespace = namespace
        self.version = version
        self.package = package
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"the GObject typelib {namespace} {version} is missing: apt-get install {package}{detail}"
        )


class ElementMissingError(GstError):
    """A GStreamer element factory is not installed. ``element`` names it, ``package`` what provides it."""

    def __init__(self, element: str, package: str | None = None) -> None:
        self.element = element
        self.package = package or package_for(element)
        # An apt-get line only where the provider is a Debian package name, not a sentence (DeepStream).
        hint = f" (apt-get install {self.package})" if self.package in DEBIAN_PACKAGES.values() else ""
        super().__init__(f"GStreamer element {element!r} is missing: it is provided by {self.package}{hint}")


class LinkError(GstError):
    """Two elements or pads could not be linked (incompatible caps, a missing pad, another bin)."""


_lock = threading.Lock()
_gst: Any = None
_typelibs: dict[str, Any] = {}


def init_gstreamer() -> Any:
    """Return the initialised ``Gst`` module (idempotent, thread-safe)."""
    global _gst
    if _gst is not None:  # the common case, without the lock: the probes and sources call this per frame
        return _gst
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
        _bind_plain_structs(Gst)
        _gst = Gst
        return Gst


# Introspected structs without a GType that zsad's streaming threads touch: a buffer's map info (every
# frame read, core.gst.frames) and a pad probe's info (the probes of the DeepStream wing and the benches).
_PLAIN_STRUCTS = ("MapInfo", "PadProbeInfo")


def elements_of(bin_: Any) -> list[Any]:
    """Every element inside the ``Gst.Bin`` ``bin_``, at any depth (the walk starts again if the bin changes
    under it)."""
    Gst = init_gstreamer()
    found: list[Any] = []
    it = bin_.iterate_recurse()
    while True:
        result, element = it.next()
        if result == Gst.IteratorResult.RESYNC:
            it.resync()
            found.clear()
            continue
        if result != Gst.IteratorResult.OK:
            return found
        found.append(element)


def _bind_plain_structs(Gst: Any) -> None:
    """Create PyGObject's Python class of each struct in :data:`_PLAIN_STRUCTS` now, on one thread.

    PyGObject builds a struct's Python class on first use and de-duplicates classes by GType only.
    ``GstMapInfo`` has none, so when several streaming threads read their first frame at the same moment
    (cameras started together), each can build its own ``MapInfo`` class: ``Buffer.map`` then returns
    one class and ``Buffer.unmap`` checks for the other, and every later unmap in the process raises
    ``TypeError: argument info: Expected Gst.MapInfo, but got gi.repository.Gst.MapInfo``. The CPU graph
    then delivers no frame at all and every camera stays ``starting`` (measured: 1 start in 64 of 32
    file cameras, 3 in 20 fresh processes of 16 threads mapping at once; none once bound here). Once the
    class is cached on the ``Gst`` module, every later lookup returns it. The map and unmap of a small
    buffer also builds both calls' argument caches here, with that class.
    """
    for name in _PLAIN_STRUCTS:
        getattr(Gst, name)
    buf = Gst.Buffer.new_wrapped(bytes(4))
    ok, info = buf.map(Gst.MapFlags.READ)
    if ok:
        buf.unmap(info)


def load_typelib(namespace: str) -> Any:
    """``gi.repository.<namespace>`` at the version zsad is written for (``GLib``, ``GstApp``,
    ``GstVideo``, ``GstRtspServer``; ``Gst`` is :func:`init_gstreamer`). GStreamer is initialised first,
    so a ``Gst*`` library is ready to use. Raises :class:`TypelibMissingError` (a :class:`GstUnavailable`)
    naming the package to install, e.g. ``gir1.2-gst-rtsp-server-1.0`` for ``GstRtspServer``, which the
    DeepStream images lack."""
    if namespace not in _TYPELIBS:
        raise ValueError(f"unknown GObject namespace {namespace!r}; known: {sorted(_TYPELIBS)}")
    if namespace == "Gst":
        return init_gstreamer()
    module = _typelibs.get(namespace)
    if module is not None:
        return module
    init_gstreamer()
    version, package = _TYPELIBS[namespace]
    with _lock:
        try:
            import gi

            gi.require_version(namespace, version)
            module = importlib.import_module(f"gi.repository.{namespace}")
        except (ImportError, ValueError) as exc:
            raise TypelibMissingError(namespace, version, package, str(exc)) from exc
        _typelibs[namespace] = module
    return module


def missing_elements(factories: Iterable[str]) -> list[str]:
    """The factories in ``factories`` that are not installed, in order."""
    Gst = init_gstreamer()
    return [name for name in factories if Gst.ElementFactory.find(name) is None]


def make(factory: str, name: str | None = None, *, package: str | None = None, **props: Any) -> Any:
    """``Gst.ElementFactory.make`` that raises :class:`ElementMissingError` instead of returning None.

    ``package`` names what provides ``factory`` when it is not a stock element (default:
    :func:`package_for`). ``props`` are set on the new element; ``_`` in a name stands for ``-``
    (``max_size_buffers=2`` sets ``max-size-buffers``).
    """
    element = init_gstreamer().ElementFactory.make(factory, name)
    if element is None:
        raise ElementMissingError(factory, package)
    for key, value in props.items():
        element.set_property(key.replace("_", "-"), value)
    return element


def link(*elements: Any) -> None:
    """Link ``elements`` in a chain (``a -> b -> c``); :class:`LinkError` names the first pair that fails."""
    for upstream, downstream in itertools.pairwise(elements):
        if not upstream.link(downstream):
            raise LinkError(f"cannot link {upstream.get_name()} -> {downstream.get_name()}")


def link_pads(src: Any, sink: Any) -> None:
    """Link pad ``src`` to pad ``sink``; :class:`LinkError` with GStreamer's reason when it fails."""
    result = src.link(sink)
    if result != init_gstreamer().PadLinkReturn.OK:
        raise LinkError(f"cannot link {_pad_path(src)} -> {_pad_path(sink)} ({result.value_nick})")


def _pad_path(pad: Any) -> str:
    parent = pad.get_parent()
    return f"{parent.get_name()}:{pad.get_name()}" if parent is not None else str(pad.get_name())
