"""Score fusion: per-camera calibration with reliability weights, the runtime stream gate, the fusion rules
and temporal smoothing.

Pure numpy, shared by the CPU graph and the DeepStream probe; it never imports ``pipeline``.

Each clip yields raw scores per *stream* (:mod:`plugins.streams`). A stream may be absent (no CLIP
weights: no ``semantic``); absent or non-finite streams are left out. Raw scores have unrelated scales,
so each is turned into a robust z-score with statistics fitted per camera on normal footage
(:class:`Calibration`). The same footage, split into time folds, says how far each stream can be trusted on
this camera: a stream whose z-scores on *held-out* normal footage have a heavier tail than a Gaussian's, or
whose level drifts between folds, gets a reliability weight below 1 (:func:`assess_stream`). The gate
(:class:`StreamGate`, the numpy twin of the trained ``engines.semantic.StreamGateHead``, read from
``stream_gate.npz``) weighs the streams it knows from a context vector. A stream's *multiplier* is its
reliability weight times its gate factor (``S * g_s`` over the ``S`` present streams the gate knows, so a
uniform gate is 1; 1 for a stream the gate has no row for, such as the memory streams).

:func:`fuse` combines the z-scores by a *rule* (:data:`FUSION_RULES`):

* ``max`` (the default of new calibrations): ``max_s m_s z_s``. A strong stream can never be averaged away
  by weak ones; a down-weighted stream needs a larger excursion to lead. A calibration fitted for it also
  carries an *agreement* term (:class:`Agreement`): the streams' weighted mean, put on the max's scale by
  matching the two's median and 99th percentile on the camera's normal footage, and the fused score is the
  larger of the two. Several streams that rise together (a cyclist raises the pixel, motion and objects
  streams at once, while their normal noise is independent) then count for more than the strongest alone,
  and the max still keeps a lone strong stream.
* ``mean``: ``sum_s m_s z_s / sum_s m_s``, the gate-weighted mean of the z-scores (version 1 calibrations
  keep it, so their thresholds keep their meaning).

:class:`TemporalSmoother` then takes a moving median over clips. The calibration's default threshold is a
quantile of the fused normal score computed with the same rule and reliability weights. See docs/alerts.md.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from core.datafile import read_json, write_atomic
from plugins.objects import EMPTY as OBJECTS_EMPTY
from plugins.streams import MEMORY_STREAMS, OBJECTS, SEMANTIC, STATIONARY, STREAMS

__all__ = [
    "AGREEMENT_QUANTILE",
    "ASSESSMENT_FOLDS",
    "CALIBRATION_VERSION",
    "CAMERA_THRESHOLD_QUANTILE",
    "DEFAULT_RULE",
    "FUSION_RULES",
    "HELDOUT_FOLDS",
    "HELDOUT_QUANTILE",
    "LEAVE_OUT_SENSITIVITY",
    "LEGACY_RULE",
    "MIN_AGREEMENT_CLIPS",
    "MIN_FOLD_CLIPS",
    "MIN_WEIGHT",
    "SEMANTIC_SOURCES",
    "TRUSTED_WEIGHT",
    "Agreement",
    "Calibration",
    "CalibrationError",
    "CameraFusion",
    "FusedScore",
    "FusionError",
    "GateError",
    "StreamGate",
    "StreamStats",
    "TemporalSmoother",
    "TrustRow",
    "assess_stream",
    "assessment_folds",
    "calibrate",
    "check_model",
    "check_rule",
    "check_semantic_source",
    "describe_trust",
    "fit_agreement",
    "fit_calibration",
    "fit_stream",
    "format_trust",
    "fuse",
    "fuse_arrays",
    "gate_multiplier",
    "load_calibration",
    "probe_recall",
    "probe_sensitivity",
    "save_calibration",
    "time_folds",
    "trailing_median",
]

log = logging.getLogger(__name__)

#: 1.4826 * MAD estimates the standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
#: Absolute floor of a stream's scale: a constant stream on normal footage must not give infinite z-scores.
SCALE_EPS = 1e-6
#: Relative floor of a stream's scale, as a fraction of |median|.
SCALE_REL_FLOOR = 1e-3
#: Streams whose raw score is already in units of their own normal noise, and the scale a calibration may
#: not go below. The stationary stream's cells are z-scores with a floor of ``stationary.floor`` grey levels,
#: and a steady difference is 0 wherever nothing stays, so on quiet footage most clips score the same and
#: their MAD is a few hundredths of that unit: as scale, it turned the first small steady difference into
#: a z of 20 to 30 and every synthetic camera's held-out tail into one that left the stream out
#: (docs/results.md, "The steady difference").
STREAM_MIN_SCALE: dict[str, float] = {STATIONARY: 1.0}
#: Streams with a value that means "nothing seen" (the objects stream where no blob is). On a quiet camera
#: most normal clips take it: their median is that value with no spread, so the first normal passer-by
#: scored a z of a thousand and, even weighed down, set the threshold every other stream had to reach. When
#: at least half the clips are empty, location and scale are fitted on the others (:func:`fit_stream`).
STREAM_EMPTY: dict[str, float] = {OBJECTS: OBJECTS_EMPTY}
#: Fewer non-empty clips than this: the stream's own unit instead (location 0, scale 1: the objects
#: stream's excess is already in units of its normal blobs' 99th percentile).
MIN_OCCUPIED_CLIPS = 8
#: Such a stream is *busy* on a camera when the median of its normal clips exceeds this many of its units:
#: its memory does not explain the camera's normal footage (on UCSD Ped2 the flowing crowd leaves steady
#: foreground in most clips, median 1.7 units; on the synthetic cameras 0.05 to 0.2), so its level follows
#: how crowded the scene is, which a few minutes of calibration cannot bound. It is left out there. Found on
#: Ped2, whose test crowds are denser than its training crowds (docs/results.md, "The steady difference").
BUSY_LEVEL = 1.0
#: Version 2 adds the fusion rule and each stream's reliability weight; version 3 the max rule's agreement
#: term (an older build would drop it and keep a threshold computed with it, so it must refuse the file).
#: Versions 1 and 2 still load.
CALIBRATION_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)

#: The fusion rules, see the module docstring.
FUSION_RULES: tuple[str, ...] = ("mean", "max")
#: Where a semantic stream's scores come from: the trained semantic head on the backbone's embedding, or
#: the CLIP appearance engine's image embedding (``appearance.semantic``).
SEMANTIC_SOURCES: tuple[str, ...] = ("head", "appearance")
#: The rule a new calibration selects.
DEFAULT_RULE = "max"
#: The rule of version 1 calibrations and of uncalibrated cameras: today's gate-weighted mean.
LEGACY_RULE = "mean"

#: The quantile of the held-out z-scores compared with the standard normal's (the false-alarm tail).
HELDOUT_QUANTILE = 0.99
#: The quantile of a camera's smoothed fused normal score that ``zsad calibrate`` writes as its threshold
#: (``alerts.on_threshold: calibrated``); ``zsad eval`` replays its alerts at the same.
CAMERA_THRESHOLD_QUANTILE = 0.995
#: The upper quantile at which the agreement term is matched to the max (:func:`fit_agreement`): the
#: false-alarm tail, the one the held-out weights are judged at (thresholds sit at 0.99-0.995).
AGREEMENT_QUANTILE = HELDOUT_QUANTILE
#: Fewer normal clips with every weighted stream finite cannot place the agreement term
#: (:func:`fit_agreement`).
MIN_AGREEMENT_CLIPS = 20
#: A fold with fewer finite clips of a stream cannot be held out for it.
MIN_FOLD_CLIPS = 10
#: How many contiguous folds a camera's normal footage is split into for the memory streams' held-out scores
#: (``zsad calibrate``'s time folds, ``zsad eval``'s groups of training videos): each fold is scored by the
#: models of the other folds. Four, not two: a model of half the footage lacks every rare normal scene of
#: the other half, so its held-out scores overstated how noisy the model of all the footage, the one a run
#: uses, is on new footage (the weights then left out streams that caught abandoned objects;
#: docs/results.md, "Four held-out folds for the memory streams").
HELDOUT_FOLDS = 4
#: The reliability weights are judged on two halves (:func:`assessment_folds`): a level that moved between
#: the halves of the footage shows in full, as it did before the memory streams had four folds.
ASSESSMENT_FOLDS = 2
#: The lowest reliability weight: a stream is weighed down, never silenced (its evidence stays visible).
MIN_WEIGHT = 0.05
#: A weight at or above this is "trusted"; below it "weighed down" (:func:`describe_trust`).
TRUSTED_WEIGHT = 0.8
#: 1.2533 * sigma / sqrt(n) is the standard error of a Gaussian sample's median.
_MEDIAN_SE = 1.2533
#: 1.167 / sqrt(n) is the relative standard error of 1.4826 * MAD as an estimate of a Gaussian's sigma.
_MAD_REL_SE = 1.167
#: The reason of a stream whose calibration had no folds to hold out.
NO_FOLDS_REASON = "no held-out folds"
#: A stream's recall of pasted pseudo-anomalies needs at least this many pasted clips of a kind.
MIN_PROBE_CLIPS = 10
#: A stream whose sensitivity factor is below this (of every kind of pasted event, it catches less than half
#: of what the best stream at that kind catches) is weighed by it and may be left out of the fused score
#: (:func:`fit_calibration`); at or above it the factor is recorded, not applied. Not higher: on the demo's
#: campus camera the DPC stream, at 0.74, was still needed for a real cyclist.
LEAVE_OUT_SENSITIVITY = 0.5
#: When no stream catches more than this share of any kind of pasted event, the probe says nothing about
#: this camera (its events drowned in the footage): the weights are left to the held-out folds alone.
MIN_PROBE_RECALL = 0.2
#: The reason of every stream of a version 1 calibration.
V1_REASON = "version 1 calibration: no reliability weights (recalibrate to get them)"

# Warnings that would otherwise repeat on every clip are logged once per key.
_warned: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], msg: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


class FusionError(ValueError):
    """Bad input to the fusion stage."""


class CalibrationError(FusionError):
    """A calibration that cannot be fitted, read or used."""


class GateError(FusionError):
    """A gate file or context vector that does not fit."""


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`FUSION_RULES`, else a :class:`FusionError` naming them."""
    if rule not in FUSION_RULES:
        raise FusionError(f"unknown fusion rule {rule!r}: use one of {', '.join(FUSION_RULES)}")
    return rule


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStats:
    """One stream on a camera's normal footage: ``z = (x - location) / scale`` from robust statistics, and
    how far the stream can be trusted there.

    ``weight`` in ``[MIN_WEIGHT, 1]`` multiplies the stream's z-score in the fused score (0: left out of it,
    because the camera's pseudo-anomalies are caught as well without it, :func:`fit_calibration`);
    ``heldout_q`` is the calibration's ``heldout_quantile`` quantile of the stream's z-scores on held-out
    folds and ``drift`` the largest ``|median|`` of one fold's held-out z-scores (both None when no fold
    could be held out);
    ``reason`` says why the weight is what it is, in words (:func:`assess_stream`). ``sensitivity`` is the
    factor the pasted pseudo-anomalies gave (:func:`probe_sensitivity`; None: not probed) and
    ``probe_recall`` the share of each kind of pasted event the stream caught.
    """

    location: float
    scale: float
    n: int
    weight: float = 1.0
    heldout_q: float | None = None
    drift: float | None = None
    reason: str = NO_FOLDS_REASON
    sensitivity: float | None = None
    probe_recall: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.location) and math.isfinite(self.scale)) or self.scale <= 0:
            raise CalibrationError(
                f"stream statistics need a finite location and a finite scale > 0, "
                f"got location={self.location} scale={self.scale}"
            )
        if self.n < 0:
            raise CalibrationError(f"sample count must be >= 0, got {self.n}")
        if not (math.isfinite(self.weight) and 0.0 <= self.weight <= 1.0):
            raise CalibrationError(f"reliability weight must be in [0, 1], got {self.weight}")
        for name, v in (("heldout_q", self.heldout_q), ("drift", self.drift)):
            if v is not None and not math.isfinite(v):
                raise CalibrationError(f"{name} must be finite or null, got {v}")
        if self.sensitivity is not None and not (
            math.isfinite(self.sensitivity) and 0.0 < self.sensitivity <= 1.0
        ):
            raise CalibrationError(f"sensitivity must be in (0, 1] or null, got {self.sensitivity}")
        for kind, r in (self.probe_recall or {}).items():
            if not (math.isfinite(r) and 0.0 <= r <= 1.0):
                raise CalibrationError(f"probe_recall.{kind} must be in [0, 1], got {r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "scale": self.scale,
            "n": self.n,
            "weight": self.weight,
            "heldout_q": self.heldout_q,
            "drift": self.drift,
            "reason": self.reason,
            "sensitivity": self.sensitivity,
            "probe_recall": dict(self.probe_recall) if self.probe_recall is not None else None,
        }


@dataclass(frozen=True)
class Agreement:
    """The max rule's agreement term of one camera: ``offset + slope * mean``, ``mean`` the weighted mean of
    the clip's z-scores (:func:`fuse` under ``mean``, the same weights), on the scale of the max of the
    weighted z-scores. Fitted on the camera's normal footage (:func:`fit_agreement`) so that the two have
    the same median and :data:`AGREEMENT_QUANTILE` quantile there: the term rises above the max only where
    the streams agree more than they do on normal footage."""

    offset: float
    slope: float
    #: The streams it was fitted over. The line holds for their mean only: a clip that lacks one of them
    #: (a memory model the run refused, a NaN score) is fused by the plain max, since the mean of fewer
    #: streams is wider than the line expects and would read as agreement.
    streams: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset) and math.isfinite(self.slope)) or self.slope <= 0:
            raise CalibrationError(
                f"agreement needs a finite offset and a finite slope > 0, got offset={self.offset} "
                f"slope={self.slope}"
            )
        if len(self.streams) < 2 or len(set(self.streams)) != len(self.streams):
            raise CalibrationError(f"agreement needs two or more distinct streams, got {list(self.streams)}")

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "slope": self.slope, "streams": list(self.streams)}


@dataclass(frozen=True)
class Calibration:
    """Per-camera calibration of the raw streams.

    ``streams`` maps a stream name to its statistics and reliability; ``identity`` passes every raw score
    through unchanged (an uncalibrated camera). ``rule`` is the fusion rule the calibration was fitted for
    (:data:`FUSION_RULES`; a camera's config may override it). ``threshold`` is the ``threshold_quantile``
    quantile of the fused (by ``rule``, with the reliability weights and a uniform gate, unsmoothed)
    calibrated score on the normal footage, after the alerts' trailing median of ``threshold_smoothing``
    clips (:class:`TemporalSmoother`; 1: unsmoothed, as calibrations before it were): what a camera's
    ``alerts.on_threshold: calibrated`` opens alerts at.
    ``heldout_quantile`` is the quantile behind each stream's ``heldout_q`` (None: nothing was held out).
    ``agreement``: the ``max`` rule's agreement term (None: the plain max; calibrations from before it, or
    footage too short to place it). ``semantic_source``: where the ``semantic`` stream's scores came from
    (:data:`SEMANTIC_SOURCES`; None: a calibration from before it was recorded, whose semantic scores, if any,
    came from the semantic head). The two sources score on different scales, so a run refuses a calibration
    whose source is not its engines' (``pipeline.outputs``).
    """

    streams: Mapping[str, StreamStats] = field(default_factory=dict)
    n_samples: int = 0
    threshold_quantile: float = 0.99
    threshold: float | None = None
    identity: bool = False
    camera: str | None = None
    rule: str = LEGACY_RULE
    heldout_quantile: float | None = None
    agreement: Agreement | None = None
    threshold_smoothing: int = 1
    semantic_source: str | None = None
    #: Stream -> the sha256 of the arrays of the model file ``zsad calibrate`` wrote beside this calibration
    #: for it (its header's ``arrays_sha256``: the appearance memory, the stationary and objects models).
    #: The calibration is written last, so it names the files it belongs with: a calibration that failed
    #: after its models were written leaves the old calibration beside new models, which the run refuses
    #: (empty: a calibration from before this).
    models: Mapping[str, str] = field(default_factory=dict)
    #: The engines' identity the streams were scored with (``EngineSet.model_id``: model spec and weights;
    #: None: a calibration from before it was recorded). Another model scores the learned streams on other
    #: levels, so a run refuses it (:func:`check_model`).
    model_id: str | None = None

    def __post_init__(self) -> None:
        check_rule(self.rule)
        if self.semantic_source is not None and self.semantic_source not in SEMANTIC_SOURCES:
            raise CalibrationError(
                f"semantic_source must be one of {', '.join(SEMANTIC_SOURCES)}, got {self.semantic_source!r}"
            )
        if self.threshold_smoothing < 1:
            raise CalibrationError(f"threshold_smoothing must be >= 1, got {self.threshold_smoothing}")
        if self.agreement is not None:
            if self.rule != "max":
                raise CalibrationError(f"an agreement term belongs to the max rule, not {self.rule!r}")
            # A stream the calibration does not weigh would enter the term's mean uncalibrated.
            unweighed = [s for s in self.agreement.streams if s not in self.streams or self.weight(s) <= 0]
            if unweighed:
                raise CalibrationError(
                    f"the agreement term's streams {unweighed} are not calibrated streams with a weight"
                )

    @classmethod
    def identity_for(cls, camera: str | None = None) -> Calibration:
        """The calibration of an uncalibrated camera: raw scores are used as they are, fused by the mean."""
        return cls(identity=True, camera=camera)

    def weight(self, stream: str) -> float:
        """The stream's reliability weight: 1 for a stream the calibration does not weigh."""
        stats = self.streams.get(stream)
        return stats.weight if stats is not None else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "camera": self.camera,
            "identity": self.identity,
            "rule": self.rule,
            "n_samples": self.n_samples,
            "threshold_quantile": self.threshold_quantile,
            "threshold": self.threshold,
            "threshold_smoothing": self.threshold_smoothing,
            "heldout_quantile": self.heldout_quantile,
            "agreement": self.agreement.to_dict() if self.agreement is not None else None,
            "streams": {name: s.to_dict() for name, s in self.streams.items()},
            **({"semantic_source": self.semantic_source} if self.semantic_source is not None else {}),
            **({"models": dict(sorted(self.models.items()))} if self.models else {}),
            **({"model_id": self.model_id} if self.model_id is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Calibration:
        """Build from :meth:`to_dict` output (version 3), a version 2 file (no agreement term: the plain max)
        or a version 1 file, whose streams get weight 1 and
        whose rule is ``mean``, as it was. Raises :class:`CalibrationError` naming ``source``."""

        def bad(msg: str) -> CalibrationError:
            return CalibrationError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise bad(f"top level must be an object, got {type(data).__name__}")
        version = data.get("version")
        if isinstance(version, bool) or version not in _READABLE_VERSIONS:
            raise bad(
                f"unsupported calibration version {version!r} "
                f"(expected one of {', '.join(map(str, _READABLE_VERSIONS))})"
            )
        streams_raw = data.get("streams")
        if not isinstance(streams_raw, dict):
            raise bad("'streams' must be an object of stream name -> {location, scale, n, ...}")
        streams: dict[str, StreamStats] = {}
        for name, s in streams_raw.items():
            if not isinstance(s, dict):
                raise bad(f"streams.{name} must be an object")
            try:
                if version == 1:
                    streams[str(name)] = StreamStats(
                        location=_number(s.get("location")),
                        scale=_number(s.get("scale")),
                        n=int(s.get("n", 0)),
                        reason=V1_REASON,
                    )
                else:
                    reason = s.get("reason", "")
                    if not isinstance(reason, str):
                        raise TypeError(f"'reason' must be a string, got {reason!r}")
                    streams[str(name)] = StreamStats(
                        location=_number(s.get("location")),
                        scale=_number(s.get("scale")),
                        n=int(s.get("n", 0)),
                        weight=_number(s.get("weight", 1.0)),
                        heldout_q=_optional_number(s.get("heldout_q")),
                        drift=_optional_number(s.get("drift")),
                        reason=reason,
                        sensitivity=_optional_number(s.get("sensitivity")),
                        probe_recall=_recalls(s.get("probe_recall")),
                    )
            except (TypeError, ValueError, OverflowError) as exc:  # int(1e999) overflows
                raise bad(f"streams.{name}: {exc}") from exc
        threshold = data.get("threshold")
        quantile = data.get("threshold_quantile", 0.99)
        try:
            q = _number(quantile)
            thr = None if threshold is None else _number(threshold)
            heldout_quantile = _optional_number(data.get("heldout_quantile"))
            n_samples = int(data.get("n_samples", 0))
            smoothing = data.get("threshold_smoothing", 1)
            if isinstance(smoothing, bool) or not isinstance(smoothing, int):
                raise TypeError(f"'threshold_smoothing' must be an integer, got {smoothing!r}")
        except (TypeError, ValueError, OverflowError) as exc:
            raise bad(str(exc)) from exc
        if not 0.0 < q <= 1.0:
            raise bad(f"threshold_quantile must be in (0, 1], got {q}")
        if heldout_quantile is not None and not 0.5 < heldout_quantile < 1.0:
            raise bad(f"heldout_quantile must be in (0.5, 1), got {heldout_quantile}")
        camera = data.get("camera")
        if camera is not None and not isinstance(camera, str):
            raise bad("'camera' must be a string or null")
        identity = data.get("identity", False)
        if not isinstance(identity, bool):
            raise bad("'identity' must be a boolean")
        rule = LEGACY_RULE if version == 1 else data.get("rule", DEFAULT_RULE)
        if rule not in FUSION_RULES:
            raise bad(f"'rule' must be one of {', '.join(FUSION_RULES)}, got {rule!r}")
        agreement = _agreement(data.get("agreement"), bad)
        semantic_source = data.get("semantic_source")
        if semantic_source is not None and not isinstance(semantic_source, str):
            raise bad("'semantic_source' must be a string or absent")
        model_id = data.get("model_id")
        if model_id is not None and not isinstance(model_id, str):
            raise bad("'model_id' must be a string or absent")
        models = data.get("models", {})
        if not isinstance(models, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in models.items()
        ):
            raise bad(f"'models' must be an object of stream -> sha256, got {models!r}")
        try:  # what only the whole can check (an agreement term's rule and streams), named by the file
            return cls(
                streams=streams,
                n_samples=n_samples,
                threshold_quantile=q,
                threshold=thr,
                identity=identity,
                camera=camera,
                rule=rule,
                heldout_quantile=heldout_quantile,
                agreement=agreement,
                threshold_smoothing=smoothing,
                semantic_source=semantic_source,
                models=models,
                model_id=model_id,
            )
        except CalibrationError as exc:
            raise bad(str(exc)) from exc


def _agreement(v: Any, bad: Any) -> Agreement | None:
    """The ``agreement`` entry of a calibration file (absent or null: none). Its rule and streams are
    checked by :class:`Calibration` against the rest of the file."""
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) != {"offset", "slope", "streams"}:
        raise bad(
            f"'agreement' must be an object {{offset, slope, streams}}, got {v!r} (a file written before the "
            "term named its streams: run `zsad calibrate` again)"
        )
    streams = v["streams"]
    if not isinstance(streams, list) or not all(isinstance(x, str) for x in streams):
        raise bad(f"agreement.streams must be a list of stream names, got {streams!r}")
    try:
        return Agreement(_number(v["offset"]), _number(v["slope"]), tuple(streams))
    except (TypeError, ValueError) as exc:
        raise bad(f"agreement: {exc}") from exc


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {v!r}")
    return f


def _optional_number(v: Any) -> float | None:
    return None if v is None else _number(v)


def _recalls(v: Any) -> dict[str, float] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise TypeError(f"'probe_recall' must be an object of kind -> share, got {v!r}")
    return {str(k): _number(x) for k, x in v.items()}


def fit_stream(values: np.ndarray, min_scale: float = 0.0, empty: float | None = None) -> StreamStats:
    """Median / 1.4826*MAD of one stream's raw scores ``(N,)``; non-finite values are ignored. The scale is
    at least ``min_scale`` (:data:`STREAM_MIN_SCALE`). ``empty``: the stream's "nothing seen" value
    (:data:`STREAM_EMPTY`); when at least half the samples are at or below it, the fit is of the others
    (with fewer than :data:`MIN_OCCUPIED_CLIPS` of them, location 0 and scale 1). The weight is 1:
    reliability needs folds (:func:`assess_stream`)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        # A map stream is NaN where no cell is left to reduce: zones that ignore the whole view.
        raise CalibrationError(
            "no finite samples to fit (does the camera's ignore zone cover the whole view?)"
        )
    if empty is not None:
        occupied = x[x > empty]
        if 2 * occupied.size <= x.size:
            if occupied.size < MIN_OCCUPIED_CLIPS:
                return StreamStats(location=0.0, scale=max(1.0, float(min_scale)), n=int(x.size))
            x = occupied
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    scale = max(MAD_TO_SIGMA * mad, SCALE_EPS, SCALE_REL_FLOOR * abs(med), float(min_scale))
    return StreamStats(location=med, scale=scale, n=int(x.size))


def _still_value(
    values: np.ndarray, min_scale: float, empty: float | None
) -> tuple[float | None, str | None]:
    """For a stream whose normal clips mostly score exactly the same value near 0 (a still or quiet view:
    motion exactly 0 wherever nothing moved), ``(that value, None)``: fitted on the other clips, as the
    objects stream on its empty clips (:data:`STREAM_EMPTY`). With fewer than :data:`MIN_OCCUPIED_CLIPS`
    others (a lens cap, a looped still, a scene where nothing moved), ``(None, why it is left out)``. Else
    ``(None, None)``: the stream's own fit. Without this its scale was the floor :data:`SCALE_EPS` and the
    first clip a thousandth away fused to a z of a thousand; on footage that never moved the threshold was
    0. A median away from 0 keeps the relative floor (:data:`SCALE_REL_FLOOR`), and streams with a unit or
    a "nothing seen" value of their own (:data:`STREAM_MIN_SCALE`, :data:`STREAM_EMPTY`) their own rule."""
    if min_scale > 0.0 or empty is not None:
        return None, None
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    med = float(np.median(x))
    if float(np.median(np.abs(x - med))) > 0.0 or SCALE_REL_FLOOR * abs(med) > SCALE_EPS:
        return None, None
    others = int(np.count_nonzero(x > med))
    if others >= MIN_OCCUPIED_CLIPS:
        return med, None
    return None, (
        f"left out: {x.size - others} of {x.size} normal clips score exactly {med:g} (no spread to scale a "
        "z-score by: calibrate from footage in which the scene moves)"
    )


def assessment_folds(folds: np.ndarray) -> np.ndarray:
    """The halves :func:`assess_stream` judges a stream on, from clips' :data:`HELDOUT_FOLDS` fold ids
    ``(N,)`` int in time order: fold ``f >= 0`` is in half ``f * ASSESSMENT_FOLDS // HELDOUT_FOLDS``; a
    negative id (no fold) stays as it is."""
    f = np.asarray(folds)
    if f.size and not np.issubdtype(f.dtype, np.integer):
        raise CalibrationError(f"fold ids must be integers, got dtype {f.dtype}")
    return np.where(f >= 0, (f.astype(np.int64) * ASSESSMENT_FOLDS) // HELDOUT_FOLDS, f.astype(np.int64))


def time_folds(n: int, k: int = 2) -> np.ndarray:
    """Fold ids ``(n,)`` int64 of ``n`` clips in time order: ``k`` contiguous blocks of (nearly) equal size.
    Contiguous, not interleaved: neighbouring clips are nearly the same, so only a block held out is unseen
    footage."""
    if n < 0 or k < 1:
        raise CalibrationError(f"time_folds needs n >= 0 and k >= 1, got n={n} k={k}")
    return (np.arange(n, dtype=np.int64) * k) // max(n, 1)


def _z_ref(quantile: float) -> float:
    """The standard normal's ``quantile`` quantile: the held-out tail a Gaussian stream would have."""
    return NormalDist().inv_cdf(quantile)


def _verdict(weight: float, assessed: bool) -> str:
    if weight == 0.0:
        return "left out"
    if not assessed:
        return "not assessed"
    return "trusted" if weight >= TRUSTED_WEIGHT else "weighed down"


def _pct(quantile: float) -> str:
    return f"{quantile * 100:g}th pct"


def assess_stream(
    values: np.ndarray,
    folds: np.ndarray,
    *,
    quantile: float = HELDOUT_QUANTILE,
    min_fold_clips: int = MIN_FOLD_CLIPS,
    min_scale: float = 0.0,
    empty: float | None = None,
) -> tuple[float, float | None, float | None, str]:
    """How far one stream can be trusted on a camera, from its raw normal scores ``(N,)`` and the clips'
    fold ids ``(N,)`` int: ``(weight, heldout_q, drift, reason)``.

    Each fold ``k`` with at least ``min_fold_clips`` finite clips is held out in turn: location and scale
    are fitted on the other clips (:func:`fit_stream`, the scale at least ``min_scale``, ``empty`` as
    there) and fold ``k`` is
    z-scored with them. From the pooled held-out z-scores, ``heldout_q`` is their ``quantile`` quantile and
    ``drift`` the largest ``|median|`` of one fold's. The weight::

        w = clip( min(1, Z_REF / excess_q),  MIN_WEIGHT, 1 )

    where ``Z_REF`` is the standard normal's ``quantile`` quantile (2.33 at 0.99). Both terms discount
    sampling noise, so that a Gaussian stream calibrated on a few minutes is not weighed down by chance:
    ``excess_q = max(Z_REF, heldout_q - 2 se_q)``, with ``se_q`` the standard error a Gaussian stream's
    held-out quantile would have (from the MAD scale fitted on ``n_rest`` clips, relative error
    ``1.167 / sqrt(n_rest)``, and the empirical quantile of ``n`` pooled clips,
    ``sqrt(q (1 - q) / n) / phi(Z_REF)``); ``excess_drift`` is the part of a fold's ``|median|`` beyond two
    standard errors of a difference of medians (``2 * 1.2533 * sqrt(1/n_k + 1/n_rest)``).

    The first factor scales a heavy-tailed stream so that its held-out false-alarm tail sits where a
    Gaussian's would: every stream then reaches a given fused score on unseen normal footage about equally
    rarely (a lighter tail earns no more than 1: a short calibration cannot prove a stream better than
    Gaussian). A level that moved between the folds is already in that tail (each fold is z-scored with the
    other's statistics), so ``drift`` is reported, not charged a second time: with two halves of a few
    minutes of footage it is noisy, and as a second factor it weighed down the motion stream of a road
    whose traffic differed between the halves until a passing cyclist no longer alerted
    (tests/integration/test_zones.py). Fewer than two usable folds: weight 1.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    f = np.asarray(folds).ravel()
    if f.shape != x.shape:
        raise CalibrationError(f"{f.size} fold ids for {x.size} samples")
    finite = np.isfinite(x)
    labels, counts = np.unique(f[finite], return_counts=True)
    usable = [int(k) for k, c in zip(labels, counts, strict=True) if c >= min_fold_clips]
    if len(usable) < 2:
        return (
            1.0,
            None,
            None,
            f"too few clips to hold out (need {min_fold_clips} in each of 2 folds, "
            f"have {sorted(int(c) for c in counts)})",
        )
    z_ref = _z_ref(quantile)
    held: list[np.ndarray] = []
    drift = 0.0
    excess = 0.0
    for k in usable:
        test = finite & (f == k)
        rest = finite & (f != k)
        stats = fit_stream(x[rest], min_scale, empty)
        z = (x[test] - stats.location) / stats.scale
        held.append(z)
        level = z
        if empty is not None:  # a level is of what was seen: empty clips are far below any fit of objects
            occupied = x[test] > empty
            if 2 * int(occupied.sum()) <= occupied.size:
                level = z[occupied]
        shift = abs(float(np.median(level))) if level.size else 0.0
        noise = 2.0 * _MEDIAN_SE * math.sqrt(1.0 / int(test.sum()) + 1.0 / int(rest.sum()))
        drift = max(drift, shift)
        excess = max(excess, shift - noise)
    pooled = np.concatenate(held)
    q = float(np.quantile(pooled, quantile))
    n_rest = min(int((finite & (f != k)).sum()) for k in usable)
    se_q = math.sqrt(
        (z_ref * _MAD_REL_SE) ** 2 / n_rest
        + quantile * (1.0 - quantile) / (pooled.size * NormalDist().pdf(z_ref) ** 2)
    )
    tail_factor = z_ref / max(z_ref, q - 2.0 * se_q)
    weight = float(min(1.0, max(MIN_WEIGHT, tail_factor)))
    verdict = _verdict(weight, assessed=True)
    causes = []
    if tail_factor < 1.0:
        causes.append("tail heavier than Gaussian")
    if excess > 0.0:
        causes.append("level drifts between folds")
    why = f"{verdict} ({', '.join(causes)})" if verdict == "weighed down" and causes else verdict
    reason = f"held-out {_pct(quantile)} z {q:.1f} (expected {z_ref:.1f}), drift {drift:.1f}: {why}"
    return weight, q, drift, reason


def probe_recall(
    normal: np.ndarray, probed: np.ndarray, *, quantile: float = HELDOUT_QUANTILE
) -> float | None:
    """The share of pasted-event clips ``probed`` ``(P,)`` whose raw score exceeds the ``quantile`` quantile
    of the stream's normal scores ``normal`` ``(N,)``: how much of that kind of event the stream would
    catch at its normal false-alarm tail. None with fewer than :data:`MIN_FOLD_CLIPS` finite normal or
    :data:`MIN_PROBE_CLIPS` finite pasted clips. The normal scores must be held out where the stream has a
    memory of the footage (the appearance stream's are), or its threshold is biased low."""
    x = np.asarray(normal, dtype=np.float64).ravel()
    p = np.asarray(probed, dtype=np.float64).ravel()
    x, p = x[np.isfinite(x)], p[np.isfinite(p)]
    if x.size < MIN_FOLD_CLIPS or p.size < MIN_PROBE_CLIPS:
        return None
    return float(np.mean(p > np.quantile(x, quantile)))


def probe_sensitivity(
    recalls: Mapping[str, Mapping[str, float | None]],
) -> dict[str, tuple[float | None, str]]:
    """Each stream's sensitivity factor from its recall of each kind of pasted event (stream -> kind ->
    :func:`probe_recall`): ``(factor, reason)``, the factor None where it cannot be judged.

    A stream is judged, kind by kind, against the best stream at that kind, and keeps its best ratio::

        factor_s = clip( max_k r_sk / max_j r_jk,  MIN_WEIGHT, 1 )    over the kinds k some stream sees

    so every stream that is the best at catching some kind keeps its full weight (motion for movers,
    appearance for things that stay) and a stream that catches nothing another stream does not catch far
    better, such as an untrained learned stream, is weighed down. Relative, not absolute, because how
    visible a pasted event is depends on the camera, and per kind because it depends on the kind too: a
    still pasted for 7 s is easier to catch than a mover racing past for 2 s, and judged against the
    stills' best recall (an earlier form of this rule) the streams that see movers were weighed down on the
    demo's parking camera, which then missed its runner. A kind counts only where some stream catches more
    than :data:`MIN_PROBE_RECALL` of it; when none does for any kind, the probe says nothing about this
    camera and every factor is None."""
    kinds = {k for by_kind in recalls.values() for k in by_kind}
    best_of = {
        k: max((r for by_kind in recalls.values() if (r := by_kind.get(k)) is not None), default=0.0)
        for k in kinds
    }
    seen = {k for k, top in best_of.items() if top > MIN_PROBE_RECALL}
    out: dict[str, tuple[float | None, str]] = {}
    for stream, by_kind in recalls.items():
        caught = ", ".join(f"{k} {r:.0%}" for k, r in by_kind.items() if r is not None)
        judged = {k: r for k, r in by_kind.items() if r is not None}
        if not judged:
            out[stream] = (None, "too few pasted events to judge")
        elif not seen:
            out[stream] = (None, f"pasted events caught by no stream ({caught}): not used")
        else:
            ratio = max((r / best_of[k] for k, r in judged.items() if k in seen), default=0.0)
            factor = min(1.0, max(MIN_WEIGHT, ratio))
            out[stream] = (factor, f"catches pasted {caught}")
    return out


def fit_calibration(
    samples: Mapping[str, np.ndarray],
    folds: np.ndarray | Sequence[int] | None = None,
    *,
    threshold_quantile: float = 0.99,
    camera: str | None = None,
    rule: str = DEFAULT_RULE,
    heldout_quantile: float = HELDOUT_QUANTILE,
    min_fold_clips: int = MIN_FOLD_CLIPS,
    probes: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    smoothing: int = 1,
    segments: np.ndarray | Sequence[int] | None = None,
) -> Calibration:
    """Fit a camera's calibration on raw scores of normal footage.

    ``samples`` maps a stream name to its raw scores ``(N,)`` float, one per clip. Location and scale of
    each stream come from all its clips. ``folds``: ``(N,)`` int, each clip's fold (for example
    :func:`time_folds`: blocks of time), aligned with every stream; with at least two folds of
    ``min_fold_clips`` clips, each stream gets a reliability weight from held-out folds
    (:func:`assess_stream`), otherwise weight 1 and the reason says why. When every stream has the same
    ``N`` (aligned clips), the default threshold is the ``threshold_quantile`` quantile of the fused z-score
    over those clips, by ``rule`` with the reliability weights and a uniform gate (:func:`fuse_arrays`),
    after the alerts' trailing median of ``smoothing`` clips (:func:`trailing_median`) within each of
    ``segments`` (``(N,)`` ids, one per clip: the footage it came from, in time order; None: one footage);
    otherwise ``threshold`` is None. The alerts compare the smoothed score with the threshold, so it is the
    smoothed normal score's quantile that says how often normal footage crosses it.

    ``probes``: kind -> stream -> raw scores of clips of the same footage with pseudo-anomalies pasted in
    (:mod:`plugins.pseudo_anomaly`). Each stream's recall of each kind at its ``heldout_quantile`` normal
    tail (:func:`probe_recall`) gives a sensitivity factor (:func:`probe_sensitivity`); below
    :data:`LEAVE_OUT_SENSITIVITY` it multiplies the held-out weight and the stream may be left out: normal
    footage says how calm a stream is, the pasted events whether it sees anything at all.
    """
    if not samples:
        raise CalibrationError("no streams to calibrate")
    if not 0.0 < threshold_quantile <= 1.0:
        raise CalibrationError(f"threshold_quantile must be in (0, 1], got {threshold_quantile}")
    if not 0.5 < heldout_quantile < 1.0:
        raise CalibrationError(f"heldout_quantile must be in (0.5, 1), got {heldout_quantile}")
    if min_fold_clips < 2:
        raise CalibrationError(f"min_fold_clips must be >= 2, got {min_fold_clips}")
    if smoothing < 1:
        raise CalibrationError(f"smoothing must be >= 1, got {smoothing}")
    try:
        check_rule(rule)
    except FusionError as exc:
        raise CalibrationError(str(exc)) from exc
    arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in samples.items()}
    lengths = {a.size for a in arrays.values()}
    fold_ids: np.ndarray | None = None
    if folds is not None:
        fold_ids = np.asarray(folds).ravel()
        if fold_ids.size and not np.issubdtype(fold_ids.dtype, np.integer):
            raise CalibrationError(f"fold ids must be integers, got dtype {fold_ids.dtype}")
        if len(lengths) != 1 or fold_ids.size != next(iter(lengths)):
            raise CalibrationError(
                f"fold ids need one id per clip of every stream: {fold_ids.size} ids, "
                f"streams of {sorted(lengths)} clips"
            )
    stats: dict[str, StreamStats] = {}
    for name, values in arrays.items():
        unit = STREAM_MIN_SCALE.get(name, 0.0)
        empty = STREAM_EMPTY.get(name)
        try:
            base = fit_stream(values, unit, empty)
        except CalibrationError as exc:
            raise CalibrationError(f"stream {name!r}: {exc}") from exc
        implicit, still = _still_value(values, unit, empty)
        if still is not None:
            stats[name] = replace(base, weight=0.0, reason=still)
            continue
        if implicit is not None:  # a quiet view: fitted on the clips that moved
            empty = implicit
            base = fit_stream(values, unit, empty)
        if fold_ids is None:
            stats[name] = base
            continue
        weight, q, drift, reason = assess_stream(
            values,
            fold_ids,
            quantile=heldout_quantile,
            min_fold_clips=min_fold_clips,
            min_scale=unit,
            empty=empty,
        )
        stats[name] = StreamStats(base.location, base.scale, base.n, weight, q, drift, reason)
    stats = _leave_out_busy(stats)
    if probes:
        stats = _weigh_by_probes(stats, arrays, probes, heldout_quantile)
    threshold: float | None = None
    agreement: Agreement | None = None
    n = max(lengths)
    if len(lengths) == 1:
        z = {k: (arrays[k] - stats[k].location) / stats[k].scale for k in arrays}
        weights = {k: stats[k].weight for k in arrays}
        if rule == "max":
            agreement = fit_agreement(z, weights)
        fused = fuse_arrays(z, weights, rule, agreement)
        if segments is not None and np.asarray(segments).size != fused.size:
            raise CalibrationError(
                f"segments need one id per clip: {np.asarray(segments).size} for {fused.size}"
            )
        if smoothing > 1:
            # The run fuses a clip no stream scores as 0.0 (:func:`fuse`), which then enters its smoother's
            # window; unsmoothed thresholds keep their earlier definition (such clips left out).
            fused = trailing_median(np.where(np.isnan(fused), 0.0, fused), smoothing, segments)
        fused = fused[np.isfinite(fused)]
        if fused.size:
            threshold = float(np.quantile(fused, threshold_quantile))
    assessed = any(s.heldout_q is not None for s in stats.values())
    return Calibration(
        streams=stats,
        n_samples=n,
        threshold_quantile=threshold_quantile,
        threshold=threshold,
        camera=camera,
        rule=rule,
        heldout_quantile=heldout_quantile if assessed else None,
        agreement=agreement,
        threshold_smoothing=smoothing,
    )


def trailing_median(
    values: np.ndarray, k: int, segments: np.ndarray | Sequence[int] | None = None
) -> np.ndarray:
    """What :class:`TemporalSmoother` gives clip by clip, over a whole series: at each clip the median of
    the last ``k`` finite values up to it within its segment (``segments``: ``(N,)`` ids, a new smoother
    wherever the id changes; None: one segment); NaN until a segment's first finite value."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if k < 1:
        raise FusionError(f"smoothing window must be >= 1, got {k}")
    if segments is not None and np.asarray(segments).size != x.size:
        raise FusionError(f"segments need one id per value: {np.asarray(segments).size} for {x.size}")
    if k == 1:
        return x.copy()  # a window of one is the score itself (a NaN stays NaN)
    seg = np.zeros(x.size, np.int64) if segments is None else np.asarray(segments).ravel()
    out = np.full(x.size, np.nan)
    smoother = TemporalSmoother(k)
    for i in range(x.size):
        if i and seg[i] != seg[i - 1]:
            smoother.reset()
        out[i] = smoother.update(float(x[i]))
    return out


def fit_agreement(z: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> Agreement | None:
    """The max rule's agreement term (:class:`Agreement`) from normal clips' z-scores ``z`` (stream ->
    ``(N,)``, aligned) and the scalar weights they are fused with: over the streams with a positive weight,
    the line that takes their weighted mean's median and :data:`AGREEMENT_QUANTILE` quantile onto their
    max's, on the clips where every one of them is finite. None with fewer than two such streams, fewer than
    :data:`MIN_AGREEMENT_CLIPS` such clips, or a mean that does not vary."""
    names = tuple(s for s in z if s in weights and float(weights[s]) > 0)
    if len(names) < 2:
        return None
    kept = {s: np.asarray(z[s], dtype=np.float64).ravel() for s in names}
    ok = np.logical_and.reduce([np.isfinite(v) for v in kept.values()])
    if int(ok.sum()) < MIN_AGREEMENT_CLIPS:
        return None
    clips = {s: v[ok] for s, v in kept.items()}
    w = {s: weights[s] for s in names}
    top, mean = fuse_arrays(clips, w, "max"), fuse_arrays(clips, w, "mean")
    (t50, t_hi), (m50, m_hi) = (np.quantile(x, [0.5, AGREEMENT_QUANTILE]) for x in (top, mean))
    if not m_hi - m50 > SCALE_EPS or not t_hi - t50 > SCALE_EPS:
        return None
    slope = float((t_hi - t50) / (m_hi - m50))
    return Agreement(offset=float(t50 - slope * m50), slope=slope, streams=names)


def _leave_out_busy(stats: dict[str, StreamStats]) -> dict[str, StreamStats]:
    """``stats`` with every stream of :data:`STREAM_MIN_SCALE` whose normal median exceeds
    :data:`BUSY_LEVEL` of its units left out (weight 0, the reason says why)."""
    out = dict(stats)
    for name, unit in STREAM_MIN_SCALE.items():
        st = stats.get(name)
        if st is None or not st.location > BUSY_LEVEL * unit:
            continue
        out[name] = replace(
            st,
            weight=0.0,
            reason=(
                f"{st.reason}; left out: busy on this camera (its normal clips' median is {st.location:.1f} "
                f"of its units, above {BUSY_LEVEL:g}: what it reports follows how crowded the scene is)"
            ),
        )
    return out


def _weigh_by_probes(
    stats: dict[str, StreamStats],
    normal: Mapping[str, np.ndarray],
    probes: Mapping[str, Mapping[str, np.ndarray]],
    quantile: float,
) -> dict[str, StreamStats]:
    """``stats`` with each stream's weight multiplied by its :func:`probe_sensitivity` factor."""
    # The semantic stream is not judged: a pasted patch means nothing to its prompts.
    recalls = {
        name: {
            kind: probe_recall(normal[name], by_stream[name], quantile=quantile)
            for kind, by_stream in probes.items()
            if name in by_stream
        }
        for name in stats
        if name != SEMANTIC and stats[name].weight > 0  # a stream already left out is not judged
    }
    out: dict[str, StreamStats] = dict(stats)
    for name, (factor, why) in probe_sensitivity(recalls).items():
        st = stats[name]
        caught = {k: r for k, r in recalls[name].items() if r is not None}
        if factor is None:
            out[name] = replace(st, reason=f"{st.reason}; {why}", probe_recall=caught or None)
            continue
        if factor >= LEAVE_OUT_SENSITIVITY:
            # It sees the pasted events; how much better another stream sees them says nothing about real
            # anomalies (on the demo, weighing the DPC stream down by 0.74 lost a real cyclist).
            out[name] = replace(
                st, sensitivity=factor, probe_recall=caught, reason=f"{st.reason}; {why}: factor {factor:.2f}"
            )
            continue
        weight = float(min(1.0, max(MIN_WEIGHT, st.weight * factor)))
        verdict = _verdict(weight, assessed=True)
        out[name] = replace(
            st,
            weight=weight,
            sensitivity=factor,
            probe_recall=caught,
            reason=(
                f"{st.reason}; {why}: factor {factor:.2f} (of every kind, sees less than half of what the "
                f"best stream at it sees); weight {weight:.2f}, {verdict}"
            ),
        )
    return _leave_out_redundant(out, normal, probes, quantile)


def _fused_recall(
    stats: Mapping[str, StreamStats],
    keep: Sequence[str],
    normal: Mapping[str, np.ndarray],
    probes: Mapping[str, Mapping[str, np.ndarray]],
    quantile: float,
) -> float:
    """The mean over kinds of the share of pasted-event clips whose fused score (max rule, the streams
    ``keep`` with their weights) exceeds the ``quantile`` quantile of the normal clips' fused score. The
    plain max, without the agreement term: which streams may go is decided first, and the term is fitted
    on the streams that stay (:func:`fit_calibration`)."""
    weights = {s: stats[s].weight for s in keep}

    def z(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {s: (np.asarray(raw[s], np.float64) - stats[s].location) / stats[s].scale for s in keep}

    clean = fuse_arrays(z(normal), weights, "max")
    clean = clean[np.isfinite(clean)]
    if clean.size < MIN_FOLD_CLIPS:
        return 0.0
    threshold = float(np.quantile(clean, quantile))
    shares = []
    for by_stream in probes.values():
        fused = fuse_arrays(z(by_stream), weights, "max")
        shares.append(float(np.mean(np.where(np.isfinite(fused), fused, -np.inf) > threshold)))
    return float(np.mean(shares)) if shares else 0.0


def _probe_margin(
    st: StreamStats,
    normal: np.ndarray,
    probes: Mapping[str, Mapping[str, np.ndarray]],
    stream: str,
    quantile: float,
) -> float:
    """How far above its normal ``quantile`` tail a stream puts the typical pasted event of the kind it sees
    best: ``weight * max_kind (median z of the pasted clips - quantile of the normal z)``. Two streams that
    catch the same share of the events (pixel and motion on movers) differ here: continuous, it breaks
    the tie by how clearly each sees them rather than by a clip or two."""
    clean = (np.asarray(normal, np.float64) - st.location) / st.scale
    clean = clean[np.isfinite(clean)]
    if clean.size == 0:
        return -math.inf
    tail = float(np.quantile(clean, quantile))
    best = -math.inf
    for by_stream in probes.values():
        z = (np.asarray(by_stream[stream], np.float64) - st.location) / st.scale
        z = z[np.isfinite(z)]
        if z.size:
            best = max(best, float(np.median(z)) - tail)
    return st.weight * best


def _leave_out_redundant(
    stats: dict[str, StreamStats],
    normal: Mapping[str, np.ndarray],
    probes: Mapping[str, Mapping[str, np.ndarray]],
    quantile: float,
) -> dict[str, StreamStats]:
    """Backward elimination on the pasted events: while some stream that sees little of them (sensitivity
    factor below :data:`LEAVE_OUT_SENSITIVITY`) can be left out of the fused score without it catching fewer
    (within one pasted clip of each kind, or 0.02), leave out, of those, the one with the smallest
    :func:`_probe_margin` (then the lighter one) and set its weight to 0. Under the max rule every stream
    adds its own false alarms, so one that catches nothing the others do not (an untrained learned stream)
    costs detections at a given false-alarm rate even weighed down to 0.05. A stream that sees the events
    well is never left out, even when another sees the same: pasted boxes cannot tell which of two such
    streams sees the real anomalies better (on the demo, leaving motion out for the pixel stream lost the
    cyclist, and so did leaving out the DPC stream at sensitivity 0.74). Only streams with pasted-event
    scores take part; the semantic stream never does (a pasted patch carries no meaning for its prompts)."""
    judged = [
        s
        for s in stats
        if s != SEMANTIC
        and stats[s].weight > 0
        and stats[s].probe_recall
        and all(s in by_stream for by_stream in probes.values())
    ]
    if len(judged) < 2:
        return stats
    sizes = [np.isfinite(np.asarray(p[s], np.float64)).sum() for p in probes.values() for s in judged]
    tolerance = max(0.02, 1.0 / max(1, min(sizes)))
    keep = list(judged)
    out = dict(stats)
    margin = {s: _probe_margin(out[s], normal[s], probes, s, quantile) for s in judged}
    while len(keep) > 1:
        base = _fused_recall(out, keep, normal, probes, quantile)
        # Every stream the others can do without (within the tolerance) may go; of those, the one that sees
        # the events least clearly goes first (comparing the recalls themselves would split ties on a clip).
        spare = []
        for s in keep:
            factor = out[s].sensitivity
            if factor is None or factor >= LEAVE_OUT_SENSITIVITY:
                # It sees the events, or the probe could not judge it (a camera whose pasted events no
                # stream caught says nothing about any stream): only streams seen to see little may go.
                continue
            without = _fused_recall(out, [t for t in keep if t != s], normal, probes, quantile)
            if without >= base - tolerance:
                spare.append((margin[s], out[s].weight, s, without))
        if not spare:
            break
        _, _, drop, without = min(spare)
        keep.remove(drop)
        st = out[drop]
        out[drop] = replace(
            st,
            weight=0.0,
            reason=(
                f"{st.reason}; left out of the fused score: without it the others catch "
                f"{without:.0%} of the pasted events, with it {base:.0%}"
            ),
        )
    return out


def check_semantic_source(calibration: Calibration, source: str | None) -> None:
    """Refuse (:class:`CalibrationError`) a calibration whose ``semantic`` statistics were fitted on another
    source of the stream than the run's ``source`` (a file without a recorded source had the semantic
    head): the head's scores and the CLIP appearance engine's zero-shot scores have different scales, so
    its z-scores, agreement term and threshold would be wrong. Without a semantic stream in the run nothing
    is checked."""
    if source is None or SEMANTIC not in calibration.streams:
        return
    fitted = calibration.semantic_source or "head"
    if fitted != source:
        raise CalibrationError(
            f"its semantic stream was calibrated on the {fitted} source and this run's comes from the "
            f"{source} (appearance.semantic, the engines' build): recalibrate the camera (zsad calibrate)"
        )


def check_model(calibration: Calibration, model_id: str | None) -> None:
    """Refuse (:class:`CalibrationError`) a calibration scored with other engines than the run's
    (``model_id``: ``EngineSet.model_id``, the model spec and the weights): a retrained or resized model
    puts the learned streams' normal levels elsewhere, so their z-scores, weights and the threshold would
    describe another model. A calibration that records no model, or a run that passes none, is not
    checked."""
    if model_id is None or calibration.model_id is None or calibration.model_id == model_id:
        return
    raise CalibrationError(
        f"it was calibrated with the model {calibration.model_id} and this run's engines are {model_id} "
        "(another checkpoint or model section): recalibrate the camera (zsad calibrate)"
    )


def other_camera(calibration: Calibration, camera: str) -> str | None:
    """What to say when ``calibration`` was fitted on another camera's footage than ``camera`` (None: it
    was fitted for this one, or records no camera). Its statistics and the models beside it describe the
    other camera's scene; a copy for an identical view may be meant, so this is said, not refused."""
    if calibration.camera is None or calibration.camera == camera:
        return None
    return (
        f"its calibration was fitted on the footage of camera {calibration.camera!r}: its normal levels, "
        "threshold and the memories beside it describe that scene; calibrate this camera on its own "
        f"footage (zsad calibrate CONFIG --camera {camera} ...) unless the two views are the same"
    )


def calibrate(raw: Mapping[str, float], cal: Calibration) -> dict[str, float]:
    """Turn raw stream scores into z-scores. Non-finite values and streams the calibration lacks are dropped
    (the latter with a warning once per camera and stream)."""
    z: dict[str, float] = {}
    for name, value in raw.items():
        v = float(value)
        if not math.isfinite(v):
            continue
        if cal.identity:
            z[name] = v
            continue
        stats = cal.streams.get(name)
        if stats is None:
            _warn_once(
                ("uncal-stream", str(cal.camera), name),
                "camera %s: stream %r is not in its calibration; it is left out of the fused score",
                cal.camera,
                name,
            )
            continue
        z[name] = (v - stats.location) / stats.scale
    return z


def save_calibration(cal: Calibration, path: str | Path) -> None:
    """Write a calibration as JSON, atomically (temp file, fsync, rename)."""
    body = (json.dumps(cal.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_atomic(path, lambda f: f.write(body))


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file. Raises :class:`CalibrationError` naming the file on any problem."""
    p = Path(path)
    data = read_json(p, CalibrationError, label=f"calibration file {p}")
    return Calibration.from_dict(data, source=str(p))


# --------------------------------------------------------------------------------------------------
# Which streams a camera trusts, and why
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustRow:
    """One stream of a camera: its reliability ``weight``, ``heldout_q`` and ``drift`` (None when not
    assessed), a ``verdict`` (``trusted``, ``weighed down``, ``not assessed`` or ``not calibrated``) and the
    ``reason`` in words; ``sensitivity`` the factor pasted pseudo-anomalies gave it and ``probe_recall`` the
    share of each kind it caught (None: not probed)."""

    stream: str
    weight: float | None
    heldout_q: float | None
    drift: float | None
    verdict: str
    reason: str
    sensitivity: float | None = None
    probe_recall: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "weight": self.weight,
            "heldout_q": self.heldout_q,
            "drift": self.drift,
            "verdict": self.verdict,
            "reason": self.reason,
            "sensitivity": self.sensitivity,
            "probe_recall": dict(self.probe_recall) if self.probe_recall is not None else None,
        }


def describe_trust(cal: Calibration, streams: Iterable[str] = ()) -> list[TrustRow]:
    """Per stream, how far the camera's calibration trusts it and why: the calibrated streams in order,
    then any of ``streams`` (those the engines produce) the calibration lacks, as ``not calibrated`` (they
    are left out of the fused score). An uncalibrated camera (identity) lists ``streams`` as ``not
    calibrated``."""
    rows: list[TrustRow] = []
    if not cal.identity:
        for name, s in cal.streams.items():
            rows.append(
                TrustRow(
                    stream=name,
                    weight=s.weight,
                    heldout_q=s.heldout_q,
                    drift=s.drift,
                    verdict=_verdict(s.weight, assessed=s.heldout_q is not None),
                    reason=s.reason,
                    sensitivity=s.sensitivity,
                    probe_recall=s.probe_recall,
                )
            )
    known = {r.stream for r in rows}
    for name in streams:
        if name in known:
            continue
        known.add(name)
        why = (
            "camera uncalibrated: raw score used as it is"
            if cal.identity
            else "not in the calibration: left out of the fused score (rerun zsad calibrate)"
        )
        rows.append(TrustRow(name, None, None, None, "not calibrated", why))
    return rows


def format_trust(rows: Sequence[TrustRow], rule: str | None = None) -> str:
    """A plain-text table of :func:`describe_trust` rows (for ``zsad calibrate`` and the docs)."""

    def num(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    header = ("stream", "weight", "held-out q", "drift", "sees", "verdict", "reason")
    body = [
        (
            r.stream,
            num(r.weight, 2),
            num(r.heldout_q, 2),
            num(r.drift, 2),
            num(r.sensitivity, 2),
            r.verdict,
            r.reason,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header) - 1)]
    right = {1, 2, 3, 4}
    lines = []
    if rule is not None:
        lines.append(f"fusion rule: {rule}")
    for row in [header, *body]:
        cells = [
            row[i].rjust(widths[i]) if i in right else row[i].ljust(widths[i]) for i in range(len(widths))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Gate and fusion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusedScore:
    """One clip's fused score.

    ``score``: the value alerting uses (smoothed in :meth:`CameraFusion.update`); ``raw_fused``: this clip's
    unsmoothed fused score; ``rule``: how it was fused (:data:`FUSION_RULES`); ``weights``: each stream's
    weight ``w_s`` in it; ``contributions``: ``w_s * z_s`` per stream. Under ``mean`` the weights sum to 1
    and the contributions sum to ``raw_fused``; under ``max`` the weights are the multipliers (reliability
    times gate factor) and ``raw_fused`` is the largest contribution, or ``agreement`` (the calibration's
    agreement term of this clip, None without one) where that is larger.
    """

    score: float
    contributions: dict[str, float]
    raw_fused: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    rule: str = LEGACY_RULE
    agreement: float | None = None


class StreamGate:
    """Softmax gate over streams from a context vector: ``weights = masked_softmax(W @ c + b)``.

    ``W``: ``(S, D)`` float32, ``b``: ``(S,)`` float32, ``streams``: S names in row order. ``D == 0`` (see
    :meth:`uniform`) ignores the context: equal weights over the present streams.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, streams: Iterable[str]) -> None:
        names = [str(s) for s in streams]
        w = np.asarray(W, dtype=np.float32)
        bias = np.asarray(b, dtype=np.float32)
        if w.ndim != 2:
            raise GateError(f"gate W must be 2-D (S, D), got shape {w.shape}")
        if bias.shape != (w.shape[0],):
            raise GateError(f"gate b must have shape ({w.shape[0]},), got {bias.shape}")
        if len(names) != w.shape[0]:
            raise GateError(f"gate has {w.shape[0]} rows but {len(names)} stream names")
        if len(set(names)) != len(names):
            raise GateError(f"gate stream names repeat: {names}")
        if not (np.isfinite(w).all() and np.isfinite(bias).all()):
            raise GateError("gate parameters contain non-finite values")
        self.W = w
        self.b = bias
        self.streams: tuple[str, ...] = tuple(names)
        self._index = {s: i for i, s in enumerate(names)}

    @property
    def context_dim(self) -> int:
        return int(self.W.shape[1])

    @classmethod
    def uniform(cls, streams: Iterable[str] = STREAMS) -> StreamGate:
        """A gate without training: equal weights over the present streams."""
        names = list(streams)
        return cls(np.zeros((len(names), 0), np.float32), np.zeros(len(names), np.float32), names)

    @classmethod
    def load(cls, path: str | Path) -> StreamGate:
        """Load from an ``.npz`` with ``W`` (S, D), ``b`` (S,), ``streams`` (S,) str. Errors name the file."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as data:
                missing = {"W", "b", "streams"} - set(data.files)
                if missing:
                    raise GateError(f"{p}: gate file lacks arrays {sorted(missing)}")
                W, b, streams = data["W"], data["b"], [str(s) for s in data["streams"].tolist()]
        except GateError:
            raise
        except (OSError, ValueError) as exc:
            raise GateError(f"{p}: cannot read gate: {exc}") from exc
        try:
            return cls(W, b, streams)
        except GateError as exc:
            raise GateError(f"{p}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` that :meth:`load` reads."""
        np.savez(Path(path), W=self.W, b=self.b, streams=np.array(self.streams, dtype=str))

    def _known_weights(self, context_vec: np.ndarray | None, known: list[str]) -> dict[str, float]:
        """The softmax over ``known`` (non-empty, all gate rows), summing to 1."""
        if context_vec is None or self.context_dim == 0:
            return {s: 1.0 / len(known) for s in known}
        c = np.asarray(context_vec, dtype=np.float32).ravel()
        if c.shape[0] != self.context_dim:
            raise GateError(f"context vector has {c.shape[0]} values, the gate expects {self.context_dim}")
        if not np.isfinite(c).all():
            _warn_once(("gate-nonfinite",), "non-finite context vector: using equal weights")
            return {s: 1.0 / len(known) for s in known}
        rows = [self._index[s] for s in known]
        logits = self.W[rows].astype(np.float64) @ c.astype(np.float64) + self.b[rows]
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        return {s: float(v) for s, v in zip(known, p, strict=True)}

    def weights(self, context_vec: np.ndarray | None, present: Iterable[str]) -> dict[str, float]:
        """Weights over ``present`` streams, summing to 1.

        ``context_vec``: ``(D,)`` float (pooled global video features); None means equal weights. Present
        streams the gate does not know get weight 0 (warned once); if it knows none, weights are equal.
        """
        present = list(present)
        if not present:
            return {}
        known = [s for s in present if s in self._index]
        for s in present:
            if s not in self._index:
                _warn_once(("gate-unknown", s), "gate has no weight for stream %r; it is weighted out", s)
        if not known:
            return {s: 1.0 / len(present) for s in present}
        w = self._known_weights(context_vec, known)
        return {s: w.get(s, 0.0) for s in present}

    def factors(self, context_vec: np.ndarray | None, present: Iterable[str]) -> dict[str, float]:
        """The gate's factor on each of ``present``: ``S * g_s`` over the ``S`` present streams it knows
        (``g`` their softmax weights), so a uniform gate gives 1 and the factors average 1; 1 for a stream
        it has no row for (a memory stream, :data:`plugins.streams.MEMORY_STREAMS`, or one added after the
        gate was trained), which the gate can then neither favour nor silence."""
        present = list(present)
        known = [s for s in present if s in self._index]
        for s in present:
            if s not in self._index and s not in MEMORY_STREAMS:
                _warn_once(
                    ("gate-neutral", s), "gate has no row for stream %r; it gets a neutral factor 1", s
                )
        g = self._known_weights(context_vec, known) if known else {}
        return {s: len(known) * g[s] if s in g else 1.0 for s in present}


def gate_multiplier(factor: float | np.ndarray, rule: str) -> float | np.ndarray:
    """What a gate factor (:meth:`StreamGate.factors`) multiplies a stream's z-score by under ``rule``.

    Under ``mean`` the factor as it is: the gate shares a weighted average out. Under ``max`` at most 1: a
    factor above 1 (up to the number of gated streams) would lift one stream's normal tail above the
    others', undoing what the reliability weights equalise, and under the max every stream's tail is a
    false-alarm source of its own. The gate can still weigh a stream down for a kind of scene. Measured on
    the seed-1 synthetic set (docs/results.md): the uncapped gate cost the max rule 0.028 micro AUC."""
    if rule == "max":
        return np.minimum(factor, 1.0) if isinstance(factor, np.ndarray) else min(float(factor), 1.0)
    return factor


def _agreement_for(rule: str, agreement: Agreement | None) -> Agreement | None:
    if agreement is not None and rule != "max":
        raise FusionError(f"an agreement term belongs to the max rule, not {rule!r}")
    return agreement


def fuse(
    z: Mapping[str, float],
    weights: Mapping[str, float],
    rule: str = LEGACY_RULE,
    agreement: Agreement | None = None,
) -> FusedScore:
    """Fuse z-scores over the streams present in both maps with a positive weight, by ``rule``.

    ``mean``: the weights are renormalised to sum 1 and the score is ``sum_s w_s z_s``. ``max``: the
    weights are used as they are (multipliers) and the score is ``max_s w_s z_s``, or with ``agreement``
    the larger of that and ``agreement.offset + agreement.slope * (the weighted mean over agreement's
    streams)`` when every one of them has a finite z-score and a positive weight. No usable stream gives
    score 0.0 (the median of normal footage) and empty contributions.
    """
    check_rule(rule)
    agreement = _agreement_for(rule, agreement)
    names = [s for s in z if s in weights and math.isfinite(z[s]) and weights[s] > 0]
    total = sum(weights[s] for s in names)
    if not names or total <= 0 or not math.isfinite(total):
        return FusedScore(score=0.0, contributions={}, raw_fused=0.0, weights={}, rule=rule)
    w = {s: weights[s] / total for s in names} if rule == "mean" else {s: float(weights[s]) for s in names}
    contributions = {s: w[s] * float(z[s]) for s in names}
    values = contributions.values()
    score = float(sum(values)) if rule == "mean" else float(max(values))
    agreed: float | None = None
    if agreement is not None and all(s in names for s in agreement.streams):
        # Over the term's own streams: the line was fitted for their mean.
        mean = fuse({s: z[s] for s in agreement.streams}, weights, "mean").score
        agreed = agreement.offset + agreement.slope * mean
        score = max(score, agreed)
    return FusedScore(
        score=score, contributions=contributions, raw_fused=score, weights=w, rule=rule, agreement=agreed
    )


def fuse_arrays(
    z: Mapping[str, np.ndarray],
    weights: Mapping[str, float | np.ndarray],
    rule: str = LEGACY_RULE,
    agreement: Agreement | None = None,
) -> np.ndarray:
    """:func:`fuse` over many clips at once: ``z`` maps a stream to its z-scores ``(N,)``, ``weights`` a
    stream to a scalar or per-clip ``(N,)`` weight (streams without a weight are left out). Per clip, the
    streams with a finite z-score and a positive weight count; a clip where none does is NaN. Used by
    :func:`fit_calibration` for the threshold and by the offline evaluation, so both fuse as the run does."""
    check_rule(rule)
    term = _agreement_for(rule, agreement)
    if term is not None:
        top = fuse_arrays(z, weights, "max")
        if not all(s in z and s in weights for s in term.streams):
            return top
        held_z = {s: z[s] for s in term.streams}
        held_w = {s: weights[s] for s in term.streams}
        usable = []
        for s in term.streams:
            w = np.asarray(held_w[s], np.float64).ravel()
            usable.append(np.isfinite(np.asarray(held_z[s], np.float64)).ravel() & np.isfinite(w) & (w > 0))
        every = np.broadcast_to(np.logical_and.reduce(usable), top.shape)
        agreed = term.offset + term.slope * fuse_arrays(held_z, held_w, "mean")
        return np.where(every, np.fmax(top, agreed), top)
    names = [s for s in z if s in weights]
    if not names:
        lengths = {np.asarray(v).size for v in z.values()}
        return np.full(max(lengths, default=0), np.nan)
    zs = np.stack([np.asarray(z[s], dtype=np.float64).ravel() for s in names])  # (S, N)
    ws = np.stack([np.broadcast_to(np.asarray(weights[s], dtype=np.float64), zs.shape[1:]) for s in names])
    ok = np.isfinite(zs) & np.isfinite(ws) & (ws > 0)
    any_ok = ok.any(axis=0)
    if rule == "mean":
        wsum = np.where(ok, ws, 0.0).sum(axis=0)
        total = np.where(ok, ws * zs, 0.0).sum(axis=0)
        return np.where(any_ok, total / np.where(any_ok, wsum, 1.0), np.nan)
    best = np.where(ok, ws * zs, -np.inf).max(axis=0)
    return np.where(any_ok, best, np.nan)


class TemporalSmoother:
    """Moving median over the last ``k`` fused scores of one camera (k = 1: no smoothing)."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise FusionError(f"smoothing window must be >= 1, got {k}")
        self.k = k
        self._window: deque[float] = deque(maxlen=k)

    def update(self, value: float) -> float:
        """Add one score; return the median of the window (non-finite values are skipped)."""
        if math.isfinite(value):
            self._window.append(float(value))
        if not self._window:
            return float("nan")
        return float(np.median(np.fromiter(self._window, dtype=np.float64)))

    def reset(self) -> None:
        self._window.clear()


class CameraFusion:
    """Calibration + gate + fusion rule + smoother of one camera.

    ``calibration`` None means uncalibrated: raw scores are used as they are, with a warning once.
    ``gate`` None means equal weights over the present streams. ``rule``: one of :data:`FUSION_RULES`, or
    None / ``"auto"`` for the calibration's own rule (the camera config's ``fusion.rule``).
    """

    def __init__(
        self,
        camera: str,
        calibration: Calibration | None = None,
        gate: StreamGate | None = None,
        smoothing: int = 3,
        rule: str | None = None,
    ) -> None:
        self.camera = camera
        if calibration is None:
            _warn_once(
                ("uncalibrated", camera),
                "camera %s has no calibration: raw scores are used unnormalised; run `zsad calibrate`",
                camera,
            )
            calibration = Calibration.identity_for(camera)
        self.calibration = calibration
        self.rule = check_rule(calibration.rule if rule in (None, "auto") else str(rule))
        if self.rule != calibration.rule and calibration.threshold is not None:
            # The calibration's threshold is a quantile of its own rule's fused score.
            log.info(
                "camera %s: fusion rule %s overrides the calibration's %s; its threshold %.3f was computed "
                "for %s",
                camera,
                self.rule,
                calibration.rule,
                calibration.threshold,
                calibration.rule,
            )
        self.gate = gate if gate is not None else StreamGate.uniform()
        self.smoother = TemporalSmoother(smoothing)
        self._last_t: float | None = None

    def multipliers(self, context_vec: np.ndarray | None, present: Iterable[str]) -> dict[str, float]:
        """Each present stream's reliability weight times its gate factor (:meth:`StreamGate.factors`), the
        latter capped at 1 under the max rule (:func:`gate_multiplier`)."""
        factors = self.gate.factors(context_vec, present)
        return {
            s: self.calibration.weight(s) * float(gate_multiplier(f, self.rule)) for s, f in factors.items()
        }

    def update(self, raw: Mapping[str, float], context_vec: np.ndarray | None, t: float) -> FusedScore:
        """Fuse one clip's raw stream scores at stream time ``t`` seconds.

        ``context_vec``: ``(D,)`` float32 or None. Time going backwards (a file that loops, a reconnect)
        restarts the smoothing window. The returned ``score`` is smoothed; ``raw_fused`` is not.
        """
        if self._last_t is not None and t < self._last_t:
            self.smoother.reset()
        self._last_t = t
        z = calibrate(raw, self.calibration)
        term = self.agreement
        if term is not None:
            for stream in term.streams:
                if not math.isfinite(z.get(stream, math.nan)):
                    _warn_once(
                        ("agreement-missing", self.camera, stream),
                        "camera %s: stream %s of the agreement term is missing from a clip (a camera's first "
                        "clips, a refused model); such clips are fused by the plain max",
                        self.camera,
                        stream,
                    )
        fused = fuse(z, self.multipliers(context_vec, z.keys()), self.rule, term)
        smoothed = self.smoother.update(fused.raw_fused)
        return replace(fused, score=smoothed)

    @property
    def agreement(self) -> Agreement | None:
        """The calibration's agreement term when the camera fuses by the calibration's own (max) rule."""
        return self.calibration.agreement if self.rule == self.calibration.rule else None

    def cell_stats(self) -> dict[str, tuple[float, float]] | None:
        """Each stream's ``(location, scale)``, to z-score its error map cell by cell
        (:func:`plugins.zones.evidence_map`); None for an uncalibrated camera (z is the raw value)."""
        if self.calibration.identity:
            return None
        return {name: (s.location, s.scale) for name, s in self.calibration.streams.items()}

    def trust(self, streams: Iterable[str] = ()) -> list[TrustRow]:
        """:func:`describe_trust` of this camera's calibration."""
        return describe_trust(self.calibration, streams)

    @property
    def default_threshold(self) -> float | None:
        """The calibrated quantile threshold, if the calibration has one."""
        return self.calibration.threshold
