"""The DeepStream pad probes: clip scoring and the on-screen score text.

:class:`ClipScoringProbe` sits on the score branch of the graph (after nvinfer, a tee and an
``nvvideoconvert`` to ``RGBA`` at the backbone's H x W). For every batch it

1. copies each camera's frame (``(H, W, 3) uint8`` RGB) into a short per-camera history and hands it to
   ``on_frame`` (event snapshots and clips);
2. reads the backbone's ``tokens`` ``(T, D, h, w)`` and ``embedding`` ``(D,)`` that nvinfer attached for
   each clip that completed on this batch (:func:`pipeline.deepstream.meta.frame_tensors`);
3. takes the clip's first frame (``(T - 1) * frame_stride`` frames before its last) and last frame from the
   history, normalises both with the CPU graph's :class:`plugins.preprocess.Normaliser`, and builds
   :class:`plugins.scorer.ClipTokens`;
4. runs the shared :class:`plugins.scorer.ClipScorer` (per-camera DPC history, the DPC-head runner batched
   across cameras: TensorRT on a device) and the optional :class:`plugins.semantic.SemanticScorer`;
5. hands each :class:`plugins.scorer.StreamScores` to ``on_scores(camera, t, scores, prompt)`` (injected by
   the pipeline: fusion, alerts, sinks) and sets the camera's OSD text from the fused score it returns.

The probe always returns ``Gst.PadProbeReturn.OK``. It has one exception boundary: a batch that fails is
logged and dropped (its clips are lost; the next batch is processed normally).

:class:`OsdScoreBoard` sits before the tiler on the display branch and attaches each camera's latest text
to its frames for ``nvdsosd`` to draw.

This module never imports ``pyds`` or ``pipeline``: the pyds module and the callbacks are passed in.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.gst import init_gstreamer
from pipeline.deepstream.meta import (
    FrameTensors,
    MetaError,
    add_display_text,
    batch_meta_of,
    frame_refs,
    frame_rgb,
    frame_tensors,
)
from plugins.scorer import BACKBONE_OUTPUTS, ClipScorer, ClipTokens, StreamScores
from plugins.semantic import SemanticFn, SemanticMatch
from plugins.streams import SEMANTIC

__all__ = [
    "ClipScoringProbe",
    "FrameHistory",
    "OsdScoreBoard",
    "ScoresCallback",
    "format_osd_text",
    "pad_probe_ok",
]

log = logging.getLogger(__name__)

ScoresCallback = Callable[[str, float, StreamScores, str | None], float | None]
"""``on_scores(camera, t, scores, prompt) -> fused score or None``; ``t``: the clip's last frame time (s)."""

FrameNormaliser = Callable[[np.ndarray], np.ndarray]
"""``(H, W, 3) uint8`` RGB -> ``(3, H, W) float32`` normalised, as the backbone saw it: in the app, the
CPU graph's :class:`plugins.preprocess.Normaliser`."""


def pad_probe_ok() -> Any:
    """``Gst.PadProbeReturn.OK`` (imports and initialises GStreamer on first use)."""
    return init_gstreamer().PadProbeReturn.OK


def format_osd_text(camera: str, fused: float | None, prompt: str | None = None) -> str:
    """``cam-1  2.31`` (``cam-1  --`` while the DPC history fills), plus the best anomalous prompt if any."""
    value = f"{fused:.2f}" if fused is not None and math.isfinite(fused) else "--"
    text = f"{camera}  {value}"
    return f"{text}  {prompt}" if prompt else text


class FrameHistory:
    """The last ``span`` frames of each source, keyed by the mux's per-source ``frame_num``."""

    def __init__(self, span: int) -> None:
        if span < 1:
            raise ValueError(f"span must be >= 1, got {span}")
        self.span = span
        self._frames: dict[int, deque[tuple[int, np.ndarray]]] = {}

    def push(self, source: int, frame_num: int, frame: np.ndarray) -> None:
        self._frames.setdefault(source, deque(maxlen=self.span)).append((frame_num, frame))

    def get(self, source: int, frame_num: int) -> np.ndarray | None:
        for num, frame in self._frames.get(source, ()):
            if num == frame_num:
                return frame
        return None

    def last_frame_num(self, source: int) -> int | None:
        ring = self._frames.get(source)
        return ring[-1][0] if ring else None

    def reset(self, source: int) -> None:
        self._frames.pop(source, None)


def _squeeze_to(array: np.ndarray, ndim: int, name: str) -> np.ndarray:
    """Drop a leading batch dim of 1 if nvinfer left one; refuse any other rank."""
    if array.ndim == ndim + 1 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != ndim:
        raise MetaError(f"backbone output {name} has shape {array.shape}, expected {ndim} dims")
    return np.ascontiguousarray(array, dtype=np.float32)


class ClipScoringProbe:
    """The score-branch pad probe. Call it as a probe (``pad.add_probe(BUFFER, probe)``) or call
    :meth:`process` with a ``Gst.Buffer``.

    Args:
        pyds: the ``pyds`` module (or a test double of it).
        scorer: the shared :class:`ClipScorer`, built with the DPC-head runner.
        cameras: camera ids by mux source id (source ``i`` is ``cameras[i]``).
        clip_len: ``T`` frames per clip.
        frame_stride: source frames between consecutive clip frames (the sequence library's
            ``subsample + 1``).
        normalise: ``(H, W, 3) uint8 -> (3, H, W) float32``, the CPU graph's
            :class:`plugins.preprocess.Normaliser`.
        on_scores: receives every scored clip; returns the fused score for the OSD (or None).
        osd_text: ``osd_text(camera, text)``, e.g. :meth:`OsdScoreBoard.set_text`.
        on_frame: ``on_frame(camera, pts_s, rgb)`` for every frame (event media).
        semantic: the optional semantic stream, e.g. :class:`plugins.semantic.SemanticScorer` (adds
            ``scores["semantic"]`` and the prompt).
        unique_id: ``gie-unique-id`` of the backbone's nvinfer.
        unmap_surfaces: unmap each RGBA surface after copying it (Jetson).
        ok: the value the probe returns (default ``Gst.PadProbeReturn.OK``).
        clock: fallback time source for frames without a PTS.
    """

    def __init__(
        self,
        pyds: Any,
        scorer: ClipScorer,
        cameras: Sequence[str],
        *,
        clip_len: int,
        frame_stride: int,
        normalise: FrameNormaliser,
        on_scores: ScoresCallback,
        osd_text: Callable[[str, str], None] | None = None,
        on_frame: Callable[[str, float, np.ndarray], None] | None = None,
        semantic: SemanticFn | None = None,
        unique_id: int = 1,
        unmap_surfaces: bool = False,
        ok: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if clip_len < 1 or frame_stride < 1:
            raise ValueError(f"clip_len and frame_stride must be >= 1, got {clip_len} and {frame_stride}")
        if not cameras:
            raise ValueError("the probe needs at least one camera")
        self.pyds = pyds
        self.scorer = scorer
        self.cameras = list(cameras)
        self.first_offset = (clip_len - 1) * frame_stride
        self.frame_stride = frame_stride
        self.history = FrameHistory(self.first_offset + 1)
        self.normalise = normalise
        self.on_scores = on_scores
        self.osd_text = osd_text
        self.on_frame = on_frame
        self.semantic = semantic
        self.unique_id = unique_id
        self.unmap_surfaces = unmap_surfaces
        self._ok = ok if ok is not None else pad_probe_ok()
        self._clock = clock
        self._next_index: dict[str, int] = {}
        self.batches = 0
        self.dropped_batches = 0
        self.clips = 0
        self.missing_frames = 0

    # -- the pad probe ------------------------------------------------------------------------------------

    def __call__(self, _pad: Any, info: Any, *_user: Any) -> Any:
        try:
            buffer = info.get_buffer()
            if buffer is not None:
                self.process(buffer)
        # The one exception boundary of the score branch: policy is log and drop the batch. A probe that
        # raises would take the streaming thread (and so every camera) down with it.
        except Exception:
            self.dropped_batches += 1
            log.exception("score probe: batch dropped (%d so far)", self.dropped_batches)
        return self._ok

    # -- the work -----------------------------------------------------------------------------------------

    def camera(self, source_id: int) -> str:
        if not 0 <= source_id < len(self.cameras):
            raise MetaError(f"source id {source_id} has no camera (the graph has {len(self.cameras)})")
        return self.cameras[source_id]

    def process(self, gst_buffer: Any) -> list[StreamScores]:
        """Handle one batch; return the clips it scored (after ``on_scores`` saw them)."""
        batch_meta = batch_meta_of(self.pyds, gst_buffer)
        if batch_meta is None:
            return []
        self.batches += 1
        for frame in frame_refs(self.pyds, batch_meta):
            camera = self.camera(frame.source_id)
            last = self.history.last_frame_num(frame.source_id)
            if last is not None and frame.frame_num <= last:
                # The source restarted (file loop, reconnect): no clip may span the gap.
                log.info(
                    "camera %s: frame number went from %d to %d; history reset", camera, last, frame.frame_num
                )
                self.history.reset(frame.source_id)
                self.scorer.reset(camera)
            rgb = frame_rgb(self.pyds, gst_buffer, frame.batch_id, unmap=self.unmap_surfaces)
            self.history.push(frame.source_id, frame.frame_num, rgb)
            if self.on_frame is not None:
                self.on_frame(camera, self._time(frame.pts_s), rgb)
        clips, times = self._clips(
            frame_tensors(self.pyds, batch_meta, unique_id=self.unique_id, names=BACKBONE_OUTPUTS)
        )
        if not clips:
            return []
        scored = self.scorer.score(clips)
        # Like the CPU graph, the semantic head sees the whole batch (also clips whose DPC history fills).
        semantic: Sequence[SemanticMatch | None] = [None] * len(clips)
        if self.semantic is not None:
            semantic = self.semantic([c.camera for c in clips], np.stack([c.embedding for c in clips]))
        out = []
        for clip, s, t, extra in zip(clips, scored, times, semantic, strict=True):
            if s is None:
                continue
            prompt = None
            if extra is not None:
                s.scores[SEMANTIC], prompt = extra
            fused = self.on_scores(clip.camera, t, s, prompt)
            if self.osd_text is not None:
                self.osd_text(clip.camera, format_osd_text(clip.camera, fused, prompt))
            out.append(s)
        return out

    def _time(self, pts_s: float) -> float:
        return pts_s if math.isfinite(pts_s) else self._clock()

    def _clips(self, found: Sequence[FrameTensors]) -> tuple[list[ClipTokens], list[float]]:
        clips: list[ClipTokens] = []
        times: list[float] = []
        for ft in found:
            camera = self.camera(ft.source_id)
            wanted = [ft.frame_num - self.first_offset, ft.frame_num]
            if self.scorer.prev_frame:  # an extrapolating DPC head also needs the frame before the last
                wanted.append(ft.frame_num - self.frame_stride)
            frames = [self.history.get(ft.source_id, n) for n in wanted]
            missing = [n for n, f in zip(wanted, frames, strict=True) if f is None]
            if missing:
                # The history holds exactly one clip span, so this only happens right after a reset.
                self.missing_frames += 1
                log.warning(
                    "camera %s: clip ending at frame %d lacks frames %s in the history; skipped",
                    camera,
                    ft.frame_num,
                    missing,
                )
                continue
            first, last, *before_last = [f for f in frames if f is not None]
            prev = self.normalise(before_last[0]) if before_last else None
            index = self._next_index.get(camera, 0)
            self._next_index[camera] = index + 1
            clips.append(
                ClipTokens(
                    camera=camera,
                    index=index,
                    tokens=_squeeze_to(ft.tensors["tokens"], 4, "tokens"),
                    embedding=_squeeze_to(ft.tensors["embedding"], 1, "embedding"),
                    first_frame=self.normalise(first),
                    last_frame=self.normalise(last),
                    prev_last_frame=prev,
                )
            )
            times.append(self._time(ft.pts_s))
        self.clips += len(clips)
        return clips, times


class OsdScoreBoard:
    """Each camera's latest OSD line, drawn on its frames. :meth:`set_text` may be called from any thread;
    the instance is the pad probe of the display branch (before the tiler)."""

    def __init__(self, pyds: Any, cameras: Sequence[str], *, ok: Any = None) -> None:
        self.pyds = pyds
        self.cameras = list(cameras)
        self._texts = {c: format_osd_text(c, None) for c in self.cameras}
        self._lock = threading.Lock()
        self._ok = ok if ok is not None else pad_probe_ok()
        self.dropped_batches = 0

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

    def __call__(self, _pad: Any, info: Any, *_user: Any) -> Any:
        try:
            buffer = info.get_buffer()
            if buffer is not None:
                self.process(buffer)
        # Same policy as the score probe: a frame without its overlay is not worth stopping the video.
        except Exception:
            self.dropped_batches += 1
            log.exception("OSD probe: batch dropped (%d so far)", self.dropped_batches)
        return self._ok
