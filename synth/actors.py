"""What moves in a synthetic scene: pedestrians (normal) and the injected anomalous actors.

Everything is simulated up front as per-frame poses, so rendering is a pure function of the poses.
Sizes and speeds are written in reference pixels (320 x 240) and scaled by the layout's unit and the
perspective factor of the row the actor stands on. Time is in frames; frame 0 is the first frame of the
clip. Normal pedestrians are simulated from well before frame 0 so the scene is already busy at frame 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from synth.background import Stage
from synth.geometry import Polyline, disk_clear, sample_mask
from synth.scene import ANOMALY_KINDS, SynthError, SynthInputError, perspective

RGB = tuple[int, int, int]

#: Frames of pedestrian traffic simulated before frame 0.
WARMUP_FRAMES = 400

WALK_SPEED = (1.0, 1.8)  # reference px / frame
RUN_FACTOR = (3.2, 3.8)  # times the runner's own walking speed
CYCLE_SPEED = (5.0, 6.5)
VEHICLE_SPEED = (2.0, 2.8)
WALK_STEP = 7.0  # reference px per step: sets the gait frequency
RUN_STEP = 11.0
FALL_FRAMES = 9

_SHIRTS: tuple[RGB, ...] = (
    (180, 40, 40),
    (40, 60, 150),
    (225, 225, 220),
    (30, 30, 34),
    (60, 130, 70),
    (200, 160, 40),
    (120, 70, 140),
    (90, 110, 130),
    (210, 120, 60),
)
_TROUSERS: tuple[RGB, ...] = ((40, 44, 60), (30, 30, 30), (90, 80, 66), (60, 64, 70), (120, 110, 90))
_SKIN: tuple[RGB, ...] = ((230, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50))
_HAIR: tuple[RGB, ...] = ((30, 24, 20), (70, 50, 30), (150, 120, 70), (20, 20, 20))
_BAGS: tuple[RGB, ...] = ((36, 36, 40), (110, 36, 30), (30, 56, 100), (130, 100, 60))
_VEHICLES: tuple[RGB, ...] = ((226, 226, 220), (222, 188, 56), (52, 82, 150), (170, 40, 36))


@dataclass(frozen=True)
class Look:
    """Colours and build of one actor."""

    shirt: RGB
    trousers: RGB
    skin: RGB
    hair: RGB
    bag: RGB
    bag_side: float  # -1 left hand, +1 right hand
    body: float  # size factor around 1
    vehicle: RGB


@dataclass(frozen=True)
class Pose:
    """Where and how an actor is drawn in one frame.

    ``(x, y)`` is the ground contact point in px; ``scale`` is px per reference px at that spot;
    ``heading`` is the direction of travel (radians, 0 = +x, image axes); ``tilt`` rotates the body
    about the feet (0 upright, ±pi/2 lying; positive turns the head towards +x); ``phase`` and
    ``stride`` (0..1) drive the leg swing.
    """

    x: float
    y: float
    scale: float
    heading: float
    tilt: float = 0.0
    phase: float = 0.0
    stride: float = 0.0
    carrying: bool = False


@dataclass
class Actor:
    """One thing in the scene. ``poses[t]`` is None when it is absent at frame t.

    ``abnormal[t]``: ``(N,)`` bool, frames where this actor is part of event ``event`` (its pixels go
    into the ground-truth mask).
    """

    kind: str  # "person", "cyclist", "vehicle" or "bag"
    look: Look
    poses: list[Pose | None]
    abnormal: np.ndarray
    event: int | None = None


@dataclass(frozen=True)
class PlannedEvent:
    """An anomaly to inject: ``kind`` (one of ``ANOMALY_KINDS``) beginning at 0-based frame ``start``.

    The labelled span is measured from what is drawn: it begins when the actor is first visible (or
    first off the walkway, for ``off_path``) at or after ``start``.
    """

    kind: str
    start: int


@dataclass
class _Track:
    """A trajectory under construction, in frames relative to its own first frame."""

    stage: Stage
    look: Look
    x: float
    y: float
    heading: float
    step: float = WALK_STEP
    phase: float = 0.0
    carrying: bool = False
    lean: float = 0.0
    poses: list[Pose] = field(default_factory=list)
    limit: int = 1 << 30

    @property
    def full(self) -> bool:
        return len(self.poses) >= self.limit

    def px_speed(self, speed: float, y: float) -> float:
        return speed * self.stage.layout.unit * perspective(y, self.stage.layout.height)

    def emit(self, moved: float, tilt: float | None = None) -> None:
        layout = self.stage.layout
        ref = layout.unit * perspective(self.y, layout.height)
        self.phase += math.pi * moved / (self.step * ref)
        stride = min(1.0, moved / ref / 0.9)
        self.poses.append(
            Pose(
                x=self.x,
                y=self.y,
                scale=ref * self.look.body,
                heading=self.heading,
                tilt=self.lean * math.cos(self.heading) if tilt is None else tilt,
                phase=self.phase,
                stride=stride,
                carrying=self.carrying,
            )
        )

    def follow(self, route: Polyline, s_from: float, s_to: float, speed: float) -> None:
        """Walk ``route`` from arc length ``s_from`` towards ``s_to``; stops one step short of it."""
        s = s_from
        self.x, self.y, self.heading = route.at(s)
        moved = self.px_speed(speed, self.y)
        while s < s_to and not self.full:
            self.x, self.y, self.heading = route.at(s)
            self.emit(moved)
            moved = min(self.px_speed(speed, self.y), s_to - s)
            s += moved
        self.x, self.y, _ = route.at(s_to)

    def go_to(self, x: float, y: float, speed: float) -> None:
        """Walk straight to ``(x, y)``; stops one step short of it."""
        while not self.full:
            dx, dy = x - self.x, y - self.y
            dist = math.hypot(dx, dy)
            step = self.px_speed(speed, self.y)
            if dist <= step:
                break
            self.heading = math.atan2(dy, dx)
            self.emit(step)
            self.x += dx / dist * step
            self.y += dy / dist * step
        self.x, self.y = x, y

    def wait(self, frames: int, tilt: float | None = None) -> None:
        for _ in range(frames):
            if self.full:
                return
            self.emit(0.0, tilt)


def random_look(rng: np.random.Generator) -> Look:
    def pick(options: tuple[RGB, ...]) -> RGB:
        return options[int(rng.integers(len(options)))]

    return Look(
        shirt=pick(_SHIRTS),
        trousers=pick(_TROUSERS),
        skin=pick(_SKIN),
        hair=pick(_HAIR),
        bag=pick(_BAGS),
        bag_side=1.0 if rng.random() < 0.5 else -1.0,
        body=float(rng.uniform(1.1, 1.35)),
        vehicle=pick(_VEHICLES),
    )


def _lane_offset(stage: Stage, rng: np.random.Generator) -> float:
    """A pedestrian's lateral offset from the walkway centre line, px (stays on the paving)."""
    return float(rng.uniform(-0.55, 0.55)) * stage.layout.halfwidth_px(0.0)


def _place(
    kind: str, look: Look, poses: list[Pose], t0: int, n: int, abnormal_from: int | None, event: int | None
) -> Actor | None:
    """Put relative ``poses`` at absolute frame ``t0``; frames from ``abnormal_from`` are abnormal."""
    out: list[Pose | None] = [None] * n
    abnormal = np.zeros(n, dtype=bool)
    seen = False
    for i, pose in enumerate(poses):
        t = t0 + i
        if 0 <= t < n:
            out[t] = pose
            seen = True
            if abnormal_from is not None and i >= abnormal_from:
                abnormal[t] = True
    if not seen:
        return None
    return Actor(kind=kind, look=look, poses=out, abnormal=abnormal, event=event)


def simulate_pedestrians(stage: Stage, rng: np.random.Generator, n: int) -> list[Actor]:
    """Normal traffic: people enter along the walkways, walk at 1-2 reference px/frame, and leave."""
    spec = stage.layout.spec
    routes = stage.layout.routes
    actors: list[Actor] = []
    lifetimes: list[tuple[int, int]] = []
    last_spawn: dict[int, int] = {}
    for t in range(-WARMUP_FRAMES, n):
        if rng.random() >= spec.spawn_rate:
            continue
        if sum(1 for a, b in lifetimes if a <= t <= b) >= spec.max_people:
            continue
        r = int(rng.integers(len(routes)))
        # Keep people who enter by the same route apart, as real walkers are.
        if t - last_spawn.get(r, -(1 << 30)) < 40:
            continue
        last_spawn[r] = t
        look = random_look(rng)
        track = _Track(stage, look, 0.0, 0.0, 0.0, limit=n - t)
        track.carrying = rng.random() < 0.25
        route = routes[r].offset(_lane_offset(stage, rng))
        track.follow(route, 0.0, route.length, float(rng.uniform(*WALK_SPEED)))
        lifetimes.append((t, t + len(track.poses) - 1))
        actor = _place("person", look, track.poses, t, n, None, None)
        if actor is not None:
            actors.append(actor)
    return actors


def _visible_stops(stage: Stage, route: Polyline, margin: float) -> list[float]:
    """Arc lengths of ``route`` whose point is well inside the frame (``margin`` of the width)."""
    w, h = stage.layout.width, stage.layout.height
    out = []
    for s in np.linspace(0.0, route.length, 120):
        x, y, _ = route.at(float(s))
        if margin * w <= x <= (1 - margin) * w and 0.3 * h <= y <= 0.93 * h:
            out.append(float(s))
    return out


def _pick_stop(stage: Stage, rng: np.random.Generator, margin: float) -> tuple[Polyline, float]:
    routes = stage.layout.routes
    for _ in range(50):
        route = routes[int(rng.integers(len(routes)))].offset(_lane_offset(stage, rng))
        stops = _visible_stops(stage, route, margin)
        if stops:
            return route, stops[int(rng.integers(len(stops)))]
    raise SynthError(f"context {stage.layout.spec.name!r}: no walkway point inside the frame")


def _walker_to(stage: Stage, rng: np.random.Generator, look: Look, route: Polyline, s_stop: float) -> _Track:
    """A pedestrian who arrives at ``route.at(s_stop)``; its last pose is one step before it."""
    track = _Track(stage, look, 0.0, 0.0, 0.0)
    track.follow(route, 0.0, s_stop, float(rng.uniform(*WALK_SPEED)))
    return track


def _monotone_exit(stage: Stage, ax: float, ay: float, bx: float, by: float) -> bool:
    """True when walking a->b leaves the walkable area once and never crosses an obstacle."""
    layout, obstacles = stage.layout, stage.backdrop.obstacles
    steps = max(int(math.hypot(bx - ax, by - ay)), 2)
    left = False
    for i in range(steps + 1):
        x, y = ax + (bx - ax) * i / steps, ay + (by - ay) * i / steps
        if sample_mask(obstacles, x, y):
            return False
        on = sample_mask(layout.walkable, x, y)
        if left and on:
            return False
        left = left or not on
    return left


def _off_path_target(
    stage: Stage, rng: np.random.Generator
) -> tuple[Polyline, float, float, float, float] | None:
    """A walkway stop and a spot off the walkable area to wander to: ``(route, s, tx, ty, radius)``."""
    layout = stage.layout
    w, h, u = layout.width, layout.height, layout.unit
    blocked = layout.walkable | stage.backdrop.obstacles
    for _ in range(400):
        route, s = _pick_stop(stage, rng, 0.12)
        x, y, heading = route.at(s)
        side = 1.0 if rng.random() < 0.5 else -1.0
        angle = heading + side * math.pi / 2 + float(rng.uniform(-0.5, 0.5))
        dist = float(rng.uniform(layout.halfwidth_px(y) + 12 * u, 0.4 * h))
        tx, ty = x + dist * math.cos(angle), y + dist * math.sin(angle)
        if not (0.06 * w <= tx <= 0.94 * w and 0.1 * h <= ty <= 0.95 * h):
            continue
        radius = 5.0 * u * perspective(ty, h)
        if not disk_clear(blocked, tx, ty, radius + 4.0 * u):
            continue
        if _monotone_exit(stage, x, y, tx, ty):
            return route, s, tx, ty, radius
    return None


def _event_actors(
    stage: Stage, rng: np.random.Generator, n: int, index: int, event: PlannedEvent
) -> list[Actor]:
    """The actor(s) that make up one injected anomaly."""
    layout = stage.layout
    look = random_look(rng)
    start = event.start
    kind = event.kind
    if kind in ("cyclist", "vehicle", "running"):
        route = layout.routes[int(rng.integers(len(layout.routes)))]
        route = route.offset(0.0 if kind == "vehicle" else _lane_offset(stage, rng))
        track = _Track(stage, look, 0.0, 0.0, 0.0, limit=n - start)
        if kind == "cyclist":
            speed, actor_kind = float(rng.uniform(*CYCLE_SPEED)), "cyclist"
            track.step = RUN_STEP
        elif kind == "vehicle":
            speed, actor_kind = float(rng.uniform(*VEHICLE_SPEED)), "vehicle"
        else:
            speed = float(rng.uniform(*WALK_SPEED)) * float(rng.uniform(*RUN_FACTOR))
            actor_kind = "person"
            track.step, track.lean = RUN_STEP, 0.2
        track.follow(route, 0.0, route.length, speed)
        actor = _place(actor_kind, look, track.poses, start, n, 0, index)
        return [] if actor is None else [actor]

    if kind == "falling":
        route, s = _pick_stop(stage, rng, 0.15)
        track = _walker_to(stage, rng, look, route, s)
        mark = len(track.poses)
        track.limit = mark + (n - start)
        cos_h = math.cos(track.heading)
        side = math.copysign(1.0, cos_h) if abs(cos_h) > 0.3 else (1.0 if rng.random() < 0.5 else -1.0)
        for i in range(1, FALL_FRAMES + 1):
            if track.full:
                break
            # Accelerating topple about the feet, with a short slide forwards.
            track.emit(0.0, side * math.pi / 2 * (i / FALL_FRAMES) ** 2)
            slide = 0.5 * track.stage.layout.unit * (1.0 - i / FALL_FRAMES)
            track.x += slide * math.cos(track.heading)
            track.y += slide * math.sin(track.heading)
        track.wait(track.limit, side * math.pi / 2)
        actor = _place("person", look, track.poses, start - mark, n, mark, index)
        return [] if actor is None else [actor]

    if kind == "abandoned_object":
        route, s = _pick_stop(stage, rng, 0.12)
        track = _walker_to(stage, rng, look, route, s)
        track.carrying = True
        track.poses = [_with_bag(p) for p in track.poses]
        mark = len(track.poses)
        x, y = track.x, track.y
        scale = layout.unit * perspective(y, layout.height)
        bag_x = x + look.bag_side * 4.0 * scale
        track.carrying = False
        track.wait(int(rng.integers(3, 8)))
        track.follow(route, s, route.length, float(rng.uniform(*WALK_SPEED)))
        carrier = _place("person", look, track.poses, start - mark, n, None, None)
        bag_pose = Pose(x=bag_x, y=y + 0.5 * scale, scale=scale, heading=0.0)
        bag = _place("bag", look, [bag_pose] * (n - start), start, n, 0, index)
        return [a for a in (carrier, bag) if a is not None]

    if kind == "off_path":
        found = _off_path_target(stage, rng)
        if found is None:
            raise SynthError(f"context {layout.spec.name!r}: found no spot off the walkway to wander to")
        route, s, tx, ty, radius = found
        track = _walker_to(stage, rng, look, route, s)
        speed = float(rng.uniform(*WALK_SPEED))
        mark = len(track.poses)
        px, py = track.x, track.y
        # A purposeful stride off the paving, so the event starts soon after `start`.
        track.go_to(tx, ty, max(speed, 1.5))
        loiter_until = len(track.poses) + int(rng.integers(40, 90))
        while len(track.poses) < loiter_until:
            angle = float(rng.uniform(0.0, 2 * math.pi))
            r = radius * math.sqrt(float(rng.random()))
            track.go_to(tx + r * math.cos(angle), ty + r * math.sin(angle), 0.5 * speed)
            track.wait(int(rng.integers(4, 16)))
        track.go_to(px, py, speed)
        track.follow(route, s, route.length, speed)
        actor = _place("person", look, track.poses, start - mark, n, None, index)
        if actor is None:
            return []
        # Abnormal exactly while the feet are off the walkable area, after the turn at `start`. Feet outside
        # the image are on the walkway's continuation beyond the frame (people come and go across the
        # border), not off it: a walker leaving the view is normal.
        rows, cols = layout.walkable.shape
        for t in range(max(start, 0), n):
            pose = actor.poses[t]
            if pose is None or not (0 <= round(pose.x) < cols and 0 <= round(pose.y) < rows):
                continue
            if not sample_mask(layout.walkable, pose.x, pose.y):
                actor.abnormal[t] = True
        return [actor]

    raise SynthInputError(f"unknown anomaly kind {kind!r}; known: {', '.join(ANOMALY_KINDS)}")


def _with_bag(pose: Pose) -> Pose:
    return Pose(pose.x, pose.y, pose.scale, pose.heading, pose.tilt, pose.phase, pose.stride, True)


def simulate_events(
    stage: Stage, rng: np.random.Generator, n: int, events: list[PlannedEvent]
) -> list[Actor]:
    """The anomalous actors of ``events``; actor.event is the index into ``events``."""
    actors: list[Actor] = []
    for index, event in enumerate(events):
        if event.kind not in ANOMALY_KINDS:
            raise SynthInputError(f"unknown anomaly kind {event.kind!r}; known: {', '.join(ANOMALY_KINDS)}")
        if not 0 <= event.start < n:
            raise SynthInputError(f"event {event.kind} starts at frame {event.start}, outside 0..{n - 1}")
        actors.extend(_event_actors(stage, rng, n, index, event))
    return actors
