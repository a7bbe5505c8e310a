"""Pseudo-anomalies pasted into a camera's own normal footage, so that calibration can ask each stream
whether it would see anything at all.

Normal footage alone says how calm a stream is, not whether it reacts: an untrained or unimproved learned
stream can be perfectly calm and blind (docs/results.md: on UCSD Ped2 the DPC head at its prior was
weighted 0.99 from normal footage and scored 0.60). So ``zsad calibrate`` and ``zsad eval`` play a camera's
footage a second time with events pasted in on a fixed schedule, and :func:`plugins.fusion.fit_calibration`
weighs each stream by the share of those events it catches at the normal false-alarm level
(:func:`plugins.fusion.probe_recall`). The events are the camera's own pixels, so they carry its
resolution, grey levels and blur:

* ``mover`` — a patch around the footage's strongest moving content (where two consecutive frames differ
  most: usually a person), pasted on a straight track that bounces off the frame edges at
  ``speed`` patch heights per frame: something moving where and how nothing normally moves.
* ``still`` — the same kind of patch, upside down, pasted at one place and left there: something new that
  stays (an object left behind, a person lying down).

The kinds alternate, a mover first, after ``first`` frames (the DPC history fills first): a mover lasts
``length`` frames, a still ``still_length``, and ``gap`` frames pass between one event's end and the next
one's start. Pure numpy, no state shared between cameras: one :class:`PseudoAnomalyInjector` per footage,
fed its frames in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PSEUDO_KINDS",
    "PseudoAnomalyError",
    "PseudoAnomalyInjector",
    "PseudoAnomalySettings",
    "paste_pseudo_anomalies",
]

#: The kinds of pasted events, in the order they alternate.
PSEUDO_KINDS: tuple[str, ...] = ("mover", "still")


class PseudoAnomalyError(ValueError):
    """Bad injector settings or a frame the injector cannot paste into."""


@dataclass(frozen=True)
class PseudoAnomalySettings:
    """Where and how events are pasted.

    ``size``: the patch height as a fraction of the frame height (its width is ``aspect`` times its height:
    an upright person's shape); ``speed``: a mover's step in patch heights per frame (a walker in
    surveillance footage moves well under 0.1 of its height a frame); ``length`` (a mover's),
    ``still_length``, ``gap`` and ``first`` in frames. A still lasts three times as long as a mover: the
    stationary stream sees a still only once it fills six of the eight frames of its short-term window
    (about 2 s at its defaults, 0.4 s apart), so a still of a mover's 2.4 s left it a frame or two, and
    the probe weighed down the stream that caught the real abandoned objects (docs/results.md, "A pasted
    still that stays"). The movers keep the frames they had before (at 36, 180, 324, ...): short calibration
    footage still holds enough of them to judge the streams that see movers (with one event every 96
    frames, 23 s of footage held one mover, too few clips to judge, and only the stationary stream was
    kept).
    The default speed, 0.15 (1.5 patch heights a second at 10 fps, a run), not 0.3: at 0.3 a pasted figure
    jumped about three times its own width between the frames the objects stream reads 0.2 s apart, its
    optical flow read a fifth of the speed, and the probe left that stream out of the demo's parking camera
    although it sees the real runner there (docs/results.md, "A slower pasted mover").
    """

    size: float = 0.15
    aspect: float = 0.6
    speed: float = 0.15
    length: int = 24
    still_length: int = 72
    gap: int = 24
    first: int = 36

    def __post_init__(self) -> None:
        if not 0.0 < self.size <= 0.5:
            raise PseudoAnomalyError(f"size must be in (0, 0.5], got {self.size}")
        if not 0.0 < self.aspect <= 2.0:
            raise PseudoAnomalyError(f"aspect must be in (0, 2], got {self.aspect}")
        if not 0.0 < self.speed <= 2.0:
            raise PseudoAnomalyError(f"speed must be in (0, 2], got {self.speed}")
        if min(self.length, self.still_length) < 1 or min(self.gap, self.first) < 0:
            raise PseudoAnomalyError(
                f"need length, still_length >= 1 and gap, first >= 0, got length={self.length} "
                f"still_length={self.still_length} gap={self.gap} first={self.first}"
            )

    @property
    def cycle(self) -> int:
        """Frames from one mover's start to the next's: a mover, a gap, a still, a gap."""
        return self.length + self.still_length + 2 * self.gap


@dataclass
class _Event:
    kind: str
    patch: np.ndarray  # (ph, pw, 3) uint8
    y: float
    x: float
    dy: float
    dx: float


class PseudoAnomalyInjector:
    """Pastes events into one footage's frames, fed in order (see the module docstring).

    ``seed`` makes the events reproducible: the same footage and seed give the same pasted frames.
    """

    def __init__(self, settings: PseudoAnomalySettings | None = None, *, seed: int = 0):
        self.settings = settings or PseudoAnomalySettings()
        self._rng = np.random.default_rng(seed)
        self._frame_no = 0
        self._prev: np.ndarray | None = None
        self._event: _Event | None = None

    def _kind_at(self, frame_no: int) -> tuple[str | None, bool]:
        """The event kind covering ``frame_no`` (None: none) and whether the event starts there."""
        s = self.settings
        offset = frame_no - s.first
        if offset < 0:
            return None, False
        phase = offset % s.cycle
        if phase < s.length:
            return "mover", phase == 0
        still = phase - s.length - s.gap
        if 0 <= still < s.still_length:
            return "still", still == 0
        return None, False

    def apply(self, frame: np.ndarray) -> tuple[np.ndarray, str | None]:
        """One frame ``(H, W, 3)`` uint8 in; the frame to use and the kind of event pasted into it (None:
        the frame is returned as it is). A pasted frame is a new array: the caller's frame is not changed.
        """
        f = np.asarray(frame)
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise PseudoAnomalyError(f"frames must be (H, W, 3) uint8, got {f.shape} {f.dtype}")
        kind, starts = self._kind_at(self._frame_no)
        self._frame_no += 1
        prev, self._prev = self._prev, f
        if kind is None:
            self._event = None
            return f, None
        if starts or self._event is None:
            self._event = self._start(kind, f, prev)
        ev = self._event
        ph, pw = ev.patch.shape[:2]
        h, w = f.shape[:2]
        if ph >= h or pw >= w:
            return f, None
        out = f.copy()
        yi, xi = round(ev.y), round(ev.x)
        out[yi : yi + ph, xi : xi + pw] = ev.patch
        # The next position, bouncing off the edges so a fast mover stays in view for the whole event.
        ev.y, ev.dy = _bounce(ev.y + ev.dy, ev.dy, h - ph)
        ev.x, ev.dx = _bounce(ev.x + ev.dx, ev.dx, w - pw)
        return out, kind

    def _start(self, kind: str, frame: np.ndarray, prev: np.ndarray | None) -> _Event:
        s, rng = self.settings, self._rng
        h, w = frame.shape[:2]
        ph = max(4, round(s.size * h))
        pw = max(2, round(s.aspect * ph))
        patch = _moving_patch(frame, prev, ph, pw, rng)
        if kind == "still":
            patch = patch[::-1].copy()  # upside down: the scene's own texture, in no normal pose
        y = float(rng.uniform(0, max(h - ph, 1)))
        x = float(rng.uniform(0, max(w - pw, 1)))
        step = s.speed * ph if kind == "mover" else 0.0
        angle = float(rng.uniform(0.0, 2.0 * np.pi))
        return _Event(kind, patch, y, x, step * float(np.sin(angle)), step * float(np.cos(angle)))


def _bounce(pos: float, step: float, hi: int) -> tuple[float, float]:
    if pos < 0:
        return -pos if -pos <= hi else 0.0, -step
    if pos > hi:
        back = 2 * hi - pos
        return back if back >= 0 else float(hi), -step
    return pos, step


def _moving_patch(
    frame: np.ndarray, prev: np.ndarray | None, ph: int, pw: int, rng: np.random.Generator
) -> np.ndarray:
    """The ``(ph, pw, 3)`` box of ``frame`` at the centre of the window where it differs most from ``prev``
    (summed absolute difference); a random box when there is no previous frame or nothing moved.

    The window is the box widened by half its width and a quarter of its height on each side: a moving
    object changes the pixels at its leading and trailing edges, so the box that differs most would sit
    on one edge, half of it on what the object has just left; the widened window spans both edges and its
    centre is the object."""
    h, w = frame.shape[:2]
    py, px = ph // 4, pw // 2
    wh, ww = ph + 2 * py, pw + 2 * px
    if prev is not None and prev.shape == frame.shape and wh <= h and ww <= w:
        diff = np.abs(frame.astype(np.int16) - prev.astype(np.int16)).sum(axis=2, dtype=np.int32)
        c = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # integral image
        window = c[wh:, ww:] - c[:-wh, ww:] - c[wh:, :-ww] + c[:-wh, :-ww]
        wy, wx = np.unravel_index(int(np.argmax(window)), window.shape)
        if window[wy, wx] > 0:
            y, x = int(wy) + py, int(wx) + px
            return frame[y : y + ph, x : x + pw].copy()
    y = int(rng.integers(0, max(h - ph, 0) + 1))
    x = int(rng.integers(0, max(w - pw, 0) + 1))
    return frame[y : y + ph, x : x + pw].copy()


def paste_pseudo_anomalies(
    frames: np.ndarray, settings: PseudoAnomalySettings | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A whole video at once: ``(N, H, W, 3)`` uint8 -> the pasted copy and ``(N,)`` object array of each
    frame's event kind (None where nothing was pasted). The same events :class:`PseudoAnomalyInjector`
    pastes frame by frame."""
    v = np.asarray(frames)
    if v.ndim != 4:
        raise PseudoAnomalyError(f"frames must be (N, H, W, 3) uint8, got {v.shape}")
    injector = PseudoAnomalyInjector(settings, seed=seed)
    out = np.empty_like(v)
    kinds = np.empty(len(v), dtype=object)
    for i, f in enumerate(v):
        out[i], kinds[i] = injector.apply(f)
    return out, kinds
