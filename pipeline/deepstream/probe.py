"""The DeepStream pad probes: frames into the clip path, and the on-screen score text.

:class:`ClipScoringProbe` sits on the score branch of the graph (after the mux, a tee and an
``nvvideoconvert`` to ``RGBA`` at the backbone's W x H). For every frame of every batch it

1. reads the frame's source, number and PTS from the batch meta and notices a restarted stream (its frame
   number or PTS going backwards or its PTS jumping forward past :func:`jump_limit`, or an end of stream,
   an error or a reconnect warning reported on the bus: :meth:`ClipScoringProbe.restart`);
   the camera's stream time stays increasing across restarts (:class:`StreamClock`); the first frame of a
   camera, and its first after each restart, reports it live (``on_live``);
2. keeps only the frames of the camera's ``sampling.fps`` by their stream time (:class:`FrameSampler`, as
   the CPU graph's ``videorate`` does); the others are neither mapped nor handed on;
3. maps the RGBA surface with ``pyds.get_nvds_buf_surface``, copies the RGB planes out and unmaps it
   (Jetson), checks it has the backbone's size;
4. hands ``(camera, t, rgb)`` to ``on_frame``: in the app the metrics, the event media and
   :meth:`pipeline.clip_path.ClipPath.push`, where the CPU graph's clip assembly, batching,
   inference, fusion and alerts take over (a restart goes to ``on_restart`` first).

The probe always returns ``Gst.PadProbeReturn.OK``. A frame that cannot be read or handed on (a surface
pyds cannot map, a frame of the wrong size or of an unknown source) is logged and counted, its camera's
clip assembly is told of the gap (``on_gap``), and the batch's other frames go on. Beyond that there is one
exception boundary: a batch that fails is logged and counted, and the next batch is processed normally.

:class:`OsdScoreBoard` sits before the tiler on the display branch and attaches each camera's latest text
to its frames for ``nvdsosd`` to draw.

This module never imports ``pyds``: the pyds module and the callbacks are passed in.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.gst import init_gstreamer
from pipeline.clips import FrameShapeError
from pipeline.deepstream.meta import MetaError, add_display_text, batch_meta_of, frame_refs, frame_rgb

__all__ = [
    "ClipScoringProbe",
    "FrameFn",
    "FrameSampler",
    "OsdScoreBoard",
    "StreamClock",
    "format_osd_text",
    "jump_limit",
    "pad_probe_ok",
]

log = logging.getLogger(__name__)

FrameFn = Callable[[str, float, np.ndarray], None]
"""``on_frame(camera, t, rgb)``: ``t`` the camera's stream time (s), ``rgb`` ``(H, W, 3) uint8``, owned."""

#: Stream time added after the last frame when a restarted stream had no frame interval yet (s).
_FIRST_STEP_S = 0.1
#: A forward PTS jump longer than this many frame intervals, and than _JUMP_MIN_S, is a restart: nvurisrcbin
#: keeps the PTS increasing over its own reconnects and file loops, so a gap shows only as a jump.
_JUMP_STEPS = 5
_JUMP_MIN_S = 1.0
#: What one frame's way from the batch to ``on_frame`` raises: pyds's RuntimeError (pybind11's translation
#: of std::runtime_error: a surface it cannot map), MetaError (a RuntimeError: not RGBA, the wrong size) and
#: the clip assembler's FrameShapeError. Anything else is a fault of the batch or the code: the batch
#: boundary logs it.
_FRAME_ERRORS = (RuntimeError, FrameShapeError)
#: A camera's failed frames are logged at the first and then every this many (a broken source would
#: otherwise log every frame).
_LOG_EVERY_FAILED = 100
#: Slack when comparing stream times (s): PTS are whole nanoseconds, sums of float seconds are not.
_TIME_EPS_S = 1e-6


def pad_probe_ok() -> Any:
    """``Gst.PadProbeReturn.OK`` (imports and initialises GStreamer on first use)."""
    return init_gstreamer().PadProbeReturn.OK


def format_osd_text(camera: str, fused: float | None, prompt: str | None = None) -> str:
    """``cam-1  2.31`` (``cam-1  --`` while the DPC history fills), plus the best anomalous prompt if any."""
    value = f"{fused:.2f}" if fused is not None and math.isfinite(fused) else "--"
    text = f"{camera}  {value}"
    return f"{text}  {prompt}" if prompt else text


class BatchProbe:
    """A pad probe that hands each buffer to :meth:`process` behind the one exception boundary of a branch:
    a batch that raises is logged and dropped (counted), since a probe that raises would take the
    streaming thread, and so every camera, down with it."""

    #: How the log names this probe.
    name = "probe"

    def __init__(self, ok: Any = None) -> None:
        self._ok = ok if ok is not None else pad_probe_ok()
        self.dropped_batches = 0

    def process(self, gst_buffer: Any) -> int:
        raise NotImplementedError

    def __call__(self, _pad: Any, info: Any, *_user: Any) -> Any:
        try:
            buffer = info.get_buffer()
            if buffer is not None:
                self.process(buffer)
        except Exception:
            self.dropped_batches += 1
            log.exception("%s: batch dropped (%d so far)", self.name, self.dropped_batches)
        return self._ok


def jump_limit(step_s: float) -> float:
    """The longest forward PTS step (s) that is not a restart, given the stream's frame interval ``step_s``:
    ``max(1 s, 5 frame intervals)``, so a slow camera's frames are not each a restart. No limit while the
    interval is unknown (0): a stream's first interval is how it is learnt, and a camera slower than 1 fps
    would otherwise restart at every frame."""
    return max(_JUMP_MIN_S, _JUMP_STEPS * step_s) if step_s > 0 else math.inf


@dataclass
class _Stream:
    frame_num: int
    raw: float  # the last frame's PTS (or clock reading) in seconds
    t: float  # the last stream time handed out
    offset: float  # t = raw + offset within one run of the stream
    step: float  # the last frame interval seen


class StreamClock:
    """Per source: notices a restarted stream and maps buffer PTS to a stream time that keeps increasing.

    A stream restarts when its frame number or its PTS goes backwards (a reconnect whose counters start
    again; ``nvurisrcbin``'s file loop keeps them increasing, docs/deepstream.md), when its PTS jumps
    forward by more than :func:`jump_limit` (an outage or a
    reconnect that kept the counters), or when :meth:`restart` marked it (the bus reported the source's end
    of stream, error or reconnect). Within one run of a stream, time is the buffer PTS; a stream that
    restarted with its PTS going back or marked continues one frame interval after the last time handed
    out, as the CPU graph's file cameras do; after a forward jump the time keeps the jump (the outage was
    real time, as the CPU graph's live cameras count it). Frames without a PTS use ``clock``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._streams: dict[int, _Stream] = {}
        self._marked: set[int] = set()
        self._lock = threading.Lock()

    def restart(self, source: int) -> None:
        """The source's next frame starts a new stream (called from any thread)."""
        with self._lock:
            self._marked.add(source)

    def observe(self, source: int, frame_num: int, pts_s: float) -> tuple[float, bool]:
        """``(stream time, restarted)`` of the source's next frame."""
        raw = pts_s if math.isfinite(pts_s) else self._clock()
        with self._lock:
            marked = source in self._marked
            self._marked.discard(source)
        stream = self._streams.get(source)
        if stream is None:
            self._streams[source] = _Stream(frame_num, raw, raw, 0.0, 0.0)
            return raw, False
        rebase = marked or frame_num <= stream.frame_num or raw < stream.raw
        jumped = not rebase and raw - stream.raw > jump_limit(stream.step)
        restarted = rebase or jumped
        if rebase:
            stream.offset = stream.t + (stream.step or _FIRST_STEP_S) - raw
        if restarted:
            # Learn the new stream's interval afresh: a camera that came back slower (a dynamic frame rate
            # on a still scene, 25 fps to one frame in 2 s) would jump past the old limit at every frame.
            stream.step = 0.0
        elif raw > stream.raw:
            stream.step = raw - stream.raw
        t = raw + stream.offset
        if t <= stream.t:
            t = stream.t + 1e-6
        stream.frame_num, stream.raw, stream.t = frame_num, raw, t
        return t, restarted


class FrameSampler:
    """Keeps one camera's frames at ``fps`` by their stream time, the DeepStream graph's stand-in for the CPU
    graph's ``videorate`` (drop only): the model reads frames at ``sampling.fps`` whatever the camera sends.

    Sampling instants lie ``1 / fps`` apart from the first frame kept. A frame is kept when it reaches the
    next instant less half the camera's frame interval (at most half a period), i.e. when it is the frame
    nearest that instant (the one ``videorate`` picks), so a camera already at ``fps`` whose PTS jitter
    keeps every frame; the next instant is then the first one this frame does not reach. A camera slower
    than ``fps`` keeps every frame (never duplicated). Pure and not thread-safe: one per camera, fed from
    the streaming thread.
    """

    def __init__(self, fps: float) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"sampling fps must be > 0, got {fps!r}")
        self.period = 1.0 / fps
        self._anchor: float | None = None  # stream time of the first frame kept since the last reset
        self._slot = 0  # the next instant is anchor + slot * period
        self._last: float | None = None  # stream time of the last frame seen, kept or not
        self._step = 0.0  # the camera's last frame interval

    def reset(self) -> None:
        """A new stream (a restart): its first frame is kept and the instants start from it."""
        self._anchor = self._last = None
        self._step = 0.0

    def keep(self, t: float) -> bool:
        """Whether the frame at stream time ``t`` (s) is kept; call it for every frame, in order."""
        if self._last is not None and t <= self._last:
            self.reset()  # time went back: cannot be measured against the old instants
        if self._last is not None:
            self._step = t - self._last
        self._last = t
        if self._anchor is None:
            self._anchor, self._slot = t, 1
            return True
        # The next frame is expected one frame interval on; no more than a period, so that the interval
        # across a pause does not stretch the reach over the instants after it.
        reach = t + min(self._step, self.period) / 2
        if reach < self._anchor + self._slot * self.period - _TIME_EPS_S:
            return False
        self._slot = math.floor((reach - self._anchor) / self.period + _TIME_EPS_S) + 1
        return True


class ClipScoringProbe(BatchProbe):
    """The score-branch pad probe. Call it as a probe (``pad.add_probe(BUFFER, probe)``) or call
    :meth:`process` with a ``Gst.Buffer``.

    Args:
        pyds: the ``pyds`` module (or a test double of it).
        cameras: camera ids by mux source id (source ``i`` is ``cameras[i]``).
        on_frame: ``on_frame(camera, t, rgb)`` for every frame kept, in each camera's order.
        on_restart: ``on_restart(camera)`` before the first frame of a restarted stream (the app resets the
            camera's clip assembly and DPC history).
        on_gap: ``on_gap(camera, t)`` for a kept frame that failed (the app pushes it to the clip assembly
            as a frame not read, so no clip spans it); without it the camera's stream restarts at its next
            frame.
        on_live: ``on_live(camera)`` at a camera's first frame and at its first frame after each restart
            (the app reports the camera ``live``); once per stream, not per frame.
        frame_size: ``(width, height)`` the backbone takes; a frame of another size is refused.
        sampling_fps: frames a second kept per camera (its ``sampling.fps``, :class:`FrameSampler`); a camera
            not in it keeps every frame.
        unmap_surfaces: unmap each RGBA surface after copying it (Jetson).
        ok: the value the probe returns (default ``Gst.PadProbeReturn.OK``).
        clock: time source for frames without a PTS.
    """

    name = "score probe"

    def __init__(
        self,
        pyds: Any,
        cameras: Sequence[str],
        *,
        on_frame: FrameFn,
        on_restart: Callable[[str], None] | None = None,
        on_live: Callable[[str], None] | None = None,
        on_gap: Callable[[str, float], None] | None = None,
        frame_size: tuple[int, int] | None = None,
        sampling_fps: Mapping[str, float] | None = None,
        unmap_surfaces: bool = False,
        ok: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cameras:
            raise ValueError("the probe needs at least one camera")
        self.pyds = pyds
        self.cameras = list(cameras)
        self._sources = {camera: i for i, camera in enumerate(self.cameras)}
        self.on_frame = on_frame
        self.on_restart = on_restart
        self.on_live = on_live
        self.on_gap = on_gap
        self._live: set[int] = set()  # sources whose current stream has delivered a frame (streaming thread)
        self.frame_size = frame_size
        self.unmap_surfaces = unmap_surfaces
        self.clock = StreamClock(clock)
        fps = sampling_fps or {}
        self._samplers = {i: FrameSampler(fps[c]) for i, c in enumerate(self.cameras) if c in fps}
        super().__init__(ok)
        self.batches = 0
        self.frames = 0
        self.sampled_out = 0  # frames not kept by the cameras' sampling
        self.restarts = 0
        self.failed_frames = 0
        self._failed: dict[str, int] = {}  # per "camera C" (or "source N"), for the log's rate

    # -- the work -----------------------------------------------------------------------------------------

    def camera(self, source_id: int) -> str:
        if not 0 <= source_id < len(self.cameras):
            raise MetaError(f"source id {source_id} has no camera (the graph has {len(self.cameras)})")
        return self.cameras[source_id]

    def restart(self, camera: str) -> None:
        """Mark a camera's stream as restarted (its end of stream, error or reconnect; the bus thread)."""
        source = self._sources.get(camera)
        if source is not None:
            self.clock.restart(source)

    def process(self, gst_buffer: Any) -> int:
        """Hand on every kept frame of one batch; return how many."""
        batch_meta = batch_meta_of(self.pyds, gst_buffer)
        if batch_meta is None:
            return 0
        self.batches += 1
        handed = 0
        for frame in frame_refs(self.pyds, batch_meta):
            try:
                camera = self.camera(frame.source_id)
            except MetaError as exc:  # no camera to tell: the frame alone is lost
                self._frame_failed(f"source {frame.source_id}", frame.frame_num, exc)
                continue
            t, restarted = self.clock.observe(frame.source_id, frame.frame_num, frame.pts_s)
            # The clock has used up the restart: hand it on before anything below can drop the batch, or
            # the camera's clips and DPC history would run on across the gap.
            if restarted:
                self.restarts += 1
                log.info("camera %s: stream restarted at frame %d", camera, frame.frame_num)
                if self.on_restart is not None:
                    self.on_restart(camera)
            # Every frame counts for liveness, kept or not: a set lookup a frame, a callback once a stream.
            if restarted or frame.source_id not in self._live:
                self._live.add(frame.source_id)
                if self.on_live is not None:
                    self.on_live(camera)
            sampler = self._samplers.get(frame.source_id)
            if sampler is not None:
                if restarted:
                    sampler.reset()
                # Before the surface is mapped: a frame not kept costs no copy.
                if not sampler.keep(t):
                    self.sampled_out += 1
                    continue
            try:
                rgb = frame_rgb(self.pyds, gst_buffer, frame.batch_id, unmap=self.unmap_surfaces)
                if self.frame_size is not None and (rgb.shape[1], rgb.shape[0]) != self.frame_size:
                    width, height = self.frame_size
                    raise MetaError(
                        f"camera {camera}: frame is {rgb.shape[1]}x{rgb.shape[0]}, the backbone takes "
                        f"{width}x{height} (the score branch's capsfilter sets the size)"
                    )
                self.on_frame(camera, t, rgb)
            except _FRAME_ERRORS as exc:
                # One frame, one camera: the batch's other frames go on, and this camera's clips must not
                # span the frame it lost.
                self._frame_failed(f"camera {camera}", frame.frame_num, exc)
                if self.on_gap is not None:
                    self.on_gap(camera, t)
                else:
                    self.clock.restart(frame.source_id)
                continue
            handed += 1
        self.frames += handed
        return handed

    def _frame_failed(self, who: str, frame_num: int, exc: Exception) -> None:
        self.failed_frames += 1
        count = self._failed[who] = self._failed.get(who, 0) + 1
        if count == 1 or count % _LOG_EVERY_FAILED == 0:
            log.warning(
                "%s: frame %d dropped (%d so far): %s: %s", who, frame_num, count, type(exc).__name__, exc
            )


class OsdScoreBoard(BatchProbe):
    """Each camera's latest OSD line, drawn on its frames. :meth:`set_text` may be called from any thread;
    the instance is the pad probe of the display branch (before the tiler)."""

    name = "OSD probe"

    def __init__(self, pyds: Any, cameras: Sequence[str], *, ok: Any = None) -> None:
        self.pyds = pyds
        self.cameras = list(cameras)
        self._texts = {c: format_osd_text(c, None) for c in self.cameras}
        self._lock = threading.Lock()
        # A frame without its overlay is not worth stopping the video: same boundary as the score probe.
        super().__init__(ok)

    def set_text(self, camera: str, text: str) -> None:
        with self._lock:
            self._texts[camera] = text

    def text(self, camera: str) -> str:
        with self._lock:
            return self._texts.get(camera, camera)

    def process(self, gst_buffer: Any) -> int:
        """Attach each frame's camera text; return how many were attached."""
        batch_meta = batch_meta_of(self.pyds, gst_buffer)
        if batch_meta is None:
            return 0
        added = 0
        for frame in frame_refs(self.pyds, batch_meta):
            if 0 <= frame.source_id < len(self.cameras):
                add_display_text(self.pyds, batch_meta, frame.meta, self.text(self.cameras[frame.source_id]))
                added += 1
        return added
