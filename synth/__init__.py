"""Synthetic fixed-camera surveillance scenes with labelled anomalies (``zsad synth``).

Public API:

- :data:`CONTEXTS`, :data:`ANOMALY_KINDS`: the camera views and anomaly kinds.
- :func:`render_clip`: one clip in memory, ``(frames (N, H, W, 3) uint8 RGB, masks (N, H, W) bool)``.
- :func:`render_scene`: the same plus labels and the measured event spans.
- :func:`generate_dataset`: a whole dataset on disk in the UCSD Ped2 layout; returns the manifest.
- :class:`WavingFlag`, :class:`PassingTraffic`: recurring, normal-but-unusual props (``props=`` of
  :class:`ClipRenderer` and :func:`render_scene`), for masks and feedback.
"""

from synth.actors import PlannedEvent
from synth.dataset import (
    LABELS_FILE,
    clip_seed,
    generate_dataset,
    plan_dataset_events,
    plan_events,
)
from synth.props import PassingTraffic, Prop, WavingFlag
from synth.render import ClipRenderer, Event, SceneRender, render_clip, render_scene
from synth.scene import (
    ANOMALY_KINDS,
    CONTEXTS,
    DEFAULT_CONTEXTS,
    ContextSpec,
    SynthError,
    SynthInputError,
)
from synth.writer import VideoEncodeError, open_video

__all__ = [
    "ANOMALY_KINDS",
    "CONTEXTS",
    "DEFAULT_CONTEXTS",
    "LABELS_FILE",
    "ClipRenderer",
    "ContextSpec",
    "Event",
    "PassingTraffic",
    "PlannedEvent",
    "Prop",
    "SceneRender",
    "SynthError",
    "SynthInputError",
    "VideoEncodeError",
    "WavingFlag",
    "clip_seed",
    "generate_dataset",
    "open_video",
    "plan_dataset_events",
    "plan_events",
    "render_clip",
    "render_scene",
]
