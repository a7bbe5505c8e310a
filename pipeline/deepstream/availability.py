"""Whether this machine can run the DeepStream graph: pyds and every DeepStream element. Imports on any
machine (it looks for pyds without importing it)."""

from __future__ import annotations

import importlib.util

from core.gst import missing_elements

__all__ = ["DEEPSTREAM_ELEMENTS", "DeepStreamUnavailable", "deepstream_unavailable_reason"]

# element -> what provides it
DEEPSTREAM_ELEMENTS = {
    "nvstreammux": "DeepStream 7.1 (deepstream-7.1 package or the nvcr.io/nvidia/deepstream image)",
    "nvurisrcbin": "DeepStream 7.1",
    "nvdsosd": "DeepStream 7.1",
    "nvvideoconvert": "DeepStream 7.1",
    "nvmultistreamtiler": "DeepStream 7.1",
}


class DeepStreamUnavailable(RuntimeError):
    """This machine cannot run the DeepStream graph (no pyds, or DeepStream elements missing); the message
    says what is missing."""


def deepstream_unavailable_reason() -> str | None:
    """``None`` when pyds and every DeepStream element are present, else a sentence saying what is missing."""
    if importlib.util.find_spec("pyds") is None:
        return (
            "the DeepStream Python bindings (pyds 1.2.0 for DeepStream 7.1) are not installed; they come as "
            "wheels from NVIDIA's deepstream_python_apps releases (the PyPI package 'pyds' is unrelated). "
            "Use --graph cpu on this machine, or deploy/jetson on a Jetson or dGPU box."
        )
    missing = missing_elements(DEEPSTREAM_ELEMENTS)
    if missing:
        provider = DEEPSTREAM_ELEMENTS[missing[0]]
        return f"GStreamer elements missing: {', '.join(missing)} (provided by {provider})"
    return None
