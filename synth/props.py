"""Recurring scene props that are normal but unusual: a flag that waves now and then, traffic on a road.

A prop is part of the camera's normal life and is never labelled anomalous (its pixels never go into a
mask). Props exist to exercise what an operator does about such things: mask the road beyond the fence,
or mark the flag's first alert "false alarm" so the camera learns it. They are drawn on the backdrop before
the people, so people walk in front of them.

Deterministic and free of randomness: a prop's pixels at frame ``t`` depend only on its parameters and
``t``. Adding a prop to a clip therefore leaves every other pixel of the clip unchanged, and every spell of
a flag looks the same (the spell's frames are counted from its own start).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from synth.scene import SynthInputError

__all__ = ["PassingTraffic", "Prop", "WavingFlag", "check_box"]

RGB = tuple[int, int, int]


class Prop(Protocol):
    """Anything drawn onto a frame at frame ``t``: ``canvas`` is ``(H, W, 3)`` float32 RGB, 0..255."""

    def draw(self, canvas: np.ndarray, t: int) -> None: ...


def check_box(box: tuple[float, float, float, float], what: str) -> None:
    """A normalised ``(x0, y0, x1, y1)`` box inside the frame with ``x0 < x1`` and ``y0 < y1``."""
    x0, y0, x1, y1 = box
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise SynthInputError(
            f"{what} {box} must be (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1"
        )


def _pixels(value: float, size: int) -> int:
    return min(max(round(value * size), 0), size)


@dataclass(frozen=True)
class WavingFlag:
    """A striped flag on a pole. It hangs still, except for ``duration`` frames every ``period`` frames
    from frame ``first`` on, when it flaps: a travelling wave moves its stripes and shades its cloth.

    ``box``: the cloth, normalised ``(x0, y0, x1, y1)``; the pole runs down from its left edge.
    ``speed``: radians the wave advances per frame (larger: faster flapping). ``count``: how many spells
    (None: no end).
    """

    box: tuple[float, float, float, float]
    period: int
    duration: int
    first: int = 0
    count: int | None = None
    colours: tuple[RGB, RGB] = ((205, 30, 40), (245, 245, 238))
    stripes: int = 4
    speed: float = 2.2

    def __post_init__(self) -> None:
        check_box(self.box, "flag box")
        if self.period < 1 or not 1 <= self.duration <= self.period or self.first < 0 or self.stripes < 1:
            raise SynthInputError(
                f"flag needs period >= 1, 1 <= duration <= period, first >= 0 and stripes >= 1, got {self}"
            )
        if self.count is not None and self.count < 0:
            raise SynthInputError(f"flag spell count must be >= 0, got {self.count}")

    def waving(self, t: int) -> bool:
        """Whether the flag flaps at frame ``t``."""
        if t < self.first or (self.count is not None and (t - self.first) // self.period >= self.count):
            return False
        return (t - self.first) % self.period < self.duration

    def spells(self, n_frames: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` frames (inclusive) of each waving spell within ``n_frames`` frames."""
        starts = range(self.first, n_frames, self.period)
        if self.count is not None:
            starts = starts[: self.count]
        return [(start, min(start + self.duration, n_frames) - 1) for start in starts]

    def draw(self, canvas: np.ndarray, t: int) -> None:
        h, w = canvas.shape[:2]
        x0, y0 = _pixels(self.box[0], w), _pixels(self.box[1], h)
        x1, y1 = max(_pixels(self.box[2], w), x0 + 1), max(_pixels(self.box[3], h), y0 + 1)
        pole_x1 = max(x0 - 1, 0)
        pole_x0 = max(pole_x1 - max(1, (x1 - x0) // 12), 0)
        pole_y1 = min(y1 + (y1 - y0) * 2, h)
        canvas[y0:pole_y1, pole_x0 : max(pole_x1, pole_x0 + 1)] = (70, 70, 74)
        k = (t - self.first) % self.period if self.waving(t) else -1
        cols = np.arange(x1 - x0, dtype=np.float32)[None, :] / max(x1 - x0, 1)  # 0 at the pole
        rows = np.arange(y1 - y0, dtype=np.float32)[:, None] / max(y1 - y0, 1)
        if k < 0:
            shift = np.zeros_like(cols)
            shade = np.ones_like(cols)
        else:
            # A wave that grows towards the free end: the cloth near the pole barely moves.
            phase = 2.0 * math.pi * 1.5 * cols - self.speed * k
            shift = 0.5 / self.stripes * cols * np.sin(phase) * 2.0
            shade = 0.55 + 0.45 * (0.5 + 0.5 * np.cos(phase))
        stripe = np.floor((rows + shift) * self.stripes).astype(np.int64) % 2  # (rows, cols)
        a = np.asarray(self.colours[0], dtype=np.float32)
        b = np.asarray(self.colours[1], dtype=np.float32)
        cloth = np.where(stripe[..., None] == 0, a, b) * shade[..., None]
        canvas[y0:y1, x0:x1] = cloth


@dataclass(frozen=True)
class PassingTraffic:
    """Vans driving along a road band across the whole frame: one enters every ``period`` frames from frame
    ``first`` on and takes ``crossing`` frames to cross. ``lane``: the band's normalised ``(top, bottom)``;
    ``length``: a van's length as a fraction of the frame width; ``direction`` +1 left to right, -1 back;
    ``count``: how many vans (None: no end)."""

    lane: tuple[float, float]
    period: int
    crossing: int
    first: int = 0
    count: int | None = None
    length: float = 0.2
    direction: int = 1
    colours: tuple[RGB, ...] = ((226, 226, 220), (52, 82, 150), (170, 40, 36), (222, 188, 56))

    def __post_init__(self) -> None:
        top, bottom = self.lane
        if not 0.0 <= top < bottom <= 1.0:
            raise SynthInputError(
                f"traffic lane {self.lane} must be (top, bottom) with 0 <= top < bottom <= 1"
            )
        if self.period < 1 or self.crossing < 1 or self.first < 0 or not 0 < self.length <= 1:
            raise SynthInputError(
                f"traffic needs period >= 1, crossing >= 1, first >= 0 and 0 < length <= 1, got {self}"
            )
        if self.direction not in (1, -1):
            raise SynthInputError(f"traffic direction must be 1 or -1, got {self.direction}")
        if self.count is not None and self.count < 0:
            raise SynthInputError(f"traffic count must be >= 0, got {self.count}")

    def passes(self, n_frames: int) -> list[tuple[int, int]]:
        """The ``(enter, leave)`` frames (inclusive) of each van within ``n_frames`` frames."""
        starts = range(self.first, n_frames, self.period)
        if self.count is not None:
            starts = starts[: self.count]
        return [(start, min(start + self.crossing, n_frames) - 1) for start in starts]

    def draw(self, canvas: np.ndarray, t: int) -> None:
        h, w = canvas.shape[:2]
        top, bottom = _pixels(self.lane[0], h), max(_pixels(self.lane[1], h), _pixels(self.lane[0], h) + 2)
        canvas[bottom - 1 : bottom, :] *= 0.8  # the kerb line, always there
        if t < self.first:
            return
        n_last = (t - self.first) // self.period
        for n in range(max(0, n_last - self.crossing // self.period - 1), n_last + 1):
            if self.count is not None and n >= self.count:
                break
            k = t - (self.first + n * self.period)
            if not 0 <= k < self.crossing:
                continue
            travel = (1.0 + self.length) * k / self.crossing - self.length  # left edge, fraction of width
            left = travel if self.direction == 1 else 1.0 - self.length - travel
            x0, x1 = _pixels(left, w), _pixels(left + self.length, w)
            if x1 <= x0:
                continue
            colour = self.colours[n % len(self.colours)]
            body_top = top + (bottom - top) // 5
            canvas[body_top : bottom - 1, x0:x1] = colour
            glass_bottom = body_top + max(1, (bottom - body_top) // 3)
            gx0, gx1 = x0 + max(1, (x1 - x0) // 8), x1 - max(1, (x1 - x0) // 8)
            if gx1 > gx0:
                canvas[body_top + 1 : glass_bottom, gx0:gx1] = (40, 52, 66)
