"""The score streams, named once for the engines, the scorers, fusion and training.

A clip yields one raw score per stream (higher = more anomalous):

* ``predictive`` — DPC feature-prediction error, spatial max;
* ``pixel`` — future-frame patch reconstruction error, spatial max;
* ``motion`` — cheap patch frame-difference energy, spatial max;
* ``semantic`` — CLIP alignment with anomalous versus normal prompts (only with a semantic head);
* ``appearance`` — distance of the frame's pretrained image features from the camera's own normal memory,
  spatial max (only with an appearance engine and a memory fitted by ``zsad calibrate``);
* ``stationary`` — how far the camera's short-term background (a median of the last few seconds) departs from
  its long-term background where nothing normally stays, z-scored per cell, spatial max (only with a model
  fitted by ``zsad calibrate``; ``plugins.stationary``);
* ``objects`` — how far the camera's foreground blobs (their speed, travel, shape and time standing still)
  fall in the tails of the same measured on its normal footage, per blob, spatial max (only with a model
  fitted by ``zsad calibrate``; ``plugins.objects``).
"""

from __future__ import annotations

__all__ = ["APPEARANCE", "MAP_STREAMS", "MEMORY_STREAMS", "OBJECTS", "SEMANTIC", "STATIONARY", "STREAMS"]

#: The streams of the trained model, in the order of the stream gate's rows. That order is saved with the
#: names in ``stream_gate.npz``, so a reader matches rows by name; changing it only changes freshly built
#: gates.
STREAMS: tuple[str, ...] = ("predictive", "pixel", "motion", "semantic")

#: DPC-head output name (an ``(h, w)`` error map) -> the stream its spatial max scores.
MAP_STREAMS: dict[str, str] = {"feature_error": "predictive", "pixel_error": "pixel", "motion": "motion"}

#: The stream the semantic head scores.
SEMANTIC = "semantic"

#: The stream scored against a per-camera normal memory of a frozen image encoder's features.
APPEARANCE = "appearance"

#: The stream scored against a per-camera long-term background and its normal statistics (no engine).
STATIONARY = "stationary"

#: The stream scored from the camera's foreground blobs against their normal tails (no engine).
OBJECTS = "objects"

#: Streams scored against per-camera memories fitted without a gradient step (``zsad calibrate``), not
#: outputs of the trained model: the trained gate has no row for them (fusion gives them a neutral factor).
MEMORY_STREAMS: tuple[str, ...] = (APPEARANCE, STATIONARY, OBJECTS)
