"""A thin adapter from DeepStream's batch metadata (pyds 1.2.0) to plain numpy dataclasses.

Nothing here imports ``pyds``: every function takes the ``pyds`` module as an argument, so the same code
runs against the real bindings on a Jetson and against a test double on a CPU machine.

Where the backbone's tensors are. nvinfer fed by nvdspreprocess (``input-tensor-from-meta=1``) attaches
one ``NvDsInferTensorMeta`` per preprocessed ROI, under
``batch_meta.batch_user_meta_list -> NVDS_PREPROCESS_BATCH_META -> roi_vector[i].roi_user_meta_list``;
each ROI's ``frame_meta`` is the frame that completed the clip. A full-frame nvinfer without
nvdspreprocess attaches it to ``frame_meta.frame_user_meta_list`` instead. :func:`frame_tensors` reads both.

Memory. Output layers are host buffers from nvinfer's pool (``output-tensor-meta=1`` copies them to the
host); they are reused as soon as the buffer moves on, so every array returned here is a copy.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FrameRef",
    "FrameTensors",
    "MetaError",
    "add_display_text",
    "batch_meta_of",
    "frame_refs",
    "frame_rgb",
    "frame_tensors",
    "iter_meta_list",
    "layer_array",
    "tensor_meta_arrays",
]

NS_PER_S = 1_000_000_000
#: GstBuffer PTS of "no timestamp" (GST_CLOCK_TIME_NONE).
CLOCK_TIME_NONE = (1 << 64) - 1


class MetaError(RuntimeError):
    """Metadata that cannot be read as expected (unknown data type, bad dims, a layer missing)."""


@dataclass(frozen=True)
class FrameRef:
    """One frame of a batch: ``meta`` is the pyds ``NvDsFrameMeta`` (valid only inside the probe)."""

    source_id: int
    batch_id: int
    frame_num: int
    pts_s: float
    meta: Any = field(repr=False, compare=False)


@dataclass
class FrameTensors:
    """The output tensors nvinfer attached for one frame (or one preprocessed ROI of it).

    ``tensors``: layer name -> array shaped as the layer's dims (no batch dimension), owned copies.
    ``pts_s``: the frame's buffer PTS in seconds (NaN when the buffer had none).
    """

    source_id: int
    frame_num: int
    pts_s: float
    tensors: dict[str, np.ndarray]


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


def _meta_type(pyds: Any, name: str) -> Any:
    """A ``NvDsMetaType`` member: pyds exposes it on the enum and, for some members, on the module."""
    value = getattr(pyds.NvDsMetaType, name, None)
    if value is None:
        value = getattr(pyds, name, None)
    if value is None:
        raise MetaError(f"pyds has no meta type {name}")
    return value


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


_CTYPES: dict[str, tuple[Any, Any]] = {
    "FLOAT": (ctypes.c_float, np.float32),
    "INT32": (ctypes.c_int32, np.int32),
    "INT8": (ctypes.c_int8, np.int8),
    "HALF": (ctypes.c_uint16, np.float16),  # no ctypes half: read the bits, reinterpret
}


def _dtype_name(pyds: Any, data_type: Any) -> str:
    for name in _CTYPES:
        if data_type == getattr(pyds.NvDsInferDataType, name, object()):
            return name
    raise MetaError(f"unsupported NvDsInferDataType {data_type!r}")


def _dims(layer: Any) -> tuple[int, ...]:
    dims = getattr(layer, "inferDims", None) or layer.dims
    n = int(dims.numDims)
    shape = tuple(int(d) for d in list(dims.d)[:n])
    if n < 1 or any(d < 1 for d in shape):
        raise MetaError(f"layer {layer.layerName}: bad dims {shape}")
    return shape


def layer_array(pyds: Any, layer: Any) -> np.ndarray:
    """A copy of one ``NvDsInferLayerInfo``'s host buffer, shaped by its dims (float16 becomes float32)."""
    shape = _dims(layer)
    ctype, dtype = _CTYPES[_dtype_name(pyds, layer.dataType)]
    address = pyds.get_ptr(layer.buffer)
    if not address:
        raise MetaError(f"layer {layer.layerName}: null host buffer (is output-tensor-meta=1 set?)")
    view = np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctype)), shape=shape)
    if dtype is np.float16:
        return view.view(np.float16).astype(np.float32)
    return np.array(view, dtype=dtype, copy=True)


def tensor_meta_arrays(
    pyds: Any, tensor_meta: Any, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Output layers of one ``NvDsInferTensorMeta`` by name (all, or only ``names``), as owned copies."""
    out: dict[str, np.ndarray] = {}
    for i in range(int(tensor_meta.num_output_layers)):
        layer = pyds.get_nvds_LayerInfo(tensor_meta, i)
        name = str(layer.layerName)
        if names is None or name in names:
            out[name] = layer_array(pyds, layer)
    if names is not None:
        missing = [n for n in names if n not in out]
        if missing:
            raise MetaError(
                f"tensor meta of gie {tensor_meta.unique_id} lacks layers {missing}; has {sorted(out)}"
            )
    return out


def _tensor_metas(pyds: Any, user_meta_list: Any, unique_id: int | None) -> Iterator[Any]:
    kind = _meta_type(pyds, "NVDSINFER_TENSOR_OUTPUT_META")
    for user_meta in iter_meta_list(user_meta_list, pyds.NvDsUserMeta.cast):
        if user_meta.base_meta.meta_type != kind:
            continue
        tensor_meta = pyds.NvDsInferTensorMeta.cast(user_meta.user_meta_data)
        if unique_id is None or int(tensor_meta.unique_id) == unique_id:
            yield tensor_meta


def frame_tensors(
    pyds: Any, batch_meta: Any, *, unique_id: int | None = None, names: Sequence[str] | None = None
) -> list[FrameTensors]:
    """The output tensors of nvinfer ``unique_id`` (``gie-unique-id``; None: any) in this batch.

    Reads the preprocess ROI metas (``input-tensor-from-meta``) first, then the frames' own user metas
    (full-frame nvinfer); one :class:`FrameTensors` per tensor meta found.
    """
    found: list[FrameTensors] = []
    preprocess = _meta_type(pyds, "NVDS_PREPROCESS_BATCH_META")
    for user_meta in iter_meta_list(batch_meta.batch_user_meta_list, pyds.NvDsUserMeta.cast):
        if user_meta.base_meta.meta_type != preprocess:
            continue
        batch = pyds.GstNvDsPreProcessBatchMeta.cast(user_meta.user_meta_data)
        for roi_meta in batch.roi_vector:
            frame = _frame_ref(roi_meta.frame_meta)
            for tensor_meta in _tensor_metas(pyds, roi_meta.roi_user_meta_list, unique_id):
                found.append(
                    FrameTensors(
                        frame.source_id,
                        frame.frame_num,
                        frame.pts_s,
                        tensor_meta_arrays(pyds, tensor_meta, names),
                    )
                )
    for frame in frame_refs(pyds, batch_meta):
        for tensor_meta in _tensor_metas(pyds, frame.meta.frame_user_meta_list, unique_id):
            found.append(
                FrameTensors(
                    frame.source_id,
                    frame.frame_num,
                    frame.pts_s,
                    tensor_meta_arrays(pyds, tensor_meta, names),
                )
            )
    return found


def frame_rgb(pyds: Any, gst_buffer: Any, batch_id: int, *, unmap: bool = False) -> np.ndarray:
    """A copy of one frame of an RGBA batch as ``(H, W, 3) uint8`` RGB.

    Needs ``video/x-raw(memory:NVMM),format=RGBA`` upstream and, on dGPU, CUDA unified memory
    (``nvbuf-memory-type=3``). On Jetson the surface stays mapped until ``unmap`` (pass True there).
    """
    surface = pyds.get_nvds_buf_surface(hash(gst_buffer), batch_id)
    try:
        rgba = np.asarray(surface)
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            raise MetaError(
                f"frame {batch_id}: expected an (H, W, 4) uint8 RGBA surface, got {rgba.shape} {rgba.dtype}"
            )
        return np.ascontiguousarray(rgba[:, :, :3])
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
