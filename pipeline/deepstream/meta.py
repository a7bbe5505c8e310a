"""A thin adapter from DeepStream's batch metadata (pyds 1.2.0) to plain Python values.

Nothing here imports ``pyds``: every function takes the ``pyds`` module as an argument, so the same code
runs against the real bindings on a Jetson and against a test double on a CPU machine. It uses only names
that pyds 1.2.0 binds (NVIDIA-AI-IOT/deepstream_python_apps at tag v1.2.0, ``bindings/src``):
``gst_buffer_get_nvds_batch_meta``, ``NvDsBatchMeta.frame_meta_list``, ``NvDsFrameMeta.cast`` and its
``source_id``, ``batch_id``, ``frame_num``, ``buf_pts``; ``get_nvds_buf_surface`` and
``unmap_nvds_buf_surface``; ``nvds_acquire_display_meta_from_pool``, ``nvds_add_display_meta_to_frame`` and
``NvDsDisplayMeta.text_params``.

Frames. ``get_nvds_buf_surface`` returns an ``(H, W, 4)`` uint8 view of the RGBA surface, rows ``pitch``
bytes apart (bindfunctions.cpp): on dGPU over ``dataPtr`` (CUDA unified memory), on Jetson over the surface
it maps, which must be unmapped again. :func:`frame_rgb` copies the RGB channels out before unmapping, so
nothing downstream ever holds a view of DeepStream's pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FrameRef",
    "MetaError",
    "add_display_text",
    "batch_meta_of",
    "frame_refs",
    "frame_rgb",
    "iter_meta_list",
]

NS_PER_S = 1_000_000_000
#: GstBuffer PTS of "no timestamp" (GST_CLOCK_TIME_NONE).
CLOCK_TIME_NONE = (1 << 64) - 1


class MetaError(RuntimeError):
    """Metadata or a frame that cannot be read as expected (a frame that is not RGBA, an unknown source)."""


@dataclass(frozen=True)
class FrameRef:
    """One frame of a batch: ``meta`` is the pyds ``NvDsFrameMeta`` (valid only inside the probe)."""

    source_id: int
    batch_id: int
    frame_num: int
    pts_s: float
    meta: Any = field(repr=False, compare=False)


def iter_meta_list(node: Any, cast: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Walk a pyds ``GList`` (``.data`` / ``.next``, ``None`` at the end), yielding ``cast(node.data)``.

    The one place the linked-list walk lives: it always advances, whatever the caller does with the item.
    """
    while node is not None:
        data = node.data
        yield cast(data) if cast is not None else data
        node = node.next


def batch_meta_of(pyds: Any, gst_buffer: Any) -> Any | None:
    """The ``NvDsBatchMeta`` of a ``Gst.Buffer``, or None when it carries none."""
    return pyds.gst_buffer_get_nvds_batch_meta(hash(gst_buffer))


def _pts_s(buf_pts: int) -> float:
    return float("nan") if buf_pts in (CLOCK_TIME_NONE, -1) else buf_pts / NS_PER_S


def _frame_ref(frame_meta: Any) -> FrameRef:
    return FrameRef(
        source_id=int(frame_meta.source_id),
        batch_id=int(frame_meta.batch_id),
        frame_num=int(frame_meta.frame_num),
        pts_s=_pts_s(int(frame_meta.buf_pts)),
        meta=frame_meta,
    )


def frame_refs(pyds: Any, batch_meta: Any) -> list[FrameRef]:
    """Every frame of the batch, in batch order."""
    return [_frame_ref(f) for f in iter_meta_list(batch_meta.frame_meta_list, pyds.NvDsFrameMeta.cast)]


def frame_rgb(pyds: Any, gst_buffer: Any, batch_id: int, *, unmap: bool = False) -> np.ndarray:
    """A copy of one frame of an RGBA batch as ``(H, W, 3) uint8`` RGB, C-contiguous, owned by the caller.

    Needs ``video/x-raw(memory:NVMM),format=RGBA`` upstream and, on dGPU, CUDA unified memory
    (``nvbuf-memory-type`` 3). On Jetson ``get_nvds_buf_surface`` maps the surface, which stays mapped until
    ``unmap_nvds_buf_surface``: pass ``unmap=True`` there; the copy is made before the unmap.
    """
    surface = pyds.get_nvds_buf_surface(hash(gst_buffer), batch_id)
    try:
        rgba = np.asarray(surface)
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            raise MetaError(
                f"frame {batch_id}: expected an (H, W, 4) uint8 RGBA surface, got {rgba.shape} {rgba.dtype}"
            )
        # The view's rows are `pitch` bytes apart and its memory is the pool's: copy the RGB planes out.
        return np.array(rgba[:, :, :3], dtype=np.uint8, order="C", copy=True)
    finally:
        if unmap:
            pyds.unmap_nvds_buf_surface(hash(gst_buffer), batch_id)


def add_display_text(
    pyds: Any,
    batch_meta: Any,
    frame_meta: Any,
    text: str,
    *,
    x: int = 12,
    y: int = 12,
    font_size: int = 14,
    color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    background: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.6),
) -> None:
    """Attach one line of on-screen text to a frame (drawn by nvdsosd). Display metas come from the pool,
    never from constructors, so DeepStream owns the memory."""
    display_meta = pyds.nvds_acquire_display_meta_from_pool(batch_meta)
    display_meta.num_labels = 1
    params = display_meta.text_params[0]
    params.display_text = text
    params.x_offset = x
    params.y_offset = y
    params.font_params.font_name = "Serif"
    params.font_params.font_size = font_size
    params.font_params.font_color.set(*color)
    params.set_bg_clr = 1
    params.text_bg_clr.set(*background)
    pyds.nvds_add_display_meta_to_frame(frame_meta, display_meta)
