"""The DeepStream graph (Jetson Orin / dGPU, DeepStream 7.1, pyds 1.2.0).

* :mod:`pipeline.deepstream.render`: the nvstreammux / nvdspreprocess / nvinfer key files, generated from
  the typed config and the engine manifests (never hand-edited).
* :mod:`pipeline.deepstream.graph`: the element plan, checked element creation and linking, the bus policy
  and the main loop.
* :mod:`pipeline.deepstream.app`: ``zsad run --graph deepstream``: engines, per-camera alerts, the score
  probe (:mod:`pipeline.deepstream.probe`) and the graph.

This package imports on any machine: ``gi``/``Gst`` and ``pyds`` are imported only when a graph is built.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from core.gst import missing_elements

if TYPE_CHECKING:
    from core.config import ZsadConfig

__all__ = ["DEEPSTREAM_ELEMENTS", "DeepStreamUnavailable", "deepstream_unavailable_reason", "run_deepstream"]

# element -> what provides it
DEEPSTREAM_ELEMENTS = {
    "nvstreammux": "DeepStream 7.1 (deepstream-7.1 package or the nvcr.io/nvidia/deepstream image)",
    "nvdspreprocess": "DeepStream 7.1",
    "nvinfer": "DeepStream 7.1",
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


def run_deepstream(cfg: ZsadConfig, *, duration_s: float | None = None, **kwargs: Any) -> int:
    """Run ``cfg``'s cameras through the DeepStream graph (:func:`pipeline.deepstream.app.run_deepstream`,
    which raises :class:`DeepStreamUnavailable` on a machine without it)."""
    from pipeline.deepstream.app import run_deepstream as run

    return run(cfg, duration_s=duration_s, **kwargs)
