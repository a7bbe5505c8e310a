"""Whether the DeepStream graph can run here. The graph itself needs pyds and the NVIDIA elements."""

from __future__ import annotations

import importlib.util

__all__ = ["DEEPSTREAM_ELEMENTS", "deepstream_unavailable_reason"]

# element -> what provides it
DEEPSTREAM_ELEMENTS = {
    "nvstreammux": "DeepStream 7.1 (deepstream-7.1 package or the nvcr.io/nvidia/deepstream image)",
    "nvdspreprocess": "DeepStream 7.1",
    "nvinfer": "DeepStream 7.1",
    "nvurisrcbin": "DeepStream 7.1",
    "nvdsosd": "DeepStream 7.1",
    "nvvideoconvert": "DeepStream 7.1",
}


def deepstream_unavailable_reason() -> str | None:
    """``None`` when pyds and every DeepStream element are present, else a sentence saying what is missing."""
    if importlib.util.find_spec("pyds") is None:
        return (
            "the DeepStream Python bindings (pyds 1.2.0 for DeepStream 7.1) are not installed; they come as "
            "wheels from NVIDIA's deepstream_python_apps releases (the PyPI package 'pyds' is unrelated). "
            "Use --graph cpu on this machine, or deploy/jetson on a Jetson or dGPU box."
        )
    from pipeline.gst import init_gstreamer

    gst = init_gstreamer()
    missing = [name for name in DEEPSTREAM_ELEMENTS if gst.ElementFactory.find(name) is None]
    if missing:
        return f"GStreamer elements missing: {', '.join(missing)} (provided by {DEEPSTREAM_ELEMENTS[missing[0]]})"
    return None
