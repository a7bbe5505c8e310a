"""Camera sources of the CPU graph: URI parsing and one GStreamer pipeline per camera.

Each camera gets its own ``Gst.Pipeline`` (so an error, EOS or disconnect on one camera never touches the
others)::

    source ─► decode ─► videorate ─► caps(framerate<=fps) ─► [tee ─►] queue ─► videoscale ─► videoconvert
                                                                      ─► caps(RGB | I420, W×H) ─► appsink

``source`` is ``filesrc`` (file://, loop://), ``rtspsrc`` (rtsp://, rtsps://), ``uridecodebin`` (http(s)://)
or ``v4l2src`` (v4l2:///dev/videoN); ``decode`` is ``decodebin``. ``videorate`` only drops frames (never
duplicates) down to the camera's ``sampling.fps``; scaling runs before the RGB conversion so that only
``W×H`` pixels are converted. When a display size is asked for, a ``tee`` feeds a second identical branch at
that size (for event snapshots and clips) and both branches see the same sampled frames.

The model branch delivers RGB; the display branch keeps the decoder's I420. The two branches reach Python
differently. Every model frame is needed at once, so the model appsink calls back on its streaming thread
and the frame is copied into numpy there. Display frames are almost never
looked at: only the few seconds around an alert become a snapshot or a clip. So the display appsink emits
no signal; its owner drains it now and then with :meth:`CameraPipeline.pull_display` and keeps each frame
as a :class:`SampleFrame`, still in its GStreamer buffer, copied out only when it is used. At 16 cameras, a
Python callback and copy per display frame cost about as much CPU as the rest of decoding
(docs/benchmarks.md).

GStreamer comes from the toolkit (:mod:`core.gst`), imported lazily: importing this module does not need it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import numpy as np

from core.config import camera_uri_problem
from core.gst import GstError, LinkError, init_gstreamer, link, link_pads, make
from core.gst.frames import FrameError, copy_rgb, i420_to_rgb, pts_seconds, sample_to_rgb, video_caps
from core.redact import redact_text as redact

__all__ = [
    "DISPLAY_QUEUE",
    "CameraPipeline",
    "FrameSize",
    "KeepFn",
    "SampleFrame",
    "SourceError",
    "SourceKind",
    "SourceSpec",
    "UnsupportedUriError",
    "frame_from_sample",
    "parse_source_uri",
    "redact",
]

log = logging.getLogger(__name__)

SourceKind = Literal["file", "loop", "rtsp", "http", "v4l2"]


class SourceError(RuntimeError):
    """A camera pipeline that cannot be built."""


class UnsupportedUriError(SourceError, ValueError):
    """A camera URI the CPU graph cannot open."""


# --------------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """What a camera URI points at.

    ``location``: absolute file path (file, loop), device path (v4l2) or the network URI (rtsp, http).
    """

    kind: SourceKind
    location: str
    uri: str

    @property
    def network(self) -> bool:
        return self.kind in ("rtsp", "http")

    @property
    def reconnects(self) -> bool:
        """Sources that are rebuilt with backoff after an error, EOS or stall (never 'failed')."""
        return self.kind in ("rtsp", "http", "v4l2")

    @property
    def safe_uri(self) -> str:
        return redact(self.uri)


def _path_from(rest: str, cwd: Path) -> Path:
    """``/abs/x.mp4`` stays absolute; ``out/demo/x.mp4`` is relative to ``cwd``. Percent-escapes decoded."""
    path = Path(unquote(rest))
    return path if path.is_absolute() else (cwd / path)


def parse_source_uri(uri: str, cwd: Path | None = None) -> SourceSpec:
    """Parse a camera URI.

    ``file:///abs/x.mp4`` (absolute), ``file://out/x.mp4`` (relative to ``cwd``, default: the current
    directory), ``loop://<path>`` (same path rules, played forever), ``rtsp://``, ``rtsps://``,
    ``http(s)://`` and ``v4l2:///dev/videoN``. Raises :class:`UnsupportedUriError`.
    """
    problem = camera_uri_problem(uri)
    if problem is not None:
        raise UnsupportedUriError(problem)
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("file", "loop"):
        base = cwd if cwd is not None else Path.cwd()
        return SourceSpec("file" if scheme == "file" else "loop", str(_path_from(rest, base)), uri)
    if scheme in ("rtsp", "rtsps"):
        return SourceSpec("rtsp", uri, uri)
    if scheme in ("http", "https"):
        return SourceSpec("http", uri, uri)
    return SourceSpec("v4l2", rest, uri)  # camera_uri_problem left only v4l2:///dev/...


# --------------------------------------------------------------------------------------------------
# GStreamer helpers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSize:
    """A frame size in pixels: ``width`` then ``height`` (GStreamer order)."""

    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 16384:
                raise ValueError(f"frame {name} must be an int in 1..16384, got {value!r}")

    @classmethod
    def of(cls, size: FrameSize | tuple[int, int]) -> FrameSize:
        """Accept a FrameSize or a ``(width, height)`` tuple."""
        return size if isinstance(size, FrameSize) else cls(int(size[0]), int(size[1]))


def frame_from_sample(sample: Any) -> tuple[float | None, np.ndarray]:
    """Copy an RGB frame out of a ``Gst.Sample``.

    Returns ``(pts_s, frame)``: the buffer PTS in seconds (None when unset) and a fresh C-contiguous
    ``(H, W, 3) uint8`` RGB array. Row padding is removed: GStreamer pads each RGB row to a multiple of 4
    bytes, so ``stride != W*3`` whenever ``W*3 % 4 != 0`` (:func:`core.gst.frames.rgb_stride`).
    """
    return pts_seconds(sample.get_buffer()), sample_to_rgb(sample)


class SampleFrame:
    """A ``(H, W, 3)`` frame still in its ``Gst.Buffer`` (RGB or I420): :meth:`rgb` reads it out as RGB.

    Holding one keeps only a reference to GStreamer's buffer (no copy); the pixels are read when something
    needs them, on whatever thread asks (the snapshot writer). :meth:`raw_video` hands the buffer to a
    clip encoder as it is. ``shape`` is known without reading the pixels. Only the buffer is kept, never
    the ``Gst.Sample``: appsink reuses its last sample object and cannot update it while someone holds it.
    The buffer must be in GStreamer's default layout for its format (what an appsink is given).
    """

    __slots__ = ("_buffer", "colorimetry", "format", "shape")

    FORMATS = ("RGB", "I420")

    def __init__(
        self, buffer: Any, width: int, height: int, fmt: str = "RGB", colorimetry: str | None = None
    ) -> None:
        if width < 1 or height < 1:
            raise SourceError(f"frame size must be positive, got {width}x{height}")
        if fmt not in self.FORMATS:
            raise SourceError(f"frame format must be one of {self.FORMATS}, got {fmt!r}")
        self._buffer = buffer
        self.shape = (height, width, 3)
        self.format = fmt
        self.colorimetry = colorimetry

    @classmethod
    def from_sample(cls, sample: Any) -> SampleFrame:
        """The sample's buffer, described by its caps; FrameError for caps that are not RGB or I420."""
        caps = video_caps(sample, cls.FORMATS)
        return cls(sample.get_buffer(), caps.width, caps.height, caps.format, caps.colorimetry)

    def rgb(self) -> np.ndarray:
        """A fresh C-contiguous ``(H, W, 3)`` uint8 RGB copy; FrameError if the buffer cannot be read."""
        height, width = self.shape[0], self.shape[1]
        if self.format == "I420":
            return i420_to_rgb(self._buffer, width, height, self.colorimetry)
        return copy_rgb(self._buffer, width, height)

    def raw_video(self) -> tuple[Any, str]:
        """``(buffer, caps)``: the frame as GStreamer holds it, for an encoder's ``appsrc``. (Built here,
        not per frame: only the frames of a clip are asked.)"""
        height, width = self.shape[0], self.shape[1]
        caps = f"video/x-raw,format={self.format},width={width},height={height}"
        return self._buffer, f"{caps},colorimetry={self.colorimetry}" if self.colorimetry else caps


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value to ``nice`` (never lowers it).

    Linux keeps a nice value per thread, and a thread inherits its creator's. Raising it needs no
    privilege. Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):  # elsewhere nice is per process
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.debug("cannot set nice %d on thread %d: %s", nice, tid, exc)


def _fps_fraction(fps: float) -> tuple[int, int]:
    """Return ``fps`` as a fraction, exact for integers and halves, else to 1/1000."""
    for den in (1, 2, 1000):
        num = round(fps * den)
        if abs(num / den - fps) < 1e-9 or den == 1000:
            return max(num, 1), den
    return max(round(fps), 1), 1  # pragma: no cover - the loop always returns


# --------------------------------------------------------------------------------------------------
# One camera's pipeline
# --------------------------------------------------------------------------------------------------

SampleFn = Callable[[float | None, np.ndarray | None], None]
"""``on_sample(pts_s, frame)`` for each model-branch frame; called from a streaming thread. ``frame`` is None
for a frame the pipeline's ``keep_frame`` declined: counted, never scaled, converted or read. (Display frames
are pulled: :meth:`CameraPipeline.pull_display`.)"""

KeepFn = Callable[[], bool]
"""``keep_frame()``: asked on the model branch's streaming thread, in order, for each sampled frame before it
is scaled: whether anything will read it (its ``on_sample`` call for the frame before has returned)."""

# Display frames an appsink holds for its owner to pull: a file camera decoding as fast as it can waits
# when this is full, a live one drops its oldest frame.
DISPLAY_QUEUE = 32


class CameraPipeline:
    """The ``Gst.Pipeline`` of one camera, built but not started.

    Args:
        camera_id: used in element names and errors.
        spec: the parsed URI.
        fps: sampling rate; frames are dropped (never duplicated) down to it.
        frame_size: model input size (the ``model`` branch).
        on_sample: receives every model-branch frame (see :data:`SampleFn`).
        keep_frame: when set, asked for each sampled frame (see :data:`KeepFn`); a frame it declines is
            dropped before the model branch scales it, and ``on_sample`` gets ``(pts_s, None)`` for it. The
            clips read only every ``frame_stride``-th frame, and scaling, converting and copying the others
            cost up to a quarter of the decode path's CPU (docs/benchmarks.md).
        realtime: play files at their native rate (``appsink sync=true``) instead of as fast as possible.
        display_size: when set, a second branch keeps frames at this size for :meth:`pull_display`.
        rtsp_tcp, rtsp_latency_ms: RTSP transport options.
        connect_timeout_s: RTSP TCP timeout, so a dead server fails fast instead of after rtspsrc's 20 s.
        on_no_video: called (from a streaming thread) when the decoder has exposed all its streams and
            none is video (e.g. an audio-only file).
        thread_nice: nice value (0..19) each of this pipeline's streaming threads gives itself when it
            starts (threads they create, such as libav's decoder threads, inherit it); 0 leaves them alone.
            Decoding then yields the CPU to inference, whose threads keep the process's priority.
        decoder_threads: threads of each software decoder that has a ``max-threads`` property (libav's
            ``avdec_*``, which ``decodebin`` picks for H.264 and H.265), set as the decoder is added; 0
            leaves the decoder's own choice (libav: one thread per core, decoding frames in parallel).
    """

    def __init__(
        self,
        camera_id: str,
        spec: SourceSpec,
        fps: float,
        frame_size: FrameSize,
        on_sample: SampleFn,
        *,
        realtime: bool = False,
        display_size: FrameSize | None = None,
        rtsp_tcp: bool = True,
        rtsp_latency_ms: int = 200,
        connect_timeout_s: float = 5.0,
        on_no_video: Callable[[], None] | None = None,
        thread_nice: int = 0,
        keep_frame: KeepFn | None = None,
        decoder_threads: int = 0,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not 0 <= thread_nice <= 19:
            raise ValueError(f"thread_nice must be 0..19, got {thread_nice}")
        if decoder_threads < 0:
            raise ValueError(f"decoder_threads must be >= 0, got {decoder_threads}")
        Gst = init_gstreamer()
        self.camera_id = camera_id
        self.spec = spec
        self._on_sample = on_sample
        self._keep_frame = keep_frame
        self._on_no_video = on_no_video
        self._video_linked = False
        self._display_sink: Any = None
        # Every signal handler and probe that holds a bound method of this object: GObject keeps them
        # alive from C, so the cycle pipeline -> element -> handler -> self is one Python's collector cannot
        # see; close() cuts it (a camera that reconnects all day would otherwise leak a pipeline and its
        # file descriptors per try).
        self._handlers: list[tuple[Any, int]] = []
        self._probes: list[tuple[Any, int]] = []
        self._closed = False
        self.pipeline = Gst.Pipeline.new(f"cam-{camera_id}")
        p = self.pipeline
        self._thread_nice = thread_nice
        if thread_nice:
            # STREAM_STATUS ENTER is posted synchronously from inside each new streaming thread: the
            # documented place to set a thread's priority.
            bus = p.get_bus()
            bus.enable_sync_message_emission()
            self._connect(bus, "sync-message::stream-status", self._on_stream_status)
        self._decoder_threads = decoder_threads
        if decoder_threads:
            # Every bin below the pipeline (decodebin, uridecodebin's own decodebin) reports what it adds,
            # before the new element leaves NULL: the decoder opens its codec with the count set.
            self._connect(p, "deep-element-added", self._on_element_added)
        sync = bool(realtime) and spec.kind in ("file", "loop")

        # Sampling first, so frames we drop are never converted or scaled.
        self.rate = make("videorate", "rate", drop_only=True)
        num, den = _fps_fraction(fps)
        rate_caps = make(
            "capsfilter",
            "ratecaps",
            caps=Gst.Caps.from_string(f"video/x-raw(ANY),framerate=[0/1,{num}/{den}]"),
        )
        p.add(self.rate)
        p.add(rate_caps)
        link(self.rate, rate_caps)
        branches = [("model", frame_size)]
        if display_size is not None:
            branches.append(("display", display_size))
        if len(branches) == 1:
            link(rate_caps, self._add_branch("model", frame_size, sync, queue=False))
        else:
            tee = make("tee", "tee")
            p.add(tee)
            link(rate_caps, tee)
            for branch, size in branches:
                link(tee, self._add_branch(branch, size, sync, queue=True))

        self._decode_sink = self.rate.get_static_pad("sink")
        if spec.kind in ("file", "loop"):
            src = make("filesrc", "src", location=spec.location)
            dec = make("decodebin", "decode")
            p.add(src)
            p.add(dec)
            link(src, dec)
            self._watch_decoder(dec)
        elif spec.kind == "rtsp":
            src = make(
                "rtspsrc",
                "src",
                location=spec.location,
                latency=int(rtsp_latency_ms),
                tcp_timeout=int(connect_timeout_s * 1_000_000),
            )
            if rtsp_tcp:
                src.set_property("protocols", "tcp")
            dec = make("decodebin", "decode")
            p.add(src)
            p.add(dec)
            self._depay_sink = dec.get_static_pad("sink")
            self._connect(src, "pad-added", self._on_rtsp_pad)
            self._watch_decoder(dec)
        elif spec.kind == "http":
            dec = make("uridecodebin", "decode", uri=spec.location)
            p.add(dec)
            self._watch_decoder(dec)
        elif spec.kind == "v4l2":
            src = make("v4l2src", "src", device=spec.location)
            dec = make("decodebin", "decode")
            p.add(src)
            p.add(dec)
            link(src, dec)
            self._watch_decoder(dec)
        else:  # pragma: no cover - SourceSpec.kind is a closed set
            raise UnsupportedUriError(f"unknown source kind {spec.kind}")

    def _connect(self, obj: Any, signal: str, handler: Callable[..., Any]) -> None:
        self._handlers.append((obj, obj.connect(signal, handler)))

    def _watch_decoder(self, dec: Any) -> None:
        """The decoder's video pad is linked as it appears; a source without one is reported."""
        self._connect(dec, "pad-added", self._on_decoded_pad)
        self._connect(dec, "no-more-pads", self._on_no_more_pads)

    def close(self) -> None:
        """Cut this object's ties to its pipeline once it is in NULL: disconnect every signal handler and
        remove the probe, so the pipeline, its elements and their file descriptors can be freed. Idempotent;
        the pipeline must not run again."""
        if self._closed:
            return  # the bus counts sync-emission enables: a second disable would underflow it
        self._closed = True
        handlers, self._handlers = self._handlers, []
        probes, self._probes = self._probes, []
        for obj, handler_id in handlers:
            if obj.handler_is_connected(handler_id):
                obj.disconnect(handler_id)
        for pad, probe_id in probes:
            pad.remove_probe(probe_id)
        if self._thread_nice:
            self.pipeline.get_bus().disable_sync_message_emission()

    def _add_branch(self, branch: str, size: FrameSize, sync: bool, *, queue: bool) -> Any:
        """Add ``[queue ->] videoscale -> videoconvert -> caps -> appsink``; return its first element."""
        Gst = init_gstreamer()
        elements = []
        if queue:
            # Live sources: leaky, so a slow consumer of one branch never stalls the other. Files: lossless
            # (back-pressure slows the file down instead, so every sampled frame reaches both branches).
            leaky = 0 if self.spec.kind in ("file", "loop") else 2
            elements.append(
                make(
                    "queue",
                    f"{branch}-queue",
                    max_size_buffers=2,
                    max_size_bytes=0,
                    max_size_time=0,
                    leaky=leaky,
                )
            )
        elements.append(make("videoscale", f"{branch}-scale", add_borders=False))
        elements.append(make("videoconvert", f"{branch}-convert"))
        # Display frames stay I420, the decoders' own format: converting is skipped for every frame, the
        # event ring holds half the bytes, and clips go to the encoder as they are
        # (pipeline/outputs/media.py).
        fmt = "I420" if branch == "display" else "RGB"
        elements.append(
            make(
                "capsfilter",
                f"{branch}-caps",
                caps=Gst.Caps.from_string(
                    f"video/x-raw,format={fmt},width={size.width},height={size.height}"
                ),
            )
        )
        if branch == "display":
            # Pulled by the owner (pull_display), not signalled: no Python on the streaming thread. Live
            # sources drop the oldest frame when nobody pulls; files wait (no frame is lost).
            sink = make(
                "appsink",
                f"{branch}-sink",
                emit_signals=False,
                max_buffers=DISPLAY_QUEUE,
                drop=self.spec.kind not in ("file", "loop"),
                sync=sync,
            )
            self._display_sink = sink
        else:
            sink = make("appsink", f"{branch}-sink", emit_signals=True, max_buffers=2, drop=True, sync=sync)
            self._connect(sink, "new-sample", self._on_new_sample)
        elements.append(sink)
        for element in elements:
            self.pipeline.add(element)
        link(*elements)
        if branch == "model" and self._keep_frame is not None:
            # Before the scale, on the thread that then runs scale, convert and the appsink callback: the
            # frame before this one has been handed to on_sample when the question is asked.
            scale = elements[1] if queue else elements[0]
            pad = scale.get_static_pad("sink")
            self._probes.append((pad, pad.add_probe(Gst.PadProbeType.BUFFER, self._on_model_buffer)))
        return elements[0]

    # Streaming-thread callbacks ---------------------------------------------------------------

    def _on_rtsp_pad(self, _src: Any, pad: Any) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        media = caps.get_structure(0).get_string("media") if caps and caps.get_size() else None
        if media == "video" and not self._depay_sink.is_linked():
            try:
                link_pads(pad, self._depay_sink)
            except LinkError as exc:  # on a streaming thread: logged, never raised
                log.error(
                    "camera %s: cannot link the RTSP video stream to the decoder: %s", self.camera_id, exc
                )
            return
        self._link_to_fakesink(pad)

    def _on_decoded_pad(self, _dec: Any, pad: Any) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name() if caps and caps.get_size() else ""
        if name.startswith("video/") and not self._decode_sink.is_linked():
            try:
                link_pads(pad, self._decode_sink)
            except LinkError as exc:  # on a streaming thread: logged, never raised
                log.error("camera %s: cannot link decoded video: %s", self.camera_id, exc)
            else:
                self._video_linked = True
            return
        # Audio or a second video stream: consumed and ignored so it cannot stall the demuxer.
        self._link_to_fakesink(pad)

    def _on_no_more_pads(self, _dec: Any) -> None:
        if not self._video_linked and self._on_no_video is not None:
            self._on_no_video()

    def _link_to_fakesink(self, pad: Any) -> None:
        # On a streaming thread, for a stream nobody wants: failing here only costs that stream.
        try:
            sink = make("fakesink", None, sync=False)
            sink.set_property("async", False)
            self.pipeline.add(sink)
            sink.sync_state_with_parent()
            link_pads(pad, sink.get_static_pad("sink"))
        except GstError as exc:
            log.warning("camera %s: an extra stream stays unlinked: %s", self.camera_id, exc)

    def _on_element_added(self, _bin: Any, _sub_bin: Any, element: Any) -> None:
        if element.find_property("max-threads") is not None:
            element.set_property("max-threads", self._decoder_threads)

    def _on_stream_status(self, _bus: Any, msg: Any) -> None:
        kind, _owner = msg.parse_stream_status()
        if kind == init_gstreamer().StreamStatusType.ENTER:
            lower_thread_priority(self._thread_nice)

    def _on_model_buffer(self, _pad: Any, info: Any) -> Any:
        Gst = init_gstreamer()
        keep = self._keep_frame
        try:
            if keep is None or keep():
                return Gst.PadProbeReturn.OK
        except Exception:  # a consumer bug: the frame goes on as if there were no question
            log.exception("camera %s: keep_frame failed", self.camera_id)
            return Gst.PadProbeReturn.OK
        try:
            self._on_sample(pts_seconds(info.get_buffer()), None)
        except Exception:  # never let a consumer bug kill the streaming thread with a Python error
            log.exception("camera %s: frame callback failed", self.camera_id)
        return Gst.PadProbeReturn.DROP

    def _on_new_sample(self, sink: Any) -> Any:
        Gst = init_gstreamer()
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        try:
            pts, frame = frame_from_sample(sample)
            self._on_sample(pts, frame)
        except Exception:  # never let a consumer bug kill the streaming thread with a Python error
            log.exception("camera %s: frame callback failed", self.camera_id)
        return Gst.FlowReturn.OK

    # Control ----------------------------------------------------------------------------------

    def pull_display(self, limit: int = DISPLAY_QUEUE) -> list[tuple[float | None, SampleFrame]]:
        """Take up to ``limit`` display frames waiting in the display appsink, oldest first, without
        blocking: ``(pts_s, frame)`` with pts None when unset; each an I420 :class:`SampleFrame`.
        Empty without a display branch. Frames with other caps are skipped (logged)."""
        sink = self._display_sink
        if sink is None:
            return []
        out: list[tuple[float | None, SampleFrame]] = []
        while len(out) < limit:
            sample = sink.emit("try-pull-sample", 0)
            if sample is None:
                break
            try:
                frame = SampleFrame.from_sample(sample)
                pts = pts_seconds(sample.get_buffer())
            except (SourceError, FrameError) as exc:
                log.warning("camera %s: display frame skipped: %s", self.camera_id, exc)
                continue
            finally:
                # appsink reuses its last sample object and cannot update its caps while we hold it.
                del sample
            out.append((pts, frame))
        return out

    @property
    def video_linked(self) -> bool:
        return self._video_linked

    def rate_counters(self) -> tuple[int, int]:
        """``(frames into videorate, frames out of it)`` for this pipeline instance."""
        return int(self.rate.get_property("in")), int(self.rate.get_property("out"))
