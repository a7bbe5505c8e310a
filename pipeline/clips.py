"""Per-camera clip assembly: sampled frames in, fixed-length clips out.

A camera delivers *sampled* frames (after the graph's ``videorate``), numbered 0, 1, 2, ... per camera.
With clip length ``T``, ``frame_stride`` ``s`` and ``clip_hop`` ``h`` (both counted in sampled frames), clip
``k`` holds frames ``[k*h, k*h + s, ..., k*h + (T-1)*s]`` and is emitted when its last frame arrives.

Memory is bounded: a camera's ring keeps only the ``(T-1)*s + 1`` most recent frames, the span of one clip.
Frames no clip will hold (with ``s`` > 1, those between a clip's frames) need not be read at all:
:meth:`ClipRing.wants_next` says whether the next one will be, and ``push(pts, None)`` counts one that was
not read, so the numbering, and with it every clip, is the same as when every frame is pushed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.config import PreprocessConfig
from plugins.preprocess import Normaliser

__all__ = [
    "Clip",
    "ClipAssembler",
    "ClipRing",
    "FrameShapeError",
    "to_model_input",
]


class FrameShapeError(ValueError):
    """A frame that is not ``(H, W, 3) uint8`` or whose size differs from the camera's earlier frames."""


@dataclass(frozen=True, eq=False)
class Clip:
    """``T`` frames of one camera, ready for the model.

    ``frames``: ``(T, H, W, 3) uint8`` RGB, C-contiguous, owned by the clip.
    ``pts``: ``(T,) float64`` presentation time of each frame in seconds (monotonic per camera).
    ``index``: 0, 1, 2, ... per camera in emission order (a ``reset`` does not restart it).
    ``start_frame``: sampled-frame number of ``frames[0]`` since the camera's ring was created.
    ``created_s``: ``time.monotonic()`` when the clip was assembled (for end-to-end latency).
    """

    camera_id: str
    index: int
    frames: np.ndarray
    pts: np.ndarray
    start_frame: int
    created_s: float = field(default=0.0, compare=False)

    @property
    def start_pts(self) -> float:
        return float(self.pts[0])

    @property
    def end_pts(self) -> float:
        return float(self.pts[-1])

    @property
    def clip_len(self) -> int:
        return int(self.frames.shape[0])


class ClipRing:
    """The ring buffer of one camera. Not thread-safe: feed it from one thread or use :class:`ClipAssembler`.

    Args:
        camera_id: the camera the clips belong to.
        clip_len: frames per clip (``T`` >= 1).
        frame_stride: sampled frames between consecutive clip frames (>= 1).
        clip_hop: sampled frames between consecutive clip starts (>= 1).
    """

    def __init__(self, camera_id: str, clip_len: int, frame_stride: int, clip_hop: int) -> None:
        for name, value in (("clip_len", clip_len), ("frame_stride", frame_stride), ("clip_hop", clip_hop)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.camera_id = camera_id
        self.clip_len = clip_len
        self.frame_stride = frame_stride
        self.clip_hop = clip_hop
        self.span = (clip_len - 1) * frame_stride + 1
        self._frames: deque[np.ndarray | None] = deque(maxlen=self.span)  # None: a frame not read
        self._pts: deque[float] = deque(maxlen=self.span)
        self._shape: tuple[int, ...] | None = None
        self._frame_no = -1  # sampled-frame number of the newest frame
        self._segment_start = 0  # frame number where the current run of contiguous frames began
        self._next_index = 0

    @property
    def frames_seen(self) -> int:
        return self._frame_no + 1

    @property
    def buffered(self) -> int:
        """Frames held right now (never more than ``span``)."""
        return len(self._frames)

    @property
    def next_index(self) -> int:
        return self._next_index

    def reset(self) -> None:
        """Forget buffered frames (after a discontinuity such as a reconnect) so no clip spans the gap.

        Clip indices keep increasing; the hop grid restarts at the next frame.
        """
        self._frames.clear()
        self._pts.clear()
        self._segment_start = self._frame_no + 1

    def _held(self, frame_no: int) -> bool:
        """Whether a clip of the current segment will hold frame ``frame_no`` (one not before it)."""
        rel = frame_no - self._segment_start
        return any(
            rel >= o and (rel - o) % self.clip_hop == 0 for o in range(0, self.span, self.frame_stride)
        )

    def wants_next(self) -> bool:
        """Whether a clip will hold the next sampled frame, so it must be pushed with its pixels; the others
        may be pushed as None (not read)."""
        return self._held(self._frame_no + 1)

    def push(self, pts_s: float, frame: np.ndarray | None) -> Clip | None:
        """Add one sampled frame ``(H, W, 3) uint8`` RGB, or None for one that was not read (see
        :meth:`wants_next`); return the clip it completes, if any. A frame a clip needed that comes as None
        (the ring was reset after it was asked about) starts a new segment after it, as a reset does."""
        if frame is None:
            self._frame_no += 1
            self._frames.append(None)
            self._pts.append(float(pts_s))
            if self._held(self._frame_no):
                self._segment_start = self._frame_no + 1
            return None
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise FrameShapeError(
                f"camera {self.camera_id}: frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}"
            )
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise FrameShapeError(
                f"camera {self.camera_id}: frame shape {frame.shape} differs from earlier {self._shape}"
            )
        self._frame_no += 1
        self._frames.append(frame)
        self._pts.append(float(pts_s))
        start = self._frame_no - (self.span - 1)
        if start < self._segment_start or (start - self._segment_start) % self.clip_hop:
            return None
        positions = range(0, self.span, self.frame_stride)
        picked = [self._frames[i] for i in positions]
        if any(f is None for f in picked):  # cannot be: a wanted frame pushed as None restarts the segment
            raise FrameShapeError(f"camera {self.camera_id}: clip {self._next_index} lacks a frame's pixels")
        frames = np.stack([f for f in picked if f is not None])
        pts = np.array([self._pts[i] for i in positions], dtype=np.float64)
        clip = Clip(
            camera_id=self.camera_id,
            index=self._next_index,
            frames=frames,
            pts=pts,
            start_frame=start,
            created_s=time.monotonic(),
        )
        self._next_index += 1
        return clip


class ClipAssembler:
    """Clip rings for many cameras, created on first use. ``push`` is thread-safe (one lock per camera)."""

    def __init__(self, clip_len: int, frame_stride: int, clip_hop: int) -> None:
        # Validate once, eagerly, rather than on the first frame of the first camera.
        ClipRing("_check", clip_len, frame_stride, clip_hop)
        self.clip_len = clip_len
        self.frame_stride = frame_stride
        self.clip_hop = clip_hop
        self._rings: dict[str, ClipRing] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> ClipAssembler:
        return cls(cfg.clip_len, cfg.frame_stride, cfg.clip_hop)

    def _ring(self, camera_id: str) -> tuple[ClipRing, threading.Lock]:
        with self._lock:
            ring = self._rings.get(camera_id)
            if ring is None:
                ring = ClipRing(camera_id, self.clip_len, self.frame_stride, self.clip_hop)
                self._rings[camera_id] = ring
                self._locks[camera_id] = threading.Lock()
            return ring, self._locks[camera_id]

    def push(self, camera_id: str, pts_s: float, frame: np.ndarray | None) -> Clip | None:
        """Add a sampled frame ``(H, W, 3) uint8`` RGB of ``camera_id`` (None: one not read, see
        :meth:`wants_next`); return a completed clip or None."""
        ring, lock = self._ring(camera_id)
        with lock:
            return ring.push(pts_s, frame)

    def wants_next(self, camera_id: str) -> bool:
        """Whether a clip will hold ``camera_id``'s next sampled frame (:meth:`ClipRing.wants_next`). A
        camera without a ring yet (its first frame, or one removed) is not given one by asking."""
        with self._lock:
            ring = self._rings.get(camera_id)
            lock = self._locks.get(camera_id)
        if ring is None or lock is None:
            return True  # a ring's first frame starts its first clip
        with lock:
            return ring.wants_next()

    def reset(self, camera_id: str) -> int | None:
        """Drop the buffered frames of one camera (e.g. when it starts reconnecting). Returns the index its
        next clip will have, read with the reset under the ring's lock, so every clip emitted before the
        reset has a smaller one (a clip completing on another thread is either before or after); None for
        a camera without a ring."""
        with self._lock:
            ring = self._rings.get(camera_id)
            lock = self._locks.get(camera_id)
        if ring is None or lock is None:
            return None
        with lock:
            ring.reset()
            return ring.next_index

    def remove(self, camera_id: str) -> None:
        """Forget a camera entirely (its next frame starts a new ring with index 0)."""
        with self._lock:
            self._rings.pop(camera_id, None)
            self._locks.pop(camera_id, None)

    def buffered(self) -> dict[str, int]:
        """Frames held per camera (each at most ``(T-1)*stride + 1``)."""
        with self._lock:
            return {cid: ring.buffered for cid, ring in self._rings.items()}


def to_model_input(
    clips: Sequence[Clip], mean: Sequence[float], std: Sequence[float], out: np.ndarray | None = None
) -> np.ndarray:
    """Stack clips into the model's input tensor with the one normalisation, :mod:`plugins.preprocess`.

    Args:
        clips: N clips of equal shape, each ``frames`` ``(T, H, W, 3) uint8`` RGB.
        mean, std: per-channel RGB mean and std on the 0..1 scale (from the engine manifest).
        out: optional preallocated ``(N, T, 3, H, W) float32`` array to fill.

    Returns:
        ``(N, T, 3, H, W) float32``, C-contiguous: ``(frame / 255 - mean) / std`` per RGB channel, the
        bits :class:`plugins.preprocess.Normaliser` gives everywhere else.
    """
    if not clips:
        raise ValueError("to_model_input needs at least one clip")
    normaliser = Normaliser(mean, std)
    shape = clips[0].frames.shape
    for clip in clips:
        if clip.frames.shape != shape or clip.frames.dtype != np.uint8:
            raise FrameShapeError(
                f"clip {clip.camera_id}#{clip.index} is {clip.frames.shape} {clip.frames.dtype}, "
                f"expected {shape} uint8"
            )
    n = len(clips)
    t, h, w, _ = shape
    if out is None:
        out = np.empty((n, t, 3, h, w), dtype=np.float32)
    elif out.shape != (n, t, 3, h, w) or out.dtype != np.float32:
        raise ValueError(f"out must be {(n, t, 3, h, w)} float32, got {out.shape} {out.dtype}")
    for i, clip in enumerate(clips):
        normaliser(clip.frames, out=out[i])
    return out
