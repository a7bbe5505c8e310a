"""Writing synthetic clips to disk: JPEG frames, 1-bit PNG masks, JSON labels, H.264 MP4.

The MP4 goes through the GStreamer toolkit's writer (:class:`core.gst.mp4.Mp4Writer`); ``gi`` is imported
only when a video is written. Its failures reach the caller as :class:`VideoEncodeError`, a
:class:`~synth.scene.SynthError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.gst import GstError, GstUnavailable
from core.gst.mp4 import Mp4Writer
from synth.scene import SynthError

JPEG_QUALITY = 90


class VideoEncodeError(SynthError):
    """GStreamer could not be loaded, or the encoding pipeline failed."""


def frame_name(index: int, n_frames: int, suffix: str) -> str:
    """File name of 0-based frame ``index``: 1-based, zero-padded to 3 digits (more past 999)."""
    digits = max(3, len(str(n_frames)))
    return f"{index + 1:0{digits}d}{suffix}"


def write_jpeg(path: Path, frame: np.ndarray) -> None:
    """``frame``: ``(H, W, 3)`` uint8 RGB."""
    Image.fromarray(frame).save(path, format="JPEG", quality=JPEG_QUALITY)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """``mask``: ``(H, W)`` bool, written as a 1-bit PNG (True = abnormal pixel)."""
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(path, format="PNG")


def write_json(path: Path, payload: Any) -> None:
    """Write atomically (temp file + rename) so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def video_errors(path: Path) -> Iterator[None]:
    """Inside, a GStreamer failure while writing the video ``path`` is raised as :class:`VideoEncodeError`
    (which the ``zsad synth`` command reports), the toolkit's error kept as its cause."""
    try:
        yield
    except GstUnavailable as exc:
        raise VideoEncodeError(f"{exc}; or pass --no-video") from exc
    except GstError as exc:
        raise VideoEncodeError(f"{path}: {exc}") from exc


def open_video(path: Path, width: int, height: int, fps: int) -> Mp4Writer:
    """An MP4 writer for one synthetic clip: frames on the exact ``fps`` grid, a keyframe every second
    and no B-frames (each second decodes on its own). :class:`VideoEncodeError` if it cannot start."""
    with video_errors(path):
        return Mp4Writer(path, width, height, fps, keyframe_interval=fps, zerolatency=True, timeout_s=120.0)
