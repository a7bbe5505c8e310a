"""Video frames out of GStreamer buffers: an appsink sample or buffer read as a ``(H, W, 3)`` uint8 RGB array.

Buffers are in GStreamer's default layout for their caps (what an appsink is given: it does not accept
``GstVideoMeta``, so producers cannot hand it another layout). For packed RGB that layout pads every row
to a multiple of 4 bytes, so the row stride is not ``W*3`` whenever ``W*3 % 4 != 0``; :func:`rgb_stride`
also accepts tightly packed rows, which some producers push. ``GstVideo.VideoInfo`` is avoided on purpose:
``from_caps`` crashed when called from several streaming threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.gst import GstError, init_gstreamer

__all__ = [
    "FrameError",
    "VideoCaps",
    "copy_rgb",
    "i420_to_rgb",
    "pts_seconds",
    "rgb_stride",
    "sample_to_rgb",
    "video_caps",
    "yuv_matrix",
]


class FrameError(GstError):
    """A sample or buffer cannot be read as the frame its caps describe."""


@dataclass(frozen=True)
class VideoCaps:
    """The parts of raw video caps a frame reader needs."""

    format: str
    width: int
    height: int
    colorimetry: str | None


def video_caps(sample: Any, formats: tuple[str, ...] = ("RGB",)) -> VideoCaps:
    """The raw video caps of a ``Gst.Sample``; :class:`FrameError` when its format is not one of
    ``formats`` or its size is missing."""
    caps = sample.get_caps()
    st = caps.get_structure(0) if caps is not None and caps.get_size() else None
    fmt = st.get_string("format") if st is not None else None
    if st is None or fmt not in formats:
        want = " or ".join(formats)
        raise FrameError(f"expected {want} frames, got {caps.to_string() if caps is not None else None}")
    ok_w, width = st.get_int("width")
    ok_h, height = st.get_int("height")
    if not (ok_w and ok_h) or width < 1 or height < 1:
        raise FrameError(f"video caps without a size: {caps.to_string()}")
    return VideoCaps(fmt, width, height, st.get_string("colorimetry"))


def pts_seconds(buf: Any) -> float | None:
    """A buffer's presentation time in seconds, None when unset."""
    Gst = init_gstreamer()
    return None if buf.pts == Gst.CLOCK_TIME_NONE else buf.pts / Gst.SECOND


def _round4(n: int) -> int:
    return (n + 3) & ~3


def rgb_stride(width: int, height: int, size: int) -> int:
    """The row stride in bytes of a packed RGB buffer of ``size`` bytes holding ``width`` x ``height``.

    GStreamer's default (rows padded to 4 bytes) when the size fits it exactly; otherwise rows of
    ``size / height`` bytes when that divides evenly and holds a row (tightly packed rows among them);
    otherwise the default again if the buffer is long enough for it (extra bytes at the end).
    :class:`FrameError` when no stride fits.
    """
    row = width * 3
    default = _round4(row)
    if size == default * height:
        return default
    if size % height == 0 and size // height >= row:
        return size // height
    if size >= default * (height - 1) + row:
        return default
    raise FrameError(f"video buffer of {size} bytes is smaller than {width}x{height} RGB")


def copy_rgb(buf: Any, width: int, height: int) -> np.ndarray:
    """A fresh C-contiguous ``(H, W, 3)`` uint8 copy of a packed RGB ``Gst.Buffer``, row padding removed."""
    stride = rgb_stride(width, height, buf.get_size())
    ok, mapinfo = buf.map(init_gstreamer().MapFlags.READ)
    if not ok:
        raise FrameError("cannot map a video buffer for reading")
    try:  # copy while mapped: with gst-python's overrides, data is a view that unmap releases
        need = stride * (height - 1) + width * 3
        if mapinfo.size < need:
            raise FrameError(
                f"video buffer of {mapinfo.size} bytes is smaller than {need} ({width}x{height})"
            )
        raw = np.frombuffer(mapinfo.data, dtype=np.uint8, count=need)
        rows = np.lib.stride_tricks.as_strided(raw, shape=(height, width * 3), strides=(stride, 1))
        return np.array(rows, dtype=np.uint8, copy=True).reshape(height, width, 3)
    finally:
        buf.unmap(mapinfo)


def sample_to_rgb(sample: Any) -> np.ndarray:
    """A fresh ``(H, W, 3)`` uint8 copy of an RGB ``Gst.Sample`` (an appsink's), row padding removed."""
    caps = video_caps(sample)
    return copy_rgb(sample.get_buffer(), caps.width, caps.height)


# (Kr, Kb) of the YCbCr matrices GStreamer names, by its colorimetry matrix code (GstVideoColorMatrix).
_YUV_MATRICES = {
    2: (0.30, 0.11),
    3: (0.2126, 0.0722),
    4: (0.299, 0.114),
    5: (0.212, 0.087),
    6: (0.2627, 0.0593),
}


def yuv_matrix(colorimetry: str | None, height: int) -> tuple[bool, tuple[float, float]]:
    """``(full_range, (Kr, Kb))`` for a caps ``colorimetry`` string: a name (``bt601``, ``bt709``,
    ``bt2020``, ``smpte240m``, ``sRGB``) or GStreamer's ``range:matrix:transfer:primaries`` codes. Unset:
    limited range and GStreamer's default matrix for the height (BT.601 up to 576 lines, BT.709 above,
    BT.2020 from 2160)."""
    default = _YUV_MATRICES[4 if height <= 576 else 3 if height < 2160 else 6]
    text = (colorimetry or "").lower()
    parts = text.split(":")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        full = parts[0] == "1"
        return full, _YUV_MATRICES.get(int(parts[1]), default)
    if "srgb" in text:
        return True, _YUV_MATRICES[3]
    for key, code in (("709", 3), ("601", 4), ("2020", 6), ("2100", 6), ("240m", 5)):
        if key in text:
            return False, _YUV_MATRICES[code]
    return False, default


def i420_to_rgb(buf: Any, width: int, height: int, colorimetry: str | None = None) -> np.ndarray:
    """A fresh ``(H, W, 3)`` uint8 RGB image from an I420 ``Gst.Buffer`` in GStreamer's default layout
    (luma rows padded to 4 bytes, chroma at half size rounded up, each plane's rows padded to 4), with
    the matrix and range of ``colorimetry`` (:func:`yuv_matrix`)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    y_stride, c_stride = _round4(width), _round4(cw)
    u_off = y_stride * (height + (height & 1))
    v_off = u_off + c_stride * ch
    size = v_off + c_stride * ch
    ok, mapinfo = buf.map(init_gstreamer().MapFlags.READ)
    if not ok:
        raise FrameError("cannot map a video buffer for reading")
    try:  # read the planes while mapped: with gst-python's overrides, data is a view that unmap releases
        if mapinfo.size < size:
            raise FrameError(f"I420 buffer of {mapinfo.size} bytes is smaller than {size} ({width}x{height})")
        data = np.frombuffer(mapinfo.data, dtype=np.uint8, count=size)
        y = data[: y_stride * height].reshape(height, y_stride)[:, :width].astype(np.float32)
        u = data[u_off:v_off].reshape(ch, c_stride)[:, :cw].astype(np.float32)
        v = data[v_off:size].reshape(ch, c_stride)[:, :cw].astype(np.float32)
        del data
    finally:
        buf.unmap(mapinfo)
    # 4:2:0 chroma: each sample covers 2x2 pixels.
    u = np.repeat(np.repeat(u, 2, axis=0), 2, axis=1)[:height, :width] - 128.0
    v = np.repeat(np.repeat(v, 2, axis=0), 2, axis=1)[:height, :width] - 128.0
    full, (kr, kb) = yuv_matrix(colorimetry, height)
    if not full:
        y = (y - 16.0) * (255.0 / 219.0)
        u *= 255.0 / 224.0
        v *= 255.0 / 224.0
    kg = 1.0 - kr - kb
    rgb = np.empty((height, width, 3), np.float32)
    rgb[..., 0] = y + 2.0 * (1.0 - kr) * v
    rgb[..., 1] = y - (2.0 * kb * (1.0 - kb) / kg) * u - (2.0 * kr * (1.0 - kr) / kg) * v
    rgb[..., 2] = y + 2.0 * (1.0 - kb) * u
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
