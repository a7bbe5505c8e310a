"""The score streams, named once for the engines, the scorers, fusion and training.

A clip yields one raw score per stream (higher = more anomalous):

* ``predictive`` — DPC feature-prediction error, spatial max;
* ``pixel`` — future-frame patch reconstruction error, spatial max;
* ``motion`` — cheap patch frame-difference energy, spatial max;
* ``semantic`` — CLIP alignment with anomalous versus normal prompts (only with a semantic head).
"""

from __future__ import annotations

__all__ = ["MAP_STREAMS", "SEMANTIC", "STREAMS"]

#: Every stream, in the order of the stream gate's rows. That order is saved with the names in
#: ``stream_gate.npz``, so a reader matches rows by name; changing it only changes freshly built gates.
STREAMS: tuple[str, ...] = ("predictive", "pixel", "motion", "semantic")

#: DPC-head output name (an ``(h, w)`` error map) -> the stream its spatial max scores.
MAP_STREAMS: dict[str, str] = {"feature_error": "predictive", "pixel_error": "pixel", "motion": "motion"}

#: The stream the semantic head scores.
SEMANTIC = "semantic"
