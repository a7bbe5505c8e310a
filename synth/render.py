"""Rendering synthetic clips with numpy: backdrop, actors (painter's order), lighting, sensor noise.

Frames are ``(H, W, 3)`` uint8 RGB; masks are ``(H, W)`` bool, True where an anomalous actor is (its
whole silhouette, also where something nearer hides it, as annotators mark it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from synth.actors import (
    Actor,
    PlannedEvent,
    Pose,
    simulate_events,
    simulate_pedestrians,
)
from synth.background import build_stage
from synth.props import Prop
from synth.scene import SynthInputError, context_spec

MIN_SIZE = (48, 64)  # (H, W)
MAX_SIZE = (4096, 4096)
NOISE_LAYERS = 6
NOISE_PAD = 24

Colour = tuple[int, int, int] | tuple[float, float, float]


@dataclass(frozen=True)
class Event:
    """A labelled anomaly: frames ``start``..``end`` inclusive, 0-based; ``runs``: the inclusive frame runs
    within them where this event's actor is abnormal and in view (one run ``(start, end)`` when it is all of
    them). A span can hold normal stretches (an off-path walker back on the path before wandering off
    again), and another event's frames: the runs are this event's own, which the frame labels, a union over
    every event, cannot say."""

    kind: str
    start: int
    end: int
    runs: tuple[tuple[int, int], ...] = ()


def check_frame_size(width: int, height: int) -> None:
    """Raise :class:`SynthInputError` for a frame size the renderer cannot draw."""
    if not (MIN_SIZE[0] <= height <= MAX_SIZE[0] and MIN_SIZE[1] <= width <= MAX_SIZE[1]):
        raise SynthInputError(
            f"frame size {width}x{height} outside {MIN_SIZE[1]}x{MIN_SIZE[0]}..{MAX_SIZE[1]}x{MAX_SIZE[0]}"
        )


def frame_runs(frames: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The inclusive runs of consecutive frame numbers in ``frames`` ``(K,)`` int, sorted ascending."""
    f = np.asarray(frames, dtype=np.int64).ravel()
    if f.size == 0:
        return ()
    breaks = np.flatnonzero(np.diff(f) > 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [f.size - 1]])
    return tuple((int(f[a]), int(f[b])) for a, b in zip(starts, ends, strict=True))


def _ellipse(
    canvas: np.ndarray,
    mask: np.ndarray | None,
    cx: float,
    cy: float,
    a: float,
    b: float,
    angle: float,
    colour: Colour,
) -> bool:
    """Paint an anti-aliased ellipse (semi-axes ``a`` along ``angle``, ``b`` across); mark it in
    ``mask``. Returns True when any mask pixel was set."""
    h, w = canvas.shape[:2]
    c, s = math.cos(angle), math.sin(angle)
    ex = math.hypot(a * c, b * s) + 1.0
    ey = math.hypot(a * s, b * c) + 1.0
    x0, x1 = max(math.floor(cx - ex), 0), min(math.ceil(cx + ex) + 1, w)
    y0, y1 = max(math.floor(cy - ey), 0), min(math.ceil(cy + ey) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return False
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dx, dy = xx - cx, yy - cy
    u = (dx * c + dy * s) / a
    v = (dy * c - dx * s) / b
    r = np.sqrt(u * u + v * v)
    cover = np.clip(0.5 + (1.0 - r) * min(a, b), 0.0, 1.0).astype(np.float32)[..., None]
    region = canvas[y0:y1, x0:x1]
    region += (np.asarray(colour, dtype=np.float32) - region) * cover
    if mask is None:
        return False
    # The pixel under the centre always counts, so tiny far-away parts never vanish from the mask.
    inside = (r <= 1.0) | ((yy == round(cy)) & (xx == round(cx)))
    mask[y0:y1, x0:x1] |= inside
    return bool(inside.any())


def _rect(
    canvas: np.ndarray,
    mask: np.ndarray | None,
    left: float,
    top: float,
    right: float,
    bottom: float,
    colour: Colour,
) -> bool:
    """Paint an anti-aliased axis-aligned rectangle; mark it in ``mask``."""
    h, w = canvas.shape[:2]
    x0, x1 = max(math.floor(left), 0), min(math.ceil(right) + 1, w)
    y0, y1 = max(math.floor(top), 0), min(math.ceil(bottom) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return False
    yy, xx = np.ogrid[y0:y1, x0:x1]
    depth = np.minimum(np.minimum(xx - left, right - xx), np.minimum(yy - top, bottom - yy))
    cover = np.clip(0.5 + depth, 0.0, 1.0).astype(np.float32)[..., None]
    region = canvas[y0:y1, x0:x1]
    region += (np.asarray(colour, dtype=np.float32) - region) * cover
    if mask is None:
        return False
    inside = (depth >= 0.0) | ((yy == round((top + bottom) / 2)) & (xx == round((left + right) / 2)))
    mask[y0:y1, x0:x1] |= inside
    return bool(inside.any())


def _shadow(canvas: np.ndarray, cx: float, cy: float, a: float, b: float, strength: float) -> None:
    h, w = canvas.shape[:2]
    x0, x1 = max(math.floor(cx - a - 1), 0), min(math.ceil(cx + a) + 2, w)
    y0, y1 = max(math.floor(cy - b - 1), 0), min(math.ceil(cy + b) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    r = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)
    canvas[y0:y1, x0:x1] *= (1.0 - strength * np.clip(1.2 - r, 0.0, 1.0)).astype(np.float32)[..., None]


def _person(canvas: np.ndarray, mask: np.ndarray | None, p: Pose, actor: Actor, lift: float = 0.0) -> bool:
    """An upright figure (legs, torso, head) rotated by ``p.tilt`` about its feet."""
    look = actor.look
    s = p.scale
    c, sn = math.cos(p.tilt), math.sin(p.tilt)
    fx, fy = p.x, p.y - lift

    def at(lx: float, ly: float) -> tuple[float, float]:
        return fx + s * (lx * c - ly * sn), fy + s * (lx * sn + ly * c)

    hx, hy = math.cos(p.heading), math.sin(p.heading)
    swing = 1.7 * p.stride * math.sin(p.phase)
    hit = False
    for side in (-1.0, 1.0):
        lx = side * (0.9 - swing * hx)
        ly = -3.7 + side * 0.7 * swing * abs(hy)
        hit |= _ellipse(canvas, mask, *at(lx, ly), 1.15 * s, 3.8 * s, p.tilt, look.trousers)
    hit |= _ellipse(canvas, mask, *at(0.0, -10.4), 3.2 * s, 4.5 * s, p.tilt, look.shirt)
    hit |= _ellipse(canvas, mask, *at(0.0, -16.7), 2.3 * s, 2.4 * s, p.tilt, look.skin)
    hit |= _ellipse(canvas, mask, *at(0.0, -17.9), 2.2 * s, 1.3 * s, p.tilt, look.hair)
    if p.carrying:
        bx, by = at(look.bag_side * 3.9, -7.6)
        hit |= _rect(canvas, mask, bx - 1.3 * s, by - 1.6 * s, bx + 1.3 * s, by + 1.6 * s, look.bag)
    return hit


def _cyclist(canvas: np.ndarray, mask: np.ndarray | None, p: Pose, actor: Actor) -> bool:
    s = p.scale
    hx, hy = math.cos(p.heading), math.sin(p.heading)
    wheel_a = 3.2 * s * max(abs(hx), 0.25)
    hit = False
    for side in (-1.0, 1.0):
        wx, wy = p.x + side * 5.5 * s * hx, p.y - 3.2 * s + side * 1.5 * s * hy
        hit |= _ellipse(canvas, mask, wx, wy, wheel_a, 3.2 * s, 0.0, (28, 28, 30))
    hit |= _ellipse(
        canvas, mask, p.x, p.y - 4.6 * s, 5.5 * s * abs(hx) + 0.8 * s, 0.8 * s, 0.0, actor.look.vehicle
    )
    hit |= _person(canvas, mask, p, actor, lift=4.0 * s)
    return hit


def _vehicle(canvas: np.ndarray, mask: np.ndarray | None, p: Pose, actor: Actor) -> bool:
    """A small van/cart: a box with windows and wheels, side-on or end-on by its heading."""
    s = p.scale
    colour = actor.look.vehicle
    side_on = abs(math.cos(p.heading)) >= 0.55
    length, height = (28.0 * s, 12.0 * s) if side_on else (18.0 * s, 14.0 * s)
    left, right = p.x - length / 2, p.x + length / 2
    top, bottom = p.y - height, p.y - 1.5 * s
    hit = _rect(canvas, mask, left, top, right, bottom, colour)
    glass = (40, 52, 66)
    if side_on:
        hit |= _rect(canvas, mask, left + 3 * s, top + 2 * s, right - 3 * s, top + 6 * s, glass)
        for wx in (left + 6 * s, right - 6 * s):
            hit |= _rect(canvas, mask, wx - 2.6 * s, p.y - 3.5 * s, wx + 2.6 * s, p.y, (24, 24, 26))
    else:
        hit |= _rect(canvas, mask, left + 2.5 * s, top + 2 * s, right - 2.5 * s, top + 8 * s, glass)
        for lx in (left + 3 * s, right - 3 * s):
            hit |= _rect(
                canvas, mask, lx - 1.5 * s, bottom - 4 * s, lx + 1.5 * s, bottom - 2 * s, (240, 236, 200)
            )
        hit |= _rect(canvas, mask, left + 1 * s, p.y - 2 * s, right - 1 * s, p.y, (24, 24, 26))
    return hit


def _bag(canvas: np.ndarray, mask: np.ndarray | None, p: Pose, actor: Actor) -> bool:
    s = p.scale
    hit = _rect(canvas, mask, p.x - 3.4 * s, p.y - 5.2 * s, p.x + 3.4 * s, p.y, actor.look.bag)
    hit |= _rect(canvas, mask, p.x - 1.2 * s, p.y - 6.4 * s, p.x + 1.2 * s, p.y - 5.0 * s, (20, 20, 22))
    return hit


def _draw(canvas: np.ndarray, mask: np.ndarray | None, p: Pose, actor: Actor) -> bool:
    if actor.kind == "person":
        return _person(canvas, mask, p, actor)
    if actor.kind == "cyclist":
        return _cyclist(canvas, mask, p, actor)
    if actor.kind == "vehicle":
        return _vehicle(canvas, mask, p, actor)
    return _bag(canvas, mask, p, actor)


def _draw_shadow(canvas: np.ndarray, p: Pose, actor: Actor) -> None:
    s = p.scale
    if actor.kind == "vehicle":
        _shadow(canvas, p.x + 1.5 * s, p.y, 16.0 * s, 3.5 * s, 0.5)
    elif actor.kind == "bag" or abs(p.tilt) < 0.8:
        _shadow(canvas, p.x + 1.0 * s, p.y, 4.5 * s, 1.4 * s, 0.35)


class ClipRenderer:
    """Renders one clip frame by frame (constant memory); iterate for ``(frame, mask)`` pairs.

    frame: ``(H, W, 3)`` uint8 RGB; mask: ``(H, W)`` bool. After a full iteration, ``labels``
    (``(N,)`` uint8, 1 = abnormal frame, exactly the frames whose mask is non-empty) and ``events``
    (spans measured from the drawn masks, in the order planned) are set. ``props``
    (:mod:`synth.props`): normal but unusual things drawn on the backdrop, never labelled.
    """

    def __init__(
        self,
        context: str,
        n_frames: int,
        width: int,
        height: int,
        seed: int,
        events: Sequence[PlannedEvent] = (),
        props: Sequence[Prop] = (),
    ) -> None:
        context_spec(context)
        if n_frames < 1:
            raise SynthInputError(f"n_frames must be >= 1, got {n_frames}")
        check_frame_size(width, height)
        if seed < 0:
            raise SynthInputError(f"seed must be >= 0, got {seed}")
        self.context = context
        self.n_frames = n_frames
        self.width = width
        self.height = height
        self.planned = list(events)
        self.props = list(props)
        self.stage = build_stage(context, width, height)
        motion_seq, light_seq = np.random.SeedSequence(seed).spawn(2)
        motion = np.random.default_rng(motion_seq)
        self._light = np.random.default_rng(light_seq)
        self.actors: list[Actor] = simulate_pedestrians(self.stage, motion, n_frames)
        self.actors += simulate_events(self.stage, motion, n_frames, self.planned)
        self.labels = np.zeros(n_frames, dtype=np.uint8)
        self._event_hits = np.zeros((len(self.planned), n_frames), dtype=bool)
        self.events: list[Event] = []

    def _gains(self) -> np.ndarray:
        """Per-frame RGB gain: ``(N, 3)`` float32 (colour cast x brightness x drift x flicker)."""
        light = self.stage.layout.spec.lighting
        rng = self._light
        t = np.arange(self.n_frames, dtype=np.float64)
        brightness = 1.0 + float(rng.uniform(-1.0, 1.0)) * light.brightness_jitter
        period = float(rng.uniform(*light.drift_period))
        drift = 1.0 + light.drift_amplitude * np.sin(
            2 * np.pi * t / period + float(rng.uniform(0, 2 * np.pi))
        )
        flicker = 1.0 + light.flicker * rng.standard_normal(self.n_frames)
        gain = np.asarray(light.gain_rgb)[None, :] * (brightness * drift * flicker)[:, None]
        return gain.astype(np.float32)

    def _noise_bank(self) -> np.ndarray:
        """Sensor noise windows: ``(K, H + P, W + P, 3)`` float32, std sigma, mean +0.5.

        Each frame adds a randomly placed window of a random layer: temporally independent-looking
        grain at a fraction of the cost of fresh normal draws per frame.
        """
        sigma = self.stage.layout.spec.lighting.noise_sigma
        shape = (NOISE_LAYERS, self.height + NOISE_PAD, self.width + NOISE_PAD, 3)
        bank = self._light.standard_normal(shape, dtype=np.float32)
        bank *= np.float32(sigma)
        bank += np.float32(0.5)
        return bank

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        h, w = self.height, self.width
        base = self.stage.backdrop.image
        gains = self._gains()
        noise = self._noise_bank()
        canvas = np.empty((h, w, 3), dtype=np.float32)
        for t in range(self.n_frames):
            np.copyto(canvas, base)
            for prop in self.props:
                prop.draw(canvas, t)
            present = [(a.poses[t], a) for a in self.actors if a.poses[t] is not None]
            for pose, actor in present:
                if pose is not None:
                    _draw_shadow(canvas, pose, actor)
            mask = np.zeros((h, w), dtype=bool)
            # Painter's order: whoever stands lower in the image is nearer and drawn later.
            for pose, actor in sorted(present, key=lambda pa: pa[0].y if pa[0] is not None else 0.0):
                if pose is None:
                    continue
                abnormal = actor.event is not None and bool(actor.abnormal[t])
                if _draw(canvas, mask if abnormal else None, pose, actor) and actor.event is not None:
                    self._event_hits[actor.event, t] = True
            canvas *= gains[t]
            k, oy, ox = (
                int(v) for v in self._light.integers(0, (NOISE_LAYERS, NOISE_PAD + 1, NOISE_PAD + 1))
            )
            canvas += noise[k, oy : oy + h, ox : ox + w]
            np.clip(canvas, 0.0, 255.0, out=canvas)
            # The bank carries +0.5, so truncation rounds to nearest.
            frame = canvas.astype(np.uint8)
            self.labels[t] = 1 if mask.any() else 0
            yield frame, mask
        self.events = []
        for index, planned in enumerate(self.planned):
            frames = np.flatnonzero(self._event_hits[index])
            if frames.size == 0:
                raise SynthInputError(
                    f"event {planned.kind} starting at frame {planned.start} never became visible in "
                    f"{self.n_frames} frames; start it earlier"
                )
            self.events.append(Event(planned.kind, int(frames[0]), int(frames[-1]), frame_runs(frames)))


@dataclass
class SceneRender:
    """A rendered clip: frames ``(N, H, W, 3)`` uint8 RGB, masks ``(N, H, W)`` bool, labels ``(N,)``
    uint8, and the labelled events."""

    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    events: list[Event]


def render_scene(
    context: str,
    n_frames: int,
    width: int,
    height: int,
    seed: int,
    events: Sequence[PlannedEvent] = (),
    props: Sequence[Prop] = (),
) -> SceneRender:
    """Render a whole clip in memory (see :class:`ClipRenderer` for a streaming version)."""
    renderer = ClipRenderer(context, n_frames, width, height, seed, events, props)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    masks = np.empty((n_frames, height, width), dtype=bool)
    for t, (frame, mask) in enumerate(renderer):
        frames[t] = frame
        masks[t] = mask
    return SceneRender(frames=frames, masks=masks, labels=renderer.labels.copy(), events=renderer.events)


def render_clip(
    context: str,
    n_frames: int,
    width: int,
    height: int,
    seed: int,
    events: Sequence[PlannedEvent] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Render one clip of ``context``: ``(frames (N, H, W, 3) uint8 RGB, masks (N, H, W) bool)``.

    Deterministic in all arguments. ``events`` lists the anomalies to inject; no events gives a
    normal-only clip.
    """
    scene = render_scene(context, n_frames, width, height, seed, events)
    return scene.frames, scene.masks
