"""The one H.264 MP4 writer: ``appsrc ! videoconvert ! I420 ! x264enc ! h264parse ! mp4mux ! filesink``.

Used by the event clip recorder (``pipeline/outputs/media.py``: frames pushed as they arrive, on a clip
thread) and by the synthetic dataset writer (``synth/``: frame by frame on a fixed grid).

``appsrc`` never blocks: a blocking push never returns once the streaming thread has stopped on an error
(a full disk), so :meth:`Mp4Writer.write` waits for room itself while watching the bus, and an ERROR on the
bus becomes an :class:`Mp4Error` at the next write or at :meth:`Mp4Writer.close`.
"""

from __future__ import annotations

import logging
import time
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from core.gst import GstError, init_gstreamer, link, make

__all__ = ["QUEUE_BYTES", "Mp4Error", "Mp4Writer"]

log = logging.getLogger(__name__)

# Raw frames allowed to wait inside appsrc before a write waits for the encoder (a few frames at
# surveillance sizes; always at least two frames).
QUEUE_BYTES = 4 * 1024 * 1024

# How long one wait for room blocks on the bus before looking at appsrc's level again.
_POLL_NS = 20_000_000


class Mp4Error(GstError):
    """The encoding pipeline failed: it would not start, refused a frame, posted an ERROR, stalled, or did
    not finish in time; or it was handed a frame it cannot take."""


class Mp4Writer:
    """Encodes frames into one H.264 MP4 at ``path``.

    Frames are ``(height, width, 3)`` uint8 RGB arrays (:meth:`write`) or, when ``input_caps`` is given
    (raw video caps such as ``video/x-raw,format=I420,width=320,height=240``), ``Gst.Buffer`` objects in
    that format (:meth:`write_buffer`: a decoder's buffer goes in without a copy or a conversion). Either
    way the file is 4:2:0 (so every H.264 decoder plays it), which needs an even frame size.

    ``keyframe_interval``: frames between keyframes (default: two seconds). ``zerolatency``: x264's
    zerolatency tune and no B-frames. ``timeout_s``: how long a write may wait for the encoder and
    :meth:`close` for the file to be finished.

    Use as a context manager: the file is finished on a normal exit; on an exception it is removed.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        *,
        input_caps: str | None = None,
        keyframe_interval: int | None = None,
        zerolatency: bool = False,
        timeout_s: float = 60.0,
    ) -> None:
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise Mp4Error(f"H.264 (4:2:0) needs an even frame size, got {width}x{height}")
        if not fps > 0:
            raise Mp4Error(f"fps must be > 0, got {fps}")
        Gst = init_gstreamer()
        self.path = Path(path)
        self.width = width
        self.height = height
        self.fps = fps
        self.input_caps = input_caps
        self.timeout_s = timeout_s
        self.frames = 0
        self._rate = Fraction(fps).limit_denominator(1001)
        self._rgbx: np.ndarray | None = None
        self._closed = False
        self._pipeline = Gst.Pipeline.new(f"mp4-{self.path.stem[:16]}")
        src = make("appsrc", "src", format=Gst.Format.TIME, is_live=False, block=False, max_bytes=0)
        # RGBx, not RGB: its rows are whole 4-byte words, so a numpy frame of any width is already in
        # GStreamer's default layout (packed RGB rows are padded to 4 bytes, which tobytes() does not do).
        caps = input_caps or f"video/x-raw,format=RGBx,width={width},height={height}"
        rate = f"{self._rate.numerator}/{self._rate.denominator}"
        src.set_property("caps", Gst.Caps.from_string(f"{caps},framerate={rate}"))
        # From RGB, x264 would choose 4:4:4, which many decoders (Jetson's, browsers') cannot play.
        i420 = make("capsfilter", "i420", caps=Gst.Caps.from_string("video/x-raw,format=I420"))
        encoder = make("x264enc", "encoder", threads=1)
        interval = keyframe_interval if keyframe_interval is not None else round(fps * 2)
        encoder.set_property("key-int-max", max(1, interval))
        Gst.util_set_object_arg(encoder, "speed-preset", "ultrafast")
        if zerolatency:
            encoder.set_property("bframes", 0)
            Gst.util_set_object_arg(encoder, "tune", "zerolatency")
        sink = make("filesink", "sink", location=str(self.path))
        elements = [src, make("videoconvert", "convert"), i420, encoder, make("h264parse", "parse")]
        elements += [make("mp4mux", "mux"), sink]
        for element in elements:
            self._pipeline.add(element)
        link(*elements)
        self._src = src
        self._bus = self._pipeline.get_bus()
        if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            # Read the reason before stopping: a pipeline going to NULL flushes its bus.
            msg = self._bus.pop_filtered(Gst.MessageType.ERROR)
            self.abort()
            if msg is not None:
                raise self._error_of(msg)
            raise Mp4Error(f"the encoding pipeline for {self.path.name} refused to start")

    # ---------------------------------------------------------------- writing

    def write(self, frame: np.ndarray, pts_s: float | None = None) -> None:
        """Append one ``(height, width, 3)`` uint8 RGB frame at ``pts_s`` seconds from the clip's start
        (default: the next slot of the frame-rate grid)."""
        if self.input_caps is not None:
            raise Mp4Error(f"this writer takes buffers in {self.input_caps}, not arrays")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise Mp4Error(
                f"frame must be ({self.height}, {self.width}, 3) uint8, got {frame.shape} {frame.dtype}"
            )
        if self._rgbx is None:
            self._rgbx = np.zeros((self.height, self.width, 4), dtype=np.uint8)
        self._rgbx[..., :3] = frame
        self._push(init_gstreamer().Buffer.new_wrapped(self._rgbx.tobytes()), pts_s)

    def write_buffer(self, buf: Any, pts_s: float | None = None) -> None:
        """Append one ``Gst.Buffer`` in ``input_caps``. The buffer itself is left as it is: the clip's
        timestamps go on a new buffer sharing its memory, so one buffer can go into several clips."""
        if self.input_caps is None:
            raise Mp4Error("this writer takes RGB arrays; pass input_caps to write buffers")
        Gst = init_gstreamer()
        # (PyGObject's Buffer.copy() is the same object with one more reference, hence copy_region.)
        flags = Gst.BufferCopyFlags
        copy = flags.FLAGS | flags.TIMESTAMPS | flags.META | flags.MEMORY
        self._push(buf.copy_region(copy, 0, buf.get_size()), pts_s)

    def _push(self, buf: Any, pts_s: float | None) -> None:
        Gst = init_gstreamer()
        if self._closed:
            raise Mp4Error(f"{self.path.name} is already closed")
        self._wait_for_room(buf.get_size())
        if pts_s is None:
            buf.pts = self._grid_ns(self.frames)
            buf.duration = self._grid_ns(self.frames + 1) - buf.pts
        else:
            buf.pts = round(pts_s * Gst.SECOND)
            buf.duration = int(Gst.SECOND / self.fps)
        flow = self._src.emit("push-buffer", buf)
        if flow != Gst.FlowReturn.OK:
            self._raise_bus_error(f"appsrc refused frame {self.frames} ({flow.value_nick})")
        self.frames += 1
        self._check_bus(0)

    def _grid_ns(self, index: int) -> int:
        """Nanoseconds of frame ``index`` on the frame-rate grid (exact for integer rates)."""
        second: int = init_gstreamer().SECOND
        return index * second * self._rate.denominator // self._rate.numerator

    def _wait_for_room(self, frame_bytes: int) -> None:
        limit = max(QUEUE_BYTES, 2 * frame_bytes)
        deadline = time.monotonic() + self.timeout_s
        while int(self._src.get_property("current-level-bytes")) >= limit:
            if time.monotonic() > deadline:
                raise Mp4Error(f"the encoder of {self.path.name} stalled for {self.timeout_s:.0f} s")
            self._check_bus(_POLL_NS)

    # ---------------------------------------------------------------- errors

    def _check_bus(self, wait_ns: int) -> None:
        """Raise the first ERROR on the bus, waiting up to ``wait_ns`` for one."""
        msg = self._bus.timed_pop_filtered(wait_ns, init_gstreamer().MessageType.ERROR)
        if msg is not None:
            raise self._error_of(msg)

    def _raise_bus_error(self, fallback: str) -> None:
        self._check_bus(0)
        raise Mp4Error(fallback)

    @staticmethod
    def _error_of(msg: Any) -> Mp4Error:
        err, debug = msg.parse_error()
        src = msg.src.get_name() if msg.src is not None else "?"
        return Mp4Error(f"{src}: {err.message} ({debug})")

    # ---------------------------------------------------------------- finishing

    def close(self) -> None:
        """Finish the file: end-of-stream, wait up to ``timeout_s`` for it to reach the sink, stop."""
        if self._closed:
            return
        self._closed = True
        Gst = init_gstreamer()
        try:
            self._src.emit("end-of-stream")
            msg = self._bus.timed_pop_filtered(
                int(self.timeout_s * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR
            )
            if msg is None:
                raise Mp4Error(f"encoding {self.path.name} did not finish within {self.timeout_s:.0f} s")
            if msg.type == Gst.MessageType.ERROR:
                raise self._error_of(msg)
        finally:
            self._pipeline.set_state(Gst.State.NULL)
        log.debug("wrote %s (%d frames)", self.path, self.frames)

    def abort(self) -> None:
        """Stop without finishing the file and delete what was written of it."""
        if not self._closed:
            self._closed = True
            self._pipeline.set_state(init_gstreamer().State.NULL)
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
