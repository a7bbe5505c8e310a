"""The CPU camera graph: many per-camera GStreamer pipelines driven by one GLib main loop thread.

Threads:

* ``zsad-gst-loop``: one ``GLib.MainLoop`` on a private ``GLib.MainContext``. It owns every camera's bus
  watch, the reconnect timers and the stall watchdog, builds and restarts pipelines, and calls ``on_state``.
* GStreamer streaming threads (one or more per camera): copy each model-size RGB frame out of the appsink
  and call ``on_frame``. Calls for one camera are serialised; different cameras call concurrently, so
  callbacks must be thread-safe and quick (hand heavy work to a queue, e.g. the scheduler).
* ``zsad-display`` (only with a display size): drains every camera's display appsink every
  ``_DISPLAY_POLL_S`` and calls ``on_display_frame`` with frames not yet copied out of GStreamer
  (:class:`~pipeline.cpu.sources.SampleFrame`). One thread instead of a Python callback per frame on each
  camera's streaming thread: at 16 cameras that saves 0.5 to 0.75 ms of CPU a frame (docs/benchmarks.md).
* ``zsad-teardown-<id>``: short-lived, sets a dead or removed pipeline to NULL so that a hung RTSP teardown
  never blocks the loop (and thus the other cameras), nor :meth:`CameraGraph.remove_camera` for longer than
  its timeout (a reload's caller, which must still hear a SIGTERM).

Camera states: ``starting`` -> ``live`` (first frame) -> ``eos`` (a file ended) | ``failed`` (missing or
corrupt file, missing decoder: not recoverable) | ``reconnecting`` (network/v4l2 error, EOS or stall; the
pipeline is rebuilt after a backoff of ``reconnect_initial_s`` doubling up to ``reconnect_max_s``,
:class:`~pipeline.reconnect.ReconnectBackoff`) -> ``live`` again. ``stopped`` after
:meth:`CameraGraph.stop`. ``loop://`` cameras seek back to the start at EOS and stay ``live``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.config import CameraSettings
from core.gst import ElementMissingError, GstError, init_gstreamer, load_typelib, missing_elements
from pipeline.cpu.sources import (
    DISPLAY_QUEUE,
    CameraPipeline,
    FrameSize,
    SampleFrame,
    SourceError,
    SourceSpec,
    lower_thread_priority,
    parse_source_uri,
    redact,
)
from pipeline.reconnect import FIRST_FRAME_FACTOR, STALL_TIMEOUT_S, ReconnectBackoff, stall_timeout

__all__ = [
    "CameraGraph",
    "CameraState",
    "CameraStats",
    "DisplayFn",
    "DuplicateCameraError",
    "FrameFn",
    "GraphStateError",
    "StateFn",
    "WantsFn",
    "required_elements",
]

log = logging.getLogger(__name__)

CameraState = Literal["starting", "live", "reconnecting", "eos", "failed", "stopped"]

FrameFn = Callable[[str, float, np.ndarray | None], None]
"""``on_frame(camera_id, pts_s, frame)``; frame ``(H, W, 3) uint8`` RGB, fresh and owned by the callee, or
None for a frame the graph's ``wants_frame`` declined (it counts as a sampled frame; nobody reads it)."""

WantsFn = Callable[[str], bool]
"""``wants_frame(camera_id)``: whether the camera's next sampled frame will be read (asked on its streaming
thread, after the ``on_frame`` call for its frame before has returned)."""

StateFn = Callable[[str, str, str], None]
"""``on_state(camera_id, state, detail)``, called from the loop thread; detail has credentials redacted."""

DisplayFn = Callable[[str, float, SampleFrame], None]
"""``on_display_frame(camera_id, pts_s, frame)``; frame a
:class:`~pipeline.cpu.sources.SampleFrame` (I420 at the
display size, read as RGB by ``frame.rgb()``). Called from the ``zsad-display`` thread, and from the loop
thread for the last frames of a pipeline being taken down; calls for one camera are serialised. It must be
quick (one thread serves every camera) and must not call back into the graph (``remove_camera``,
``stop``): those wait for the drain that is calling it."""

_WATCHDOG_MS = 250
_DISPLAY_POLL_S = 0.04  # longest wait between two drains of the display appsinks
_DISPLAY_POLL_MIN_S = 0.002
_CALL_TIMEOUT_S = 30.0
#: How long :meth:`CameraGraph.remove_camera` waits for the camera's pipeline to reach NULL: a reload that
#: removes or restarts a camera whose RTSP server never answers TEARDOWN must go on (and a SIGTERM be heard).
REMOVE_TIMEOUT_S = 10.0
# A file pipeline can, rarely, stop before its first frame without posting an error (GStreamer 1.22:
# qtdemux and typefind left with paused tasks on a truncated MP4, 4 runs in 34 of test_file_faults).
# The start watchdog rebuilds it this many times before the camera fails: a last resort that warns as
# one. (Many cameras stuck at once was another thing, found and fixed in core.gst: a PyGObject race.)
_START_RETRIES = 2


class GraphStateError(RuntimeError):
    """The graph used in the wrong order (e.g. ``add_camera`` after ``stop``)."""


class DuplicateCameraError(ValueError):
    """A camera id that is already in the graph."""


def required_elements(kind: str) -> list[str]:
    """GStreamer elements a source kind needs (checked before a camera is added)."""
    common = ["videorate", "capsfilter", "videoscale", "videoconvert", "appsink", "tee", "queue"]
    per_kind = {
        "file": ["filesrc", "decodebin"],
        "loop": ["filesrc", "decodebin"],
        "rtsp": ["rtspsrc", "decodebin"],
        "http": ["uridecodebin", "souphttpsrc"],
        "v4l2": ["v4l2src", "decodebin"],
    }
    return per_kind[kind] + common


def _check_elements(kind: str) -> None:
    missing = missing_elements(required_elements(kind))
    if missing:
        raise ElementMissingError(missing[0])


@dataclass
class CameraStats:
    """A snapshot of one camera. Frame counters add up over reconnects and loop restarts."""

    camera_id: str
    state: str
    detail: str
    since_s: float  # time.monotonic() of the last state change
    frames_in: int  # decoded frames that reached videorate
    frames_sampled: int  # frames videorate let through (<= sampling.fps)
    frames_delivered: int  # frames handed to on_frame
    display_frames: int  # frames handed to on_display_frame
    reconnects: int  # pipeline rebuilds after a disconnect or stall
    loops: int  # loop:// restarts
    last_frame_age_s: float | None  # seconds since the last delivered frame; None before the first


class _Camera:
    """Book-keeping of one camera; fields guarded by ``lock`` unless only the loop thread touches them."""

    def __init__(self, settings: CameraSettings, spec: SourceSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.id = settings.id
        self.lock = threading.Lock()
        self.generation = 0  # bumped on every build/teardown: stale callbacks are ignored
        self.pipeline: CameraPipeline | None = None
        self.state: str = "starting"
        self.detail = ""
        self.since = time.monotonic()
        self.backoff = ReconnectBackoff(settings.rtsp.reconnect_initial_s, settings.rtsp.reconnect_max_s)
        self.retry_source: Any = None
        self.built_at = 0.0
        self.got_frame = False
        self.last_frame_at: float | None = None
        self.delivered = 0
        self.display_delivered = 0
        self.in_total = 0
        self.sampled_total = 0
        self.reconnects = 0
        self.start_retries = 0  # file/loop rebuilds after a start that never produced a frame
        self.loops = 0
        # Monotonic pts across loop restarts and reconnects: out = offset + (raw - base).
        self.rebase = True
        self.pts_base = 0.0
        self.pts_offset = 0.0
        self.last_pts: float | None = None
        self.frame_dt = 1.0 / settings.sampling.fps
        self.display_lock = threading.Lock()  # one drain of the display appsink at a time


class CameraGraph:
    """All cameras of a site, one GStreamer pipeline each, on one GLib main loop thread.

    Args:
        frame_size: model input size ``(width, height)`` (or a :class:`FrameSize`); every frame given to
            ``on_frame`` has shape ``(height, width, 3)``.
        on_frame: ``on_frame(camera_id, pts_s, frame)``; see :data:`FrameFn`. ``pts_s`` increases
            monotonically per camera, across loop restarts and reconnects (media time for files).
        on_state: optional ``on_state(camera_id, state, detail)``; see :data:`StateFn`.
        cameras: cameras to run from :meth:`start` on.
        realtime: play file and loop cameras at their native rate (for demos); default as fast as possible.
        stall_timeout_s: a network or v4l2 camera without a frame for this long is treated as disconnected
            (a camera whose config sets ``rtsp.stall_timeout_s`` uses its own).
        start_timeout_s: a file or loop camera with neither a frame nor an error this long after its
            pipeline was built is rebuilt (twice), then failed. Once playing, files are never timed out.
        display_size: optional second, larger size ``(width, height)`` for event media, delivered to
            ``on_display_frame`` with the same ``pts_s`` as the model-size frame (for a source whose
            buffers carry no timestamps, both are arrival times, and the display frame's is when it was
            pulled, up to ``_DISPLAY_POLL_S`` later).
        on_loop: ``on_loop(camera_id)`` when a ``loop://`` camera starts its file again (loop thread),
            before the new pass's first frame: the run restarts the camera's clips and history there.
        on_display_frame: receives display-size frames (see :data:`DisplayFn`); required when
            ``display_size`` is set.
        decode_nice: nice value of every camera's streaming threads (decode, scaling, the frame
            callbacks); 0 leaves them at the process's priority. See ``scheduler.decode_nice``.
        decode_threads: threads of each camera's software decoder; 0 leaves the decoder's own choice. See
            ``scheduler.decode_threads``.
        cwd: folder that relative ``file://`` and ``loop://`` paths resolve against (default: current).
        wants_frame: see :data:`WantsFn`; a frame it declines is never scaled, converted or copied, and
            ``on_frame`` gets None for it (None: every frame is read).
    """

    def __init__(
        self,
        frame_size: FrameSize | tuple[int, int],
        on_frame: FrameFn,
        on_state: StateFn | None = None,
        *,
        cameras: Iterable[CameraSettings] = (),
        realtime: bool = False,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        start_timeout_s: float = 10.0,
        display_size: FrameSize | tuple[int, int] | None = None,
        on_display_frame: DisplayFn | None = None,
        decode_nice: int = 0,
        decode_threads: int = 0,
        cwd: Path | None = None,
        wants_frame: WantsFn | None = None,
        on_loop: Callable[[str], None] | None = None,
    ) -> None:
        if stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        if start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s}")
        self.start_timeout_s = start_timeout_s
        if not 0 <= decode_nice <= 19:
            raise ValueError(f"decode_nice must be 0..19, got {decode_nice}")
        self.decode_nice = decode_nice
        if decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0, got {decode_threads}")
        self.decode_threads = decode_threads
        if (display_size is None) != (on_display_frame is None):
            raise ValueError("display_size and on_display_frame go together")
        self.frame_size = FrameSize.of(frame_size)
        self.display_size = FrameSize.of(display_size) if display_size is not None else None
        self.realtime = realtime
        self.stall_timeout_s = stall_timeout_s
        self._on_frame = on_frame
        self._wants_frame = wants_frame
        self._on_state = on_state
        self._on_display = on_display_frame
        self._on_loop = on_loop
        self._cwd = cwd
        self._lock = threading.Lock()
        self._cams: dict[str, _Camera] = {}
        self._teardowns: set[threading.Thread] = set()
        self._thread: threading.Thread | None = None
        self._display_thread: threading.Thread | None = None
        self._display_stop = threading.Event()
        self._ctx: Any = None
        self._loop: Any = None
        self._watchdog: Any = None
        self._running = False
        self._stopped = False
        for settings in cameras:
            self._register(settings)

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the loop thread and every registered camera. Raises ElementMissingError up front."""
        if self._thread is not None or self._stopped:
            raise GraphStateError("CameraGraph.start: already started (or stopped)")
        GLib = load_typelib("GLib")  # initialises GStreamer too
        self._ctx = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._ctx, False)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name="zsad-gst-loop", daemon=True
        )
        self._thread.start()
        if not ready.wait(_CALL_TIMEOUT_S):
            raise GraphStateError("the GLib main loop thread did not start")
        self._running = True
        self._call(self._start_all)
        if self._on_display is not None:
            self._display_thread = threading.Thread(
                target=self._poll_display, name="zsad-display", daemon=True
            )
            self._display_thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every camera (pipelines to NULL), quit the loop and join its thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is None:
            return
        pipelines: list[tuple[_Camera, CameraPipeline]] = self._call(self._detach_all) or []
        self._running = False
        workers = [
            threading.Thread(target=self._set_null, args=(cam, cp), name=f"zsad-stop-{cam.id}", daemon=True)
            for cam, cp in pipelines
        ]
        for w in workers:
            w.start()
        deadline = time.monotonic() + timeout_s
        for w in [*workers, *list(self._teardowns)]:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                log.error("a camera pipeline did not reach NULL within %.1f s (%s)", timeout_s, w.name)
        self._display_stop.set()
        self._loop.quit()
        if not self._in_loop():  # stop() from an on_state callback cannot join its own thread
            self._thread.join(max(0.1, deadline - time.monotonic()))
        if self._display_thread is not None and self._display_thread is not threading.current_thread():
            self._display_thread.join(max(0.1, deadline - time.monotonic()))

    def add_camera(self, settings: CameraSettings) -> None:
        """Add and (if running) start a camera without disturbing the others.

        Raises UnsupportedUriError, ElementMissingError, DuplicateCameraError, GraphStateError.
        """
        if self._stopped:
            raise GraphStateError("CameraGraph.add_camera after stop")
        cam = self._register(settings)
        if self._running:
            self._call(lambda: self._build_guarded(cam))

    def remove_camera(self, camera_id: str, timeout_s: float = REMOVE_TIMEOUT_S) -> None:
        """Stop and forget one camera. From any thread but the loop's, this waits up to ``timeout_s`` for its
        pipeline to reach NULL, and then no ``on_frame`` call for it follows. A pipeline that takes longer (a
        hung RTSP teardown) is logged as an error and left to finish on its ``zsad-teardown-<id>`` thread
        (:meth:`stop` waits for it again): the camera is removed all the same, and its id may be added
        again."""
        with self._lock:
            if camera_id not in self._cams:
                raise KeyError(f"no camera with id {camera_id!r}")
        if not self._running:
            with self._lock:
                self._cams.pop(camera_id, None)
            return
        detached = self._call(lambda: self._detach(camera_id))
        if detached is None:
            return
        cam, cp = detached
        if cp is not None:
            teardown = self._teardown_async(cam, cp)
            if not self._in_loop():  # the loop thread never waits: the other cameras run on it
                teardown.join(timeout_s)
                if teardown.is_alive():
                    log.error(
                        "camera %s: its pipeline did not reach NULL within %.1f s (a source that does not "
                        "answer?); removed anyway, its teardown goes on in the background (%s)",
                        camera_id,
                        timeout_s,
                        teardown.name,
                    )
        log.info("camera %s removed", camera_id)

    def states(self) -> dict[str, str]:
        """Camera id -> state (a snapshot)."""
        with self._lock:
            cams = list(self._cams.values())
        return {cam.id: cam.state for cam in cams}

    def stats(self) -> dict[str, CameraStats]:
        """Camera id -> :class:`CameraStats` (a snapshot) for metrics."""
        with self._lock:
            cams = list(self._cams.values())
        now = time.monotonic()
        out = {}
        for cam in cams:
            with cam.lock:
                cp = cam.pipeline
                frames_in, sampled = cam.in_total, cam.sampled_total
                snapshot = (cam.state, cam.detail, cam.since, cam.delivered, cam.display_delivered)
                reconnects, loops, last = cam.reconnects, cam.loops, cam.last_frame_at
            if cp is not None:
                cur_in, cur_out = cp.rate_counters()
                frames_in += cur_in
                sampled += cur_out
            out[cam.id] = CameraStats(
                camera_id=cam.id,
                state=snapshot[0],
                detail=snapshot[1],
                since_s=snapshot[2],
                frames_in=frames_in,
                frames_sampled=sampled,
                frames_delivered=snapshot[3],
                display_frames=snapshot[4],
                reconnects=reconnects,
                loops=loops,
                last_frame_age_s=None if last is None else now - last,
            )
        return out

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ loop plumbing

    def _run_loop(self, ready: threading.Event) -> None:
        self._ctx.push_thread_default()  # bus watches added from this thread attach to our context
        try:
            GLib = load_typelib("GLib")

            src = GLib.Idle()

            def signal_ready(*_: Any) -> bool:
                ready.set()
                return False

            src.set_callback(signal_ready)
            src.attach(self._ctx)
            self._loop.run()
        finally:
            self._ctx.pop_thread_default()

    def _in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def _post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the loop thread soon (fire and forget)."""
        GLib = load_typelib("GLib")

        def run(*_: Any) -> bool:
            try:
                fn()
            except Exception:
                log.exception("camera graph: loop task failed")
            return False

        src = GLib.Idle()
        src.set_callback(run)
        src.attach(self._ctx)

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the loop thread, wait, and return its result (re-raising its exception)."""
        if self._in_loop():
            return fn()
        done = threading.Event()
        box: dict[str, Any] = {}

        def task() -> None:
            try:
                box["value"] = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised in the calling thread
                box["error"] = exc
            finally:
                done.set()

        self._post(task)
        if not done.wait(_CALL_TIMEOUT_S):
            raise GraphStateError("the GLib main loop did not answer within 30 s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # ------------------------------------------------------------------ camera lifecycle (loop thread)

    def _register(self, settings: CameraSettings) -> _Camera:
        spec = parse_source_uri(settings.uri, self._cwd)
        _check_elements(spec.kind)
        cam = _Camera(settings, spec)
        with self._lock:
            if settings.id in self._cams:
                raise DuplicateCameraError(f"camera id {settings.id!r} is already in the graph")
            self._cams[settings.id] = cam
        return cam

    def _start_all(self) -> None:
        GLib = load_typelib("GLib")

        with self._lock:
            cams = list(self._cams.values())
        for cam in cams:
            self._build_guarded(cam)
        self._watchdog = GLib.Timeout(_WATCHDOG_MS)
        self._watchdog.set_callback(self._check_stalls)
        self._watchdog.attach(self._ctx)

    def _set_state(self, cam: _Camera, state: str, detail: str = "") -> None:
        detail = redact(detail)
        with cam.lock:
            if cam.state == state and cam.detail == detail:
                return
            cam.state, cam.detail, cam.since = state, detail, time.monotonic()
        level = (
            logging.ERROR
            if state == "failed"
            else logging.WARNING
            if state == "reconnecting"
            else logging.INFO
        )
        log.log(
            level, "camera %s (%s): %s%s", cam.id, cam.spec.safe_uri, state, f": {detail}" if detail else ""
        )
        if self._on_state is not None:
            try:
                self._on_state(cam.id, state, detail)
            except Exception:
                log.exception("on_state callback failed for camera %s", cam.id)

    def _build_guarded(self, cam: _Camera) -> None:
        """:meth:`_build` from a loop callback: an unexpected error fails this camera, never the loop."""
        try:
            self._build(cam)
        except Exception as exc:
            log.exception("camera %s: pipeline build failed", cam.id)
            self._set_state(cam, "failed", f"pipeline build failed: {exc}")

    def _build(self, cam: _Camera) -> None:
        """Create and start the camera's pipeline (loop thread)."""
        Gst = init_gstreamer()
        GLib = load_typelib("GLib")

        cam.retry_source = None
        if cam.spec.kind in ("file", "loop"):
            path = Path(cam.spec.location)
            if not path.is_file():
                self._set_state(
                    cam, "failed", f"file not found: {path}" if not path.exists() else f"not a file: {path}"
                )
                return
        with cam.lock:
            cam.generation += 1
            gen = cam.generation
            cam.got_frame = False
            cam.rebase = True
            cam.built_at = time.monotonic()
        s = cam.settings
        try:
            cp = CameraPipeline(
                cam.id,
                cam.spec,
                s.sampling.fps,
                self.frame_size,
                lambda pts, frame: self._on_sample(cam, gen, pts, frame),
                realtime=self.realtime,
                display_size=self.display_size,
                rtsp_tcp=s.rtsp.tcp,
                rtsp_latency_ms=s.rtsp.latency_ms,
                connect_timeout_s=self._stall_timeout(cam),
                thread_nice=self.decode_nice,
                decoder_threads=self.decode_threads,
                on_no_video=lambda: self._post(
                    lambda: self._on_failure(cam, gen, "no video stream in the source", recoverable=False)
                ),
                keep_frame=self._keep_frame_of(cam),
            )
        except (SourceError, GstError) as exc:
            self._set_state(cam, "failed", str(exc))
            return
        bus = cp.pipeline.get_bus()
        bus.add_watch(GLib.PRIORITY_DEFAULT, self._on_bus, cam, gen)
        with cam.lock:
            cam.pipeline = cp
        if cam.state not in ("reconnecting",):
            self._set_state(cam, "starting")
        if cp.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            msg = bus.pop_filtered(Gst.MessageType.ERROR)
            detail = "could not start the pipeline"
            if msg is not None:
                err, debug = msg.parse_error()
                detail = f"{err.message} ({debug})" if debug else err.message
            self._on_failure(cam, gen, detail, recoverable=True)

    def _detach(self, camera_id: str) -> tuple[_Camera, CameraPipeline | None] | None:
        """Forget a camera: cancel its timer, stop callbacks, return its pipeline for teardown."""
        with self._lock:
            cam = self._cams.pop(camera_id, None)
        if cam is None:
            return None
        if cam.retry_source is not None:
            cam.retry_source.destroy()
            cam.retry_source = None
        return cam, self._take_pipeline(cam)

    def _detach_all(self) -> list[tuple[_Camera, CameraPipeline]]:
        if self._watchdog is not None:
            self._watchdog.destroy()
            self._watchdog = None
        with self._lock:
            cams = list(self._cams.values())
        out = []
        for cam in cams:
            if cam.retry_source is not None:
                cam.retry_source.destroy()
                cam.retry_source = None
            cp = self._take_pipeline(cam)
            if cp is not None:
                out.append((cam, cp))
            if cam.state not in ("failed", "eos"):  # keep the reason a camera ended
                self._set_state(cam, "stopped")
        return out

    def _take_pipeline(self, cam: _Camera) -> CameraPipeline | None:
        """Detach the pipeline: bump the generation (stale callbacks are dropped), remove the bus watch.
        Display frames already decoded are handed over first."""
        self._drain_display(cam)
        with cam.lock:
            cam.generation += 1
            cp, cam.pipeline = cam.pipeline, None
        if cp is not None:
            cp.pipeline.get_bus().remove_watch()
            # Bank the counters now so a snapshot taken during the async teardown still adds up.
            frames_in, sampled = cp.rate_counters()
            with cam.lock:
                cam.in_total += frames_in
                cam.sampled_total += sampled
        return cp

    def _discard_pipeline(self, cam: _Camera) -> None:
        """Detach the camera's pipeline (if any) and set it to NULL off the loop thread."""
        cp = self._take_pipeline(cam)
        if cp is not None:
            self._teardown_async(cam, cp)

    def _set_null(self, cam: _Camera, cp: CameraPipeline) -> None:
        cp.pipeline.set_state(init_gstreamer().State.NULL)
        cp.close()  # frees the pipeline: without it every rebuild leaked one, with its file descriptors

    def _teardown_async(self, cam: _Camera, cp: CameraPipeline) -> threading.Thread:
        """Set a pipeline to NULL on a helper thread (a hung RTSP TEARDOWN must not block the loop), which is
        returned (started)."""

        def work() -> None:
            try:
                self._set_null(cam, cp)
            finally:
                with self._lock:
                    self._teardowns.discard(threading.current_thread())

        t = threading.Thread(target=work, name=f"zsad-teardown-{cam.id}", daemon=True)
        with self._lock:
            self._teardowns.add(t)
        t.start()
        return t

    def _on_failure(self, cam: _Camera, gen: int, detail: str, *, recoverable: bool) -> None:
        """Error, EOS of a network source, or stall: reconnect (network/v4l2) or fail (files)."""
        with cam.lock:
            if gen != cam.generation:
                return
        self._discard_pipeline(cam)
        if not (recoverable and cam.spec.reconnects) or self._stopped:
            self._set_state(cam, "failed", detail)
            return
        self._schedule_reconnect(cam, detail)

    def _schedule_reconnect(self, cam: _Camera, detail: str) -> None:
        GLib = load_typelib("GLib")

        delay = cam.backoff.next_delay(time.monotonic())
        self._set_state(cam, "reconnecting", f"{detail}; retry in {delay:.1f} s")

        def retry(*_: Any) -> bool:
            cam.retry_source = None
            with self._lock:
                present = self._cams.get(cam.id) is cam
            if present and not self._stopped:
                with cam.lock:
                    cam.reconnects += 1
                self._build_guarded(cam)
            return False

        src = GLib.Timeout(max(1, int(delay * 1000)))
        src.set_callback(retry)
        src.attach(self._ctx)
        cam.retry_source = src

    def _on_bus(self, _bus: Any, msg: Any, cam: _Camera, gen: int) -> bool:
        # A GLib watch whose callback raises is removed without a word: this camera would never hear of
        # an error or an EOS again. A bug here fails the camera, loudly; the watch is then stale anyway.
        try:
            return self._handle_bus(msg, cam, gen)
        except Exception as exc:
            log.exception("camera %s: handling a pipeline message failed", cam.id)
            self._discard_pipeline(cam)
            self._set_state(cam, "failed", f"handling a pipeline message failed: {exc}")
            return False

    def _handle_bus(self, msg: Any, cam: _Camera, gen: int) -> bool:
        Gst = init_gstreamer()
        with cam.lock:
            if gen != cam.generation:
                return False  # a stale watch: remove it
            unmarked = cam.got_frame and cam.state in ("starting", "reconnecting")
        t = msg.type
        if unmarked and t in (Gst.MessageType.EOS, Gst.MessageType.ERROR):
            # The first frame's "live" is posted as an idle task, which runs after the bus watch: a short
            # file's EOS (or an error) handled first would end the pipeline's generation, and the camera
            # would go from starting to eos without ever having been live.
            self._mark_live(cam, gen)
            with cam.lock:  # on_state ran: it may have stopped or removed the camera
                if gen != cam.generation:
                    return False
        if t == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            missing = err.matches(Gst.CoreError.quark(), Gst.CoreError.MISSING_PLUGIN)
            log.debug("camera %s: error debug info: %s", cam.id, redact(debug or ""))
            detail = f"missing decoder plugin: {err.message}" if missing else str(err.message)
            src = msg.src.get_name() if msg.src is not None else "?"
            detail = f"{detail} (from {src})"
            self._on_failure(cam, gen, detail, recoverable=not missing)
        elif t == Gst.MessageType.EOS:
            self._on_eos(cam, gen)
        elif t == Gst.MessageType.WARNING:
            err, debug = msg.parse_warning()
            log.warning("camera %s: %s", cam.id, redact(f"{err.message} ({debug})"))
        return True

    def _on_eos(self, cam: _Camera, gen: int) -> None:
        Gst = init_gstreamer()
        if cam.spec.kind == "loop":
            # appsink posts EOS once its last display frame is pulled, which can be before the poller has
            # given that frame its pts: finish that first, or an old frame would take the new pass's rebase.
            self._drain_display(cam)
            with cam.lock:
                cam.rebase = True
                cam.loops += 1
                cp = cam.pipeline
            if cp is not None:
                # videorate zeroes its counters on the flushing seek: bank this pass's counts first.
                frames_in, sampled = cp.rate_counters()
                with cam.lock:
                    cam.in_total += frames_in
                    cam.sampled_total += sampled
            if self._on_loop is not None:
                # Before the new pass's first frame: no clip may span the cut, and the history restarts.
                try:
                    self._on_loop(cam.id)
                except Exception:
                    log.exception("on_loop callback failed for camera %s", cam.id)
            if cp is not None and cp.pipeline.seek_simple(
                Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0
            ):
                return
            # Not seekable after all: rebuild from scratch.
            self._discard_pipeline(cam)
            self._build_guarded(cam)
            return
        if cam.spec.kind == "file":
            self._discard_pipeline(cam)
            self._set_state(cam, "eos", "end of file")
            return
        self._on_failure(cam, gen, "end of stream", recoverable=True)

    def _stall_timeout(self, cam: _Camera) -> float:
        """The camera's own stall timeout, else the graph's (:func:`~pipeline.reconnect.stall_timeout`)."""
        return stall_timeout(
            cam.settings.rtsp.stall_timeout_s, cam.settings.sampling.fps, self.stall_timeout_s
        )

    def _check_stalls(self, *_: Any) -> bool:
        # The watchdog of every camera: a callback that raised would be removed by GLib, and no stalled
        # camera would be noticed again.
        try:
            self._check_stalls_once()
        except Exception:
            log.exception("the stall watchdog failed; it keeps running")
        return True

    def _check_stalls_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            cams = list(self._cams.values())
        for cam in cams:
            with cam.lock:
                if cam.pipeline is None:
                    continue
                started = cam.got_frame
                ref = cam.last_frame_at if cam.got_frame and cam.last_frame_at is not None else cam.built_at
                gen = cam.generation
            if cam.spec.reconnects:
                # The first frame gets longer (FIRST_FRAME_FACTOR); after it, the stall timeout applies.
                limit = self._stall_timeout(cam) * (1.0 if started else FIRST_FRAME_FACTOR)
                if now - ref > limit:
                    self._on_failure(cam, gen, f"no frame for {now - ref:.1f} s (stalled)", recoverable=True)
            elif not started and now - ref > self.start_timeout_s:
                # Files are never stall-checked once playing: back-pressure from inference pauses them.
                self._on_start_timeout(cam, gen)

    def _on_start_timeout(self, cam: _Camera, gen: int) -> None:
        """A file or loop camera with neither a frame nor an error since it was built: rebuild, then fail."""
        with cam.lock:
            # Read again under the lock: a first frame may have come since the watchdog looked.
            if gen != cam.generation or cam.got_frame:
                return
        detail = f"no frame and no error within {self.start_timeout_s:.1f} s of starting"
        cp = cam.pipeline
        # Frames that reached the sampler but never on_frame point past the decoder (the frame callback).
        decoded = cp.rate_counters()[1] if cp is not None else 0
        undelivered = f"; {decoded} sampled frame(s) never reached on_frame" if decoded else ""
        if cam.start_retries >= _START_RETRIES:
            self._on_failure(
                cam, gen, f"{detail} ({cam.start_retries + 1} tries){undelivered}", recoverable=False
            )
            return
        cam.start_retries += 1
        log.warning(
            "camera %s: start watchdog: %s%s; rebuilding its pipeline (retry %d of %d). This is a "
            "last-resort workaround for a pipeline GStreamer left stuck, not a fix: please report it with "
            "this log (GST_DEBUG=3 adds GStreamer's view)",
            cam.id,
            detail,
            undelivered,
            cam.start_retries,
            _START_RETRIES,
        )
        self._discard_pipeline(cam)
        self._build_guarded(cam)

    def _mark_live(self, cam: _Camera, gen: int) -> None:
        with cam.lock:
            if gen != cam.generation:
                return
        cam.backoff.live(time.monotonic())  # the backoff starts afresh once it has stayed up
        cam.start_retries = 0
        self._set_state(cam, "live")

    # ------------------------------------------------------------------ streaming threads

    def _stream_pts(self, cam: _Camera, raw: float | None, now: float) -> float:
        """Map a buffer's pts to the camera's monotonic stream time (``cam.lock`` held)."""
        if raw is None:
            raw = now - cam.built_at
        if cam.rebase:
            if cam.last_pts is None:
                cam.pts_base, cam.pts_offset = raw, raw
            else:
                gap = cam.frame_dt
                if cam.spec.reconnects and cam.last_frame_at is not None:
                    gap = max(gap, now - cam.last_frame_at)  # live: the outage is real time
                cam.pts_base, cam.pts_offset = raw, cam.last_pts + gap
            cam.rebase = False
        return cam.pts_offset + (raw - cam.pts_base)

    def _keep_frame_of(self, cam: _Camera) -> Callable[[], bool] | None:
        wants = self._wants_frame
        if wants is None:
            return None
        camera_id = cam.id
        return lambda: wants(camera_id)

    def _on_sample(self, cam: _Camera, gen: int, raw: float | None, frame: np.ndarray | None) -> None:
        now = time.monotonic()
        with cam.lock:
            if gen != cam.generation:
                return
            pts = self._stream_pts(cam, raw, now)
            if cam.last_pts is not None and pts <= cam.last_pts:
                pts = cam.last_pts + 1e-6
            cam.last_pts = pts
            cam.delivered += 1
            cam.last_frame_at = now
            first = not cam.got_frame
            cam.got_frame = True
        if first:
            self._post(lambda: self._mark_live(cam, gen))
        self._on_frame(cam.id, pts, frame)

    # ------------------------------------------------------------------ display frames (poller thread)

    def _poll_display(self) -> None:
        """Drain every camera's display appsink until stopped."""
        if self.decode_nice:
            lower_thread_priority(self.decode_nice)  # event media is decoding work: it yields to inference
        interval = _DISPLAY_POLL_S
        while not self._display_stop.is_set():
            with self._lock:
                cams = list(self._cams.values())
            # The wait adapts to the fastest camera: halved while an appsink is found half full (a file
            # decoding as fast as it can would otherwise wait on a full one), doubled back when passes find
            # little. Live cameras at 25 fps leave it at _DISPLAY_POLL_S: one wake-up serves them all.
            backlog = 0
            for cam in cams:
                try:
                    backlog = max(backlog, self._drain_display(cam))
                except Exception:  # the poller must outlive any one camera: file cameras wait on it
                    log.exception("camera %s: display frames failed", cam.id)
            if backlog >= DISPLAY_QUEUE // 2:
                interval = max(_DISPLAY_POLL_MIN_S, interval / 2)
            elif backlog < DISPLAY_QUEUE // 8:
                interval = min(_DISPLAY_POLL_S, interval * 2)
            self._display_stop.wait(interval)

    def _drain_display(self, cam: _Camera) -> int:
        """Hand a camera's waiting display frames to ``on_display_frame``; return how many were pulled.
        Serialised per camera (the poller, and the loop thread before a teardown, both call it)."""
        if self._on_display is None:
            return 0
        with cam.display_lock:
            with cam.lock:
                cp, gen = cam.pipeline, cam.generation
            if cp is None:
                return 0
            try:
                frames = cp.pull_display()
            except Exception:  # a GStreamer surprise on one camera must not stop the others' media
                log.exception("camera %s: pulling display frames failed", cam.id)
                return 0
            now = time.monotonic()
            for raw, frame in frames:
                with cam.lock:
                    if gen != cam.generation:
                        return len(frames)
                    pts = self._stream_pts(cam, raw, now)
                    cam.display_delivered += 1
                try:
                    self._on_display(cam.id, pts, frame)
                except Exception:  # never let a consumer bug stop the poller
                    log.exception("camera %s: display frame callback failed", cam.id)
            return len(frames)
