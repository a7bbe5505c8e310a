"""Event media: a JPEG of each alert's peak frame and an MP4 clip around it, with per-camera retention.

One :class:`EventRecorder` per camera. Feed it every sampled frame (:meth:`EventRecorder.add_frame`); it
keeps a ring buffer covering ``media.pre_s`` seconds. A frame is a numpy array (copied on entry) or a
:class:`LazyFrame` whose pixels are read only when a snapshot or clip needs them, on the thread that writes
it (the CPU graph hands over GStreamer samples this way, so most frames are never copied at all). On alert
open (:meth:`EventRecorder.open_event`) it starts a clip writer with the buffered pre-roll and keeps feeding
it live frames until ``post_s`` seconds after the close (:meth:`EventRecorder.close_event`). Files land in
``<output_dir>/events/<camera>/`` as ``<alert_id>.jpg`` and ``<alert_id>.mp4`` (the clip is written as a
hidden ``.part`` and renamed when complete), beside the alert's evidence ``<alert_id>.npz`` (written by
``pipeline.outputs.events``). With snapshots on, an alert whose peak has an evidence map also gets
``<alert_id>.heatmap.jpg`` (``pipeline.outputs.heatmap``), rendered from the same pixels as its snapshot.
Only the newest ``max_events_per_camera`` events are kept. Event-media frames may come later than the
scores of their time (the CPU graph hands them over on their own thread): a snapshot of a time not yet
buffered waits for its frame (:meth:`EventRecorder.frame_at`, :class:`PendingFrame`).

Encoding runs in background threads, one :class:`core.gst.mp4.Mp4Writer` each; snapshots and retention run
on one small worker thread. Nothing here raises into the caller for I/O or encoder trouble: a failure is
logged once per camera (until the next success) and counted in ``zsad_media_errors_total``; alerting goes
on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import queue
import re
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from core.config import MediaConfig
from core.datafile import write_atomic
from core.gst import GstError
from core.gst.mp4 import Mp4Error, Mp4Writer
from pipeline.outputs.heatmap import HEATMAP_SUFFIX, PeakEvidence, heatmap_jpeg

if TYPE_CHECKING:
    from pipeline.outputs.metrics import ZsadMetrics

__all__ = [
    "ClipEncodeError",
    "EventMedia",
    "EventRecorder",
    "Frame",
    "LazyFrame",
    "MediaError",
    "MediaPathError",
    "PendingFrame",
    "safe_component",
]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class MediaError(RuntimeError):
    """Event media could not be written."""


class ClipEncodeError(MediaError):
    """The clip could not be encoded (no frames, or the encoder failed: state change, encoder or muxer
    error, a stall); a toolkit :class:`~core.gst.mp4.Mp4Error` is kept as its cause."""


class MediaPathError(MediaError):
    """A media path would leave the output folder."""


@dataclass(frozen=True)
class EventMedia:
    """Where an event's files are (or will be), relative to the output folder, POSIX separators; None
    when that kind of media is off or could not be set up. ``heatmap``: where the heatmap is written
    whenever the snapshot is written with a :class:`~pipeline.outputs.heatmap.PeakEvidence` (snapshots on)."""

    snapshot: str | None
    clip: str | None
    heatmap: str | None = None


class LazyFrame(Protocol):
    """A frame that is read on demand: ``shape`` is ``(H, W, 3)``; :meth:`rgb` returns a fresh
    ``(H, W, 3)`` uint8 RGB array (and may raise ``RuntimeError`` when the pixels cannot be read).

    It may also have ``raw_video() -> (Gst.Buffer, caps)``, a buffer in a raw format the clip encoder
    takes as it is (``caps`` a string such as ``video/x-raw,format=I420,width=320,height=240``): clips
    are then written without reading the pixels into Python at all.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    def rgb(self) -> np.ndarray: ...


Frame = np.ndarray | LazyFrame
"""An event-media frame: ``(H, W, 3)`` uint8 RGB, as an array or read on demand."""


def _pixels(frame: Frame) -> np.ndarray:
    return frame if isinstance(frame, np.ndarray) else frame.rgb()


def _raw_video(frame: Frame) -> tuple[Any, str] | None:
    raw_video = getattr(frame, "raw_video", None)
    return raw_video() if raw_video is not None else None


def safe_component(name: str, max_len: int = 100) -> str:
    """A file-name component made of ``[A-Za-z0-9_.-]`` that is never ``.``/``..`` nor hidden."""
    cleaned = _UNSAFE.sub("_", name)[:max_len]
    cleaned = re.sub(r"^\.+", lambda m: "_" * len(m.group(0)), cleaned)
    return cleaned or "_"


# --------------------------------------------------------------------------------------------------
# GStreamer clip writer
# --------------------------------------------------------------------------------------------------


class _ClipWriter:
    """Encodes frames ``(H, W, 3)`` uint8 RGB with stream times into one MP4, on its own thread.

    Frames are handed over through a bounded queue (a :class:`LazyFrame` is read on the encoder thread);
    when the encoder falls behind, frames are dropped (counted) rather than blocking the caller. The first
    frame fixes the size (cropped to even, as 4:2:0 needs); frames of another size are dropped.
    """

    def __init__(
        self,
        final_path: Path,
        fps: float,
        on_done: Any,
        queue_frames: int,
        timeout_s: float = 60.0,
    ) -> None:
        self.final_path = final_path
        self.part_path = final_path.with_name(f".{final_path.name}.part")
        self.fps = fps
        self.end_pts: float | None = None
        self.frames_written = 0
        self.frames_dropped = 0
        self._on_done = on_done
        self._timeout_s = timeout_s
        self._queue: queue.Queue[tuple[Frame, float] | None] = queue.Queue(maxsize=max(8, queue_frames))
        self._finished = False
        self._last_pts = -math.inf
        self.thread = threading.Thread(target=self._run, name=f"zsad-clip-{final_path.stem[:8]}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def push(self, frame: Frame, pts: float) -> None:
        if self._finished or pts <= self._last_pts:
            return
        self._last_pts = pts
        try:
            self._queue.put_nowait((frame, pts))
        except queue.Full:
            self.frames_dropped += 1

    def finish(self) -> None:
        """Mark the end of the clip; never blocks (drops the newest queued frames if the queue is full)."""
        if self._finished:
            return
        self._finished = True
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.frames_dropped += 1

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._encode()
        except (MediaError, GstError, OSError) as exc:
            error = exc
        except Exception as exc:  # a GLib/GStreamer surprise must not kill alerting; reported below
            log.exception("clip %s: unexpected encoder failure", self.final_path.name)
            error = exc
        if error is not None:
            with contextlib.suppress(OSError):
                self.part_path.unlink(missing_ok=True)
            # Drain so finish() can never block on a full queue.
            while True:
                try:
                    if self._queue.get_nowait() is None:
                        break
                except queue.Empty:
                    if self._finished:
                        break
                    threading.Event().wait(0.05)
        self._on_done(self, error)

    def _encode(self) -> None:
        item = self._queue.get()
        if item is None:
            raise ClipEncodeError("no frames to write")
        frame, first_pts = item
        h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
        if h < 2 or w < 2:
            raise ClipEncodeError(f"frame too small for H.264: {frame.shape}")
        # Frames that carry an encoder-ready raw buffer of even size go in as they are (no copy, no
        # conversion); anything else is read as RGB and cropped to even.
        raw = _raw_video(frame)
        raw_caps = raw[1] if raw is not None and (h, w) == tuple(frame.shape[:2]) else None
        try:
            with Mp4Writer(
                self.part_path,
                w,
                h,
                self.fps,
                input_caps=raw_caps,
                keyframe_interval=round(self.fps * 2),
                timeout_s=self._timeout_s,
            ) as writer:
                while item is not None:
                    frame, pts = item
                    if self._write(writer, frame, pts - first_pts):
                        self.frames_written += 1
                    else:
                        self.frames_dropped += 1
                    item = self._queue.get()
        except Mp4Error as exc:
            raise ClipEncodeError(f"clip {self.final_path.name}: {exc}") from exc
        self.part_path.replace(self.final_path)

    @staticmethod
    def _write(writer: Mp4Writer, frame: Frame, pts: float) -> bool:
        """Write ``frame`` at ``pts`` seconds into the clip; False for a frame that does not fit it (another
        size or format) or cannot be read, which the clip goes on without."""
        if writer.input_caps is not None:
            raw = _raw_video(frame)
            if raw is None or raw[1] != writer.input_caps:
                return False
            writer.write_buffer(raw[0], pts)
            return True
        shape = frame.shape
        if not (len(shape) == 3 and shape[0] >= writer.height and shape[1] >= writer.width and shape[2] == 3):
            return False
        try:
            pixels = _pixels(frame)
        except RuntimeError as exc:  # a frame whose pixels are gone
            log.debug("clip %s: frame dropped: %s", writer.path.name, exc)
            return False
        writer.write(np.asarray(pixels[: writer.height, : writer.width], dtype=np.uint8), pts)
        return True


# --------------------------------------------------------------------------------------------------
# Recorder
# --------------------------------------------------------------------------------------------------


#: The endings of one event's files after its stem (retention keeps and deletes them together); the
#: heatmap's first, since it also ends in ``.jpg``.
EVENT_SUFFIXES = (HEATMAP_SUFFIX, ".jpg", ".mp4", ".npz")  # .npz: the alert's evidence (feedback learning)


def _event_stem(name: str) -> str | None:
    """The event stem of an event file name (``<stem><suffix>``), None for any other file."""
    for suffix in EVENT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


@dataclass
class _Event:
    alert_id: str
    stem: str
    snapshot: Path | None
    writer: _ClipWriter | None
    start_pts: float
    end_pts: float | None = None

    @property
    def heatmap(self) -> Path | None:
        return self.snapshot.with_name(self.stem + HEATMAP_SUFFIX) if self.snapshot is not None else None


@dataclass(frozen=True)
class PendingFrame:
    """What :meth:`EventRecorder.frame_at` returns for a time whose frame has not been buffered yet: the
    time itself, and the camera's frame ``shape`` ``(H, W, 3)`` when any frame has come (None before).
    Passed back as a snapshot's ``peak_frame``, the snapshot waits for that frame."""

    pts: float
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _PendingSnapshot:
    """A snapshot asked for before a frame at its peak was buffered: written from the first frame at or
    after ``peak_pts`` (the frame nearest the peak, when frames come in order), or at close from the
    nearest buffered one."""

    stem: str
    snapshot: Path
    heatmap: Path | None
    peak_pts: float | None
    evidence: PeakEvidence | None


class EventRecorder:
    """Event media of one camera.

    ``fps``: the rate frames are fed at (the camera's sampling rate), used for the clip's nominal frame
    rate and the ring buffer's size. ``jpeg_quality``: 1..95. Frames are copied on entry, so the caller may
    reuse its buffers.
    """

    def __init__(
        self,
        camera: str,
        output_dir: str | Path,
        config: MediaConfig,
        *,
        fps: float = 10.0,
        metrics: ZsadMetrics | None = None,
        jpeg_quality: int = 85,
        clip_timeout_s: float = 60.0,
    ) -> None:
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps}")
        self.camera = camera
        self.config = config
        self.fps = fps
        self.metrics = metrics
        self.jpeg_quality = int(min(95, max(1, jpeg_quality)))
        self.output_dir = Path(output_dir)
        self._camera_dir = safe_component(camera)
        self.events_dir = self.output_dir / "events" / self._camera_dir
        self._clip_timeout_s = clip_timeout_s
        # A little more than pre_s, since frames arrive on a grid; the cap bounds memory at odd frame rates.
        self._max_frames = math.ceil((config.pre_s + 1.0) * fps) + 2
        self._ring: deque[tuple[float, Frame]] = deque(maxlen=self._max_frames)
        self._events: dict[str, _Event] = {}
        self._writers: set[_ClipWriter] = set()
        self._lock = threading.RLock()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"zsad-media-{self._camera_dir[:16]}")
        self._pending: set[Future[None]] = set()
        # Snapshots waiting for their frame, by alert id. The event-media frames can reach the recorder
        # after the model's frames of the same time (the CPU graph drains its display branch on its own
        # thread), so the first scored clip of a stream may open an alert before its frame is buffered.
        self._awaiting: dict[str, _PendingSnapshot] = {}
        self._shape: tuple[int, ...] | None = None  # the newest frame's (H, W, 3)
        # A frame this close to a time is that time's frame: frames come on the sampling grid.
        self._frame_tolerance = 0.5 / fps
        self._failing = False
        self.errors = 0
        self._closed = False
        self._remove_stale_parts()

    # ---------------------------------------------------------------- errors

    def _report(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            first = not self._failing
            self._failing = True
        if self.metrics is not None:
            self.metrics.media_errors.inc(camera=self.camera)
        if first:
            log.error(
                "camera %s: %s failed: %s (further media errors counted, not logged)", self.camera, what, exc
            )
        else:
            log.debug("camera %s: %s failed: %s", self.camera, what, exc)

    def _remove_stale_parts(self) -> None:
        """Delete half-written files (``.<name>.part``) that are not this recorder's and have not been
        written for longer than a clip writer may stay silent: left by a run that was killed. Retention
        skips hidden files, so without this they would stay forever. Recent ones are left alone: they
        may belong to the recorder this one replaces (a camera restarted by a reload), still finishing."""
        idle_s = self._clip_timeout_s + 5.0
        with self._lock:
            own = {w.part_path.name for w in self._writers}
        now = time.time()
        removed = 0
        try:
            parts = list(self.events_dir.glob(".*.part")) if self.events_dir.is_dir() else []
            for path in parts:
                if path.name in own:
                    continue
                try:
                    if now - path.stat().st_mtime < idle_s:
                        continue
                except FileNotFoundError:
                    continue
                path.unlink(missing_ok=True)
                removed += 1
        except OSError as exc:
            self._report("removing half-written files", exc)
            return
        if removed:
            log.info("camera %s: removed %d half-written file(s) of an earlier run", self.camera, removed)

    def _ok(self) -> None:
        with self._lock:
            if self._failing:
                log.info("camera %s: event media written again", self.camera)
            self._failing = False

    # ---------------------------------------------------------------- paths

    def _paths(self, alert_id: str) -> tuple[str, Path]:
        stem = safe_component(alert_id)
        # Inside events/ as it resolves, not the output folder: events/ itself may be a link to a bigger
        # disk (the operator's choice, which the review page serves the same way), while a camera folder
        # that links out of it is still refused. The names cannot climb out anyway (safe_component: no
        # '/', never '.' or '..').
        root = self.events_dir.parent.resolve()  # <output_dir>/events
        target = (self.events_dir / f"{stem}.jpg").resolve()
        if root not in target.parents:
            raise MediaPathError(f"event path {target} is outside {root}")
        return stem, self.events_dir

    def _relative(self, stem: str, ext: str) -> str:
        return f"events/{self._camera_dir}/{stem}.{ext}"

    # ---------------------------------------------------------------- frames

    def add_frame(self, frame: Frame, pts: float) -> None:
        """Feed one frame ``(H, W, 3)`` uint8 RGB at stream time ``pts`` seconds (non-decreasing). An array is
        copied; a :class:`LazyFrame` is kept as it is and read only if a snapshot or clip uses it."""
        if self._closed:
            return
        shape = tuple(frame.shape)
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got shape {shape}")
        image: Frame = np.array(frame, dtype=np.uint8, copy=True) if isinstance(frame, np.ndarray) else frame
        with self._lock:
            self._shape = shape
            self._ring.append((pts, image))
            while self._ring and pts - self._ring[0][0] > self.config.pre_s + 1e-9 and len(self._ring) > 1:
                self._ring.popleft()
            for ev in list(self._events.values()):
                if ev.writer is None:
                    continue
                if ev.end_pts is not None and pts > ev.end_pts + self.config.post_s + 1e-9:
                    self._finish(ev)
                else:
                    ev.writer.push(image, pts)
            for alert_id, waiting in list(self._awaiting.items()):
                if self._covers(waiting.peak_pts):
                    self._write_awaiting(alert_id, waiting)

    def latest_jpeg(self, quality: int | None = None) -> bytes | None:
        """The newest buffered frame as JPEG bytes (the review page's live view), or None before the first
        frame."""
        frame = self._frame_near(None)
        if frame is None:
            return None
        buf = io.BytesIO()
        Image.fromarray(_pixels(frame)).save(buf, format="JPEG", quality=quality or self.jpeg_quality)
        return buf.getvalue()

    def frame_at(self, pts: float | None = None) -> Frame | PendingFrame | None:
        """The buffered frame nearest ``pts`` (the newest when None; None if nothing is buffered), or a
        :class:`PendingFrame` when ``pts`` is later than every buffered frame: the CPU graph hands event-media
        frames over on their own thread, which can lag the scoring. Pass it as the alert machine's
        ``frame_ref``: the peak's own frame is kept for the snapshot, or the snapshot waits for it."""
        with self._lock:
            if pts is not None and not self._covers(pts):
                return PendingFrame(pts, self._shape)
            return self._frame_near(pts)

    def _covers(self, t: float | None) -> bool:
        """Whether the frame of time ``t`` has come (None: any frame); the caller holds the lock."""
        if not self._ring:
            return False
        return t is None or self._ring[-1][0] >= t - self._frame_tolerance

    def _frame_near(self, t: float | None) -> Frame | None:
        with self._lock:
            if not self._ring:
                return None
            if t is None:
                return self._ring[-1][1]
            near_t, frame = min(self._ring, key=lambda item: abs(item[0] - t))
            if abs(near_t - t) > self._frame_tolerance:
                # Scoring ran more than the ring's span behind the event-media frames (a backlog).
                log.debug(
                    "camera %s: the frame of %.2f s is gone; the nearest is of %.2f s", self.camera, t, near_t
                )
            return frame

    # ---------------------------------------------------------------- events

    def open_event(
        self,
        alert_id: str,
        start_pts: float,
        peak_pts: float | None = None,
        peak_frame: Frame | None = None,
        peak_evidence: PeakEvidence | None = None,
    ) -> EventMedia:
        """An alert opened: start its clip (with the buffered pre-roll from ``start_pts - pre_s``) and write
        the snapshot of ``peak_frame`` (or the buffered frame nearest ``peak_pts``, else the newest), and
        with ``peak_evidence`` (the evidence of the alert's peak clip) its heatmap from the same pixels.
        Returns the relative paths to put in the alert record. Never raises for I/O trouble."""
        if self._closed:
            return EventMedia(None, None)
        try:
            stem, folder = self._paths(alert_id)
            folder.mkdir(parents=True, exist_ok=True)
        except (OSError, MediaPathError) as exc:
            self._report(f"event folder for alert {alert_id}", exc)
            return EventMedia(None, None)
        snapshot = folder / f"{stem}.jpg" if self.config.snapshots else None
        writer = None
        if self.config.clips:
            writer = _ClipWriter(
                folder / f"{stem}.mp4",
                self.fps,
                self._clip_done,
                queue_frames=int(self._max_frames + 4 * self.fps),
                timeout_s=self._clip_timeout_s,
            )
            with self._lock:
                self._writers.add(writer)  # before start, so a writer that fails at once is still discarded
                for t, image in self._ring:
                    if t >= start_pts - self.config.pre_s - 1e-9:
                        writer.push(image, t)
                try:
                    writer.start()
                except RuntimeError as exc:  # e.g. the thread limit: no clip, alerting goes on
                    self._writers.discard(writer)
                    writer = None
                    self._report(f"clip thread for alert {alert_id}", exc)
        ev = _Event(alert_id=alert_id, stem=stem, snapshot=snapshot, writer=writer, start_pts=start_pts)
        with self._lock:
            self._events[alert_id] = ev
        self._submit("retention", self._enforce_retention)
        if snapshot is not None:
            self._snapshot(ev, peak_pts, peak_frame, peak_evidence)
        return self._media(ev)

    def _media(self, ev: _Event) -> EventMedia:
        return EventMedia(
            snapshot=self._relative(ev.stem, "jpg") if ev.snapshot is not None else None,
            clip=self._relative(ev.stem, "mp4") if ev.writer is not None else None,
            heatmap=self._relative(ev.stem, HEATMAP_SUFFIX[1:]) if ev.snapshot is not None else None,
        )

    def update_peak(
        self,
        alert_id: str,
        peak_pts: float | None = None,
        peak_frame: Frame | None = None,
        peak_evidence: PeakEvidence | None = None,
    ) -> None:
        """The alert's peak rose: rewrite its snapshot, and its heatmap from ``peak_evidence`` (None: the
        new peak has no evidence map, so an earlier heatmap, which no longer shows the peak, is deleted)."""
        with self._lock:
            ev = self._events.get(alert_id)
        if ev is not None and ev.snapshot is not None:
            self._snapshot(ev, peak_pts, peak_frame, peak_evidence)

    def close_event(
        self,
        alert_id: str,
        end_pts: float,
        peak_pts: float | None = None,
        peak_frame: Frame | None = None,
        peak_evidence: PeakEvidence | None = None,
    ) -> EventMedia:
        """An alert closed at ``end_pts``: the clip continues for ``post_s`` more seconds of frames; the
        snapshot (and heatmap, as in :meth:`update_peak`) is rewritten when a peak frame or time is given.
        Returns the same paths as at open."""
        with self._lock:
            ev = self._events.get(alert_id)
            if ev is None:
                return EventMedia(None, None)
            ev.end_pts = end_pts
            last = self._ring[-1][0] if self._ring else -math.inf
            if ev.writer is not None and last >= end_pts + self.config.post_s - 1e-9:
                self._finish(ev)
            elif ev.writer is None:
                self._events.pop(alert_id, None)
        if ev.snapshot is not None and (peak_frame is not None or peak_pts is not None):
            self._snapshot(ev, peak_pts, peak_frame, peak_evidence)
        return self._media(ev)

    def end_stream(self) -> None:
        """The camera's stream ended (end of file, failed): no frame will come. Finish the clips of closed
        alerts with the frames they have (their post-roll would otherwise wait for frames until the run
        ends), and write the snapshots still waiting for their frame from the nearest one buffered."""
        with self._lock:
            for ev in list(self._events.values()):
                if ev.end_pts is not None:
                    self._finish(ev)
            if self._ring:
                for alert_id, waiting in list(self._awaiting.items()):
                    self._write_awaiting(alert_id, waiting)

    def _finish(self, ev: _Event) -> None:
        self._events.pop(ev.alert_id, None)
        if ev.writer is not None:
            ev.writer.finish()

    def _clip_done(self, writer: _ClipWriter, error: BaseException | None) -> None:
        with self._lock:
            self._writers.discard(writer)
        if error is not None:
            self._report(f"clip {writer.final_path.name}", error)
            return
        if writer.frames_dropped:
            log.warning(
                "camera %s: clip %s dropped %d frame(s) (encoder too slow or size changed)",
                self.camera,
                writer.final_path.name,
                writer.frames_dropped,
            )
        self._ok()

    # ---------------------------------------------------------------- snapshot and retention (I/O thread)

    def _submit(self, what: str, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the I/O thread; an exception it lets out is reported as ``what``'s."""
        try:
            fut = self._io.submit(fn, *args)
        except RuntimeError:  # executor shut down: the recorder was closed (the run's outputs stop first)
            log.warning(
                "camera %s: event media asked for after the recorder closed; not written", self.camera
            )
            return
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(partial(self._pending_done, what))

    def _pending_done(self, what: str, fut: Future[None]) -> None:
        # The tasks report the failures they expect themselves; anything else (a bug, a library's
        # surprise) would otherwise end silently in the future, uncounted. Reported before the future
        # leaves the pending set, so that wait_idle() returns with it counted.
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self._report(f"{what} ({type(exc).__name__})", exc)
        with self._lock:
            self._pending.discard(fut)

    def _snapshot(
        self, ev: _Event, peak_pts: float | None, peak_frame: Frame | None, evidence: PeakEvidence | None
    ) -> None:
        if ev.snapshot is None:
            return
        frame: Frame | None
        with self._lock:
            if isinstance(peak_frame, PendingFrame):  # the frame of its time had not come when it was asked
                peak_pts, peak_frame = peak_frame.pts, None
            if isinstance(peak_frame, np.ndarray):
                frame = np.array(peak_frame, dtype=np.uint8, copy=True)
            elif peak_frame is not None:
                frame = peak_frame
            elif self._covers(peak_pts):
                frame = self._frame_near(peak_pts)
            else:
                frame = None  # the peak's frame has not come yet: wait for it
            if frame is None:
                self._awaiting[ev.alert_id] = _PendingSnapshot(
                    ev.stem, ev.snapshot, ev.heatmap, peak_pts, evidence
                )
                return
            # A newer peak's snapshot replaces one still waiting for an older peak's frame.
            self._awaiting.pop(ev.alert_id, None)
            self._submit(
                f"snapshot {ev.snapshot.name}", self._write_jpeg, ev.snapshot, frame, ev.heatmap, evidence
            )

    def _write_awaiting(self, alert_id: str, waiting: _PendingSnapshot) -> None:
        """Write a waiting snapshot from the buffered frame nearest its peak (the caller holds the lock
        and has a frame buffered)."""
        self._awaiting.pop(alert_id, None)
        frame = self._frame_near(waiting.peak_pts)
        if frame is not None:
            self._submit(
                f"snapshot {waiting.snapshot.name}",
                self._write_jpeg,
                waiting.snapshot,
                frame,
                waiting.heatmap,
                waiting.evidence,
            )

    def _write_jpeg(
        self, path: Path, frame: Frame, heatmap: Path | None = None, evidence: PeakEvidence | None = None
    ) -> None:
        """The snapshot at ``path`` and, with ``evidence``, the heatmap at ``heatmap`` from the same pixels
        (read once); without evidence an earlier heatmap is deleted (it showed an older peak)."""
        try:
            pixels = _pixels(frame)
        except RuntimeError as exc:  # a frame whose pixels are gone
            self._report(f"snapshot {path.name}", exc)
            return
        if self._write_atomic(
            "snapshot",
            path,
            lambda fh: Image.fromarray(pixels).save(fh, format="JPEG", quality=self.jpeg_quality),
        ):
            self._ok()
        if heatmap is None:
            return
        if evidence is None:
            try:
                heatmap.unlink(missing_ok=True)
            except OSError as exc:
                self._report(f"removing heatmap {heatmap.name}", exc)
            return
        if self._write_atomic(
            "heatmap", heatmap, lambda fh: fh.write(heatmap_jpeg(pixels, evidence, self.jpeg_quality))
        ):
            self._ok()

    def _write_atomic(self, what: str, path: Path, write: Any) -> bool:
        """Write ``path`` through ``write(binary file)`` atomically (:func:`core.datafile.write_atomic`: a
        hidden ``.part`` file, fsync'd, renamed; removed on any failure); True on success, else the failure
        is reported as ``what``'s. Any other exception goes on to the caller (the I/O thread's future, which
        reports it, :meth:`_pending_done`)."""
        try:
            # fsync'd before the rename: after a power cut the name shows the whole file or the old one,
            # never an empty or torn JPEG. Its .part goes on any failure (retention skips hidden files).
            write_atomic(path, write)
        except (OSError, ValueError, RuntimeError) as exc:
            self._report(f"{what} {path.name}", exc)
            return False
        return True

    def _enforce_retention(self) -> None:
        """Delete the oldest events beyond ``max_events_per_camera`` (never one still being written), and
        stale half-written files."""
        self._remove_stale_parts()
        keep = self.config.max_events_per_camera
        try:
            files = [p for p in self.events_dir.iterdir() if not p.name.startswith(".")]
        except OSError as exc:
            self._report("retention scan", exc)
            return
        with self._lock:
            active = {ev.stem for ev in self._events.values()}
            active |= {w.final_path.stem for w in self._writers}
            active |= {waiting.stem for waiting in self._awaiting.values()}
        newest: dict[str, float] = {}
        for p in files:
            stem = _event_stem(p.name)
            if stem is None:
                continue
            try:
                mtime = p.stat().st_mtime
            except OSError:
                continue
            newest[stem] = max(newest.get(stem, 0.0), mtime)
        stems = set(newest) | active
        excess = len(stems) - keep
        if excess <= 0:
            return
        for stem in sorted((s for s in newest if s not in active), key=lambda s: newest[s])[:excess]:
            for ext in EVENT_SUFFIXES:
                try:
                    (self.events_dir / f"{stem}{ext}").unlink(missing_ok=True)
                except OSError as exc:
                    self._report(f"retention delete {stem}{ext}", exc)
            log.debug("camera %s: retention deleted event %s", self.camera, stem)

    # ---------------------------------------------------------------- lifecycle

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until pending snapshots and finished clips are written; True if all done in time.
        Clips of events still open (or in post-roll) are not waited for, nor snapshots still waiting for
        their frame (:meth:`frame_at`)."""
        pause = threading.Event()
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._pending)
                writers = [w for w in self._writers if w._finished]
            if not pending and not writers:
                return True
            if time.monotonic() > end:
                return False
            pause.wait(0.02)

    def close(self, timeout: float = 30.0) -> None:
        """Finish every clip with the frames received so far and wait up to ``timeout`` for the files."""
        with self._lock:
            self._closed = True
            for ev in list(self._events.values()):
                self._finish(ev)
            writers = list(self._writers)
            waiting = list(self._awaiting.items())
            for alert_id, snap in waiting:
                if self._ring:
                    self._write_awaiting(alert_id, snap)
            if self._awaiting:
                log.warning(
                    "camera %s: no frame came for the snapshot(s) of alert(s) %s",
                    self.camera,
                    sorted(self._awaiting),
                )
                self._awaiting.clear()
        end = time.monotonic() + timeout
        for w in writers:
            w.thread.join(max(0.0, end - time.monotonic()))
        stuck = [w.final_path.name for w in writers if w.thread.is_alive()]
        if stuck:
            log.warning("camera %s: clip(s) %s not finished within %.0fs", self.camera, stuck, timeout)
        self._io.shutdown(wait=True)
        with self._lock:
            self._ring.clear()
