"""Writing synthetic clips to disk: JPEG frames, 1-bit PNG masks, JSON labels, H.264 MP4.

The MP4 goes through GStreamer (``appsrc ! videoconvert ! I420 ! x264enc ! h264parse ! mp4mux !
filesink``); ``gi`` is imported only when a video is written.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from core.gst import package_for
from synth.scene import SynthError

log = logging.getLogger(__name__)

JPEG_QUALITY = 90


class VideoEncodeError(SynthError):
    """GStreamer could not be loaded, or the encoding pipeline failed."""


class GstElementMissingError(VideoEncodeError):
    """A GStreamer element is not installed."""

    def __init__(self, element: str) -> None:
        self.element = element
        self.package = package_for(element)
        super().__init__(f"GStreamer element {element!r} is missing; install {self.package}")


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


def _gst() -> Any:
    """The initialised ``Gst`` module (imported lazily: only video writing needs it)."""
    from core.gst import GstUnavailable, init_gstreamer

    try:
        return init_gstreamer()
    except GstUnavailable as exc:
        raise VideoEncodeError(f"{exc}; or pass --no-video") from exc


class Mp4Writer:
    """Streams ``(H, W, 3)`` uint8 RGB frames into an H.264 MP4 at a constant frame rate.

    Use as a context manager; ``close()`` sends end-of-stream and waits until the file is finalised.
    On an exception inside the ``with`` block the partial file is removed.
    """

    def __init__(self, path: Path, width: int, height: int, fps: int, timeout_s: float = 120.0) -> None:
        if width % 2 or height % 2:
            raise VideoEncodeError(f"H.264 (4:2:0) needs an even frame size, got {width}x{height}")
        if fps < 1:
            raise VideoEncodeError(f"fps must be >= 1, got {fps}")
        gst = _gst()
        self.path = path
        self.width = width
        self.height = height
        self.fps = fps
        self.timeout_s = timeout_s
        self.frames = 0
        self._gst = gst
        self._pipeline = gst.Pipeline.new(f"mp4-{path.stem}")
        elements = []
        for factory in ("appsrc", "videoconvert", "capsfilter", "x264enc", "h264parse", "mp4mux", "filesink"):
            element = gst.ElementFactory.make(factory, None)
            if element is None:
                raise GstElementMissingError(factory)
            self._pipeline.add(element)
            elements.append(element)
        src, _, caps_filter, encoder, _, _, sink = elements
        src.set_property(
            "caps",
            gst.Caps.from_string(f"video/x-raw,format=RGBx,width={width},height={height},framerate={fps}/1"),
        )
        src.set_property("format", gst.Format.TIME)
        src.set_property("is-live", False)
        src.set_property("block", True)
        # 4:2:0 so every H.264 decoder (Jetson's included) can play it; x264 would pick 4:4:4 for RGB.
        caps_filter.set_property("caps", gst.Caps.from_string("video/x-raw,format=I420"))
        encoder.set_property("key-int-max", fps)
        encoder.set_property("threads", 1)
        encoder.set_property("bframes", 0)
        gst.util_set_object_arg(encoder, "speed-preset", "ultrafast")
        gst.util_set_object_arg(encoder, "tune", "zerolatency")
        sink.set_property("location", str(path))
        for upstream, downstream in itertools.pairwise(elements):
            if not upstream.link(downstream):
                names = (upstream.get_factory().get_name(), downstream.get_factory().get_name())
                raise VideoEncodeError(f"cannot link {names[0]} -> {names[1]}")
        self._src = src
        self._rgbx = np.zeros((height, width, 4), dtype=np.uint8)
        self._closed = False
        if self._pipeline.set_state(gst.State.PLAYING) == gst.StateChangeReturn.FAILURE:
            self._pipeline.set_state(gst.State.NULL)
            raise VideoEncodeError(f"encoding pipeline for {path} refused to start")

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame."""
        gst = self._gst
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise VideoEncodeError(
                f"frame must be ({self.height}, {self.width}, 3) uint8, got {frame.shape} {frame.dtype}"
            )
        self._rgbx[..., :3] = frame
        buf = gst.Buffer.new_wrapped(self._rgbx.tobytes())
        buf.pts = self.frames * gst.SECOND // self.fps
        buf.duration = (self.frames + 1) * gst.SECOND // self.fps - buf.pts
        flow = self._src.emit("push-buffer", buf)
        if flow != gst.FlowReturn.OK:
            self._raise_bus_error(f"appsrc refused frame {self.frames} ({flow.value_nick})")
        self.frames += 1

    def _raise_bus_error(self, fallback: str) -> None:
        gst = self._gst
        msg = self._pipeline.get_bus().pop_filtered(gst.MessageType.ERROR)
        if msg is not None:
            err, debug = msg.parse_error()
            raise VideoEncodeError(f"{msg.src.get_name()}: {err.message} ({debug})")
        raise VideoEncodeError(fallback)

    def close(self) -> None:
        """Finish the file: end-of-stream, wait for it to reach the sink, stop the pipeline."""
        if self._closed:
            return
        self._closed = True
        gst = self._gst
        try:
            self._src.emit("end-of-stream")
            bus = self._pipeline.get_bus()
            msg = bus.timed_pop_filtered(
                int(self.timeout_s * gst.SECOND), gst.MessageType.EOS | gst.MessageType.ERROR
            )
            if msg is None:
                raise VideoEncodeError(f"encoding {self.path} did not finish within {self.timeout_s:.0f} s")
            if msg.type == gst.MessageType.ERROR:
                err, debug = msg.parse_error()
                raise VideoEncodeError(f"{msg.src.get_name()}: {err.message} ({debug})")
        finally:
            self._pipeline.set_state(gst.State.NULL)
        log.debug("wrote %s (%d frames)", self.path, self.frames)

    def abort(self) -> None:
        """Stop without finalising and delete the partial file."""
        if not self._closed:
            self._closed = True
            self._pipeline.set_state(self._gst.State.NULL)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
