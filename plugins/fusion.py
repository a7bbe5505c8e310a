"""Score fusion: per-camera calibration, the runtime stream gate, weighted fusion and temporal smoothing.

Pure numpy, shared by the CPU graph and the DeepStream probe; it never imports ``pipeline``.

Each clip yields raw scores per *stream* (:mod:`plugins.streams`). A stream may be absent (no CLIP
weights: no ``semantic``); absent or non-finite streams are weighted out. Raw scores have unrelated scales,
so each is turned into a robust z-score with statistics fitted per camera on normal footage
(:class:`Calibration`). The gate (:class:`StreamGate`, the numpy twin of the trained
``engines.semantic.StreamGateHead``, read from ``stream_gate.npz``) weighs the z-scores from a context
vector; :func:`fuse` sums ``w_s * z_s``; :class:`TemporalSmoother` takes a moving median over clips.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.datafile import read_json
from plugins.streams import STREAMS

__all__ = [
    "Calibration",
    "CalibrationError",
    "CameraFusion",
    "FusedScore",
    "FusionError",
    "GateError",
    "StreamGate",
    "StreamStats",
    "TemporalSmoother",
    "calibrate",
    "fit_calibration",
    "fuse",
    "load_calibration",
    "save_calibration",
]

log = logging.getLogger(__name__)

#: 1.4826 * MAD estimates the standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
#: Absolute floor of a stream's scale: a constant stream on normal footage must not give infinite z-scores.
SCALE_EPS = 1e-6
#: Relative floor of a stream's scale, as a fraction of |median|.
SCALE_REL_FLOOR = 1e-3
CALIBRATION_VERSION = 1

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


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStats:
    """Robust statistics of one stream on normal footage: z = (x - location) / scale."""

    location: float
    scale: float
    n: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.location) and math.isfinite(self.scale)) or self.scale <= 0:
            raise CalibrationError(
                f"stream statistics need a finite location and a finite scale > 0, "
                f"got location={self.location} scale={self.scale}"
            )
        if self.n < 0:
            raise CalibrationError(f"sample count must be >= 0, got {self.n}")


@dataclass(frozen=True)
class Calibration:
    """Per-camera calibration of the raw streams.

    ``streams`` maps a stream name to its statistics; ``identity`` passes every raw score through unchanged
    (an uncalibrated camera). ``threshold`` is the ``threshold_quantile`` quantile of the fused (uniformly
    weighted, unsmoothed) calibrated score on the normal footage: a data-driven default for ``on_threshold``.
    """

    streams: Mapping[str, StreamStats] = field(default_factory=dict)
    n_samples: int = 0
    threshold_quantile: float = 0.99
    threshold: float | None = None
    identity: bool = False
    camera: str | None = None

    @classmethod
    def identity_for(cls, camera: str | None = None) -> Calibration:
        """The calibration of an uncalibrated camera: raw scores are used as they are."""
        return cls(identity=True, camera=camera)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "camera": self.camera,
            "identity": self.identity,
            "n_samples": self.n_samples,
            "threshold_quantile": self.threshold_quantile,
            "threshold": self.threshold,
            "streams": {
                name: {"location": s.location, "scale": s.scale, "n": s.n} for name, s in self.streams.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Calibration:
        """Build from :meth:`to_dict` output. Raises :class:`CalibrationError` naming ``source``."""

        def bad(msg: str) -> CalibrationError:
            return CalibrationError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise bad(f"top level must be an object, got {type(data).__name__}")
        if data.get("version") != CALIBRATION_VERSION:
            raise bad(f"unsupported calibration version {data.get('version')!r} (expected 1)")
        streams_raw = data.get("streams")
        if not isinstance(streams_raw, dict):
            raise bad("'streams' must be an object of stream name -> {location, scale, n}")
        streams: dict[str, StreamStats] = {}
        for name, s in streams_raw.items():
            if not isinstance(s, dict):
                raise bad(f"streams.{name} must be an object")
            try:
                streams[str(name)] = StreamStats(
                    location=_number(s.get("location")), scale=_number(s.get("scale")), n=int(s.get("n", 0))
                )
            except (TypeError, ValueError) as exc:
                raise bad(f"streams.{name}: {exc}") from exc
        threshold = data.get("threshold")
        quantile = data.get("threshold_quantile", 0.99)
        try:
            q = _number(quantile)
            thr = None if threshold is None else _number(threshold)
            n_samples = int(data.get("n_samples", 0))
        except (TypeError, ValueError) as exc:
            raise bad(str(exc)) from exc
        if not 0.0 < q <= 1.0:
            raise bad(f"threshold_quantile must be in (0, 1], got {q}")
        camera = data.get("camera")
        if camera is not None and not isinstance(camera, str):
            raise bad("'camera' must be a string or null")
        identity = data.get("identity", False)
        if not isinstance(identity, bool):
            raise bad("'identity' must be a boolean")
        return cls(
            streams=streams,
            n_samples=n_samples,
            threshold_quantile=q,
            threshold=thr,
            identity=identity,
            camera=camera,
        )


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {v!r}")
    return f


def fit_stream(values: np.ndarray) -> StreamStats:
    """Median / 1.4826*MAD of one stream's raw scores ``(N,)``; non-finite values are ignored."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise CalibrationError("no finite samples to fit")
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    scale = max(MAD_TO_SIGMA * mad, SCALE_EPS, SCALE_REL_FLOOR * abs(med))
    return StreamStats(location=med, scale=scale, n=int(x.size))


def fit_calibration(
    samples: Mapping[str, np.ndarray],
    threshold_quantile: float = 0.99,
    camera: str | None = None,
) -> Calibration:
    """Fit a camera's calibration on raw scores of normal footage.

    ``samples`` maps a stream name to its raw scores ``(N,)`` float, one per clip. When every stream has the
    same ``N`` (aligned clips), the default threshold is the ``threshold_quantile`` quantile of the uniformly
    fused z-score over those clips; otherwise ``threshold`` is None.
    """
    if not samples:
        raise CalibrationError("no streams to calibrate")
    if not 0.0 < threshold_quantile <= 1.0:
        raise CalibrationError(f"threshold_quantile must be in (0, 1], got {threshold_quantile}")
    stats: dict[str, StreamStats] = {}
    for name, values in samples.items():
        try:
            stats[name] = fit_stream(values)
        except CalibrationError as exc:
            raise CalibrationError(f"stream {name!r}: {exc}") from exc
    arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in samples.items()}
    lengths = {a.size for a in arrays.values()}
    threshold: float | None = None
    n = max(lengths)
    if len(lengths) == 1:
        z = np.stack([(arrays[k] - stats[k].location) / stats[k].scale for k in arrays])  # (S, N)
        finite = np.isfinite(z)
        # Uniform weights over the streams present (finite) in each clip.
        counts = finite.sum(axis=0)
        fused = np.where(finite, z, 0.0).sum(axis=0) / np.maximum(counts, 1)
        fused = fused[counts > 0]
        if fused.size:
            threshold = float(np.quantile(fused, threshold_quantile))
    return Calibration(
        streams=stats, n_samples=n, threshold_quantile=threshold_quantile, threshold=threshold, camera=camera
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
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(cal.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file. Raises :class:`CalibrationError` naming the file on any problem."""
    p = Path(path)
    data = read_json(p, CalibrationError, label=f"calibration file {p}")
    return Calibration.from_dict(data, source=str(p))


# --------------------------------------------------------------------------------------------------
# Gate and fusion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusedScore:
    """One clip's fused score.

    ``score``: the value alerting uses (smoothed in :meth:`CameraFusion.update`); ``raw_fused``: this clip's
    unsmoothed ``sum_s w_s * z_s``; ``contributions``: ``w_s * z_s`` per stream; ``weights``: ``w_s``.
    """

    score: float
    contributions: dict[str, float]
    raw_fused: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)


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
        if context_vec is None or self.context_dim == 0:
            w = {s: 1.0 / len(known) for s in known}
        else:
            c = np.asarray(context_vec, dtype=np.float32).ravel()
            if c.shape[0] != self.context_dim:
                raise GateError(
                    f"context vector has {c.shape[0]} values, the gate expects {self.context_dim}"
                )
            if not np.isfinite(c).all():
                _warn_once(("gate-nonfinite",), "non-finite context vector: using equal weights")
                w = {s: 1.0 / len(known) for s in known}
            else:
                rows = [self._index[s] for s in known]
                logits = self.W[rows].astype(np.float64) @ c.astype(np.float64) + self.b[rows]
                e = np.exp(logits - logits.max())
                p = e / e.sum()
                w = {s: float(v) for s, v in zip(known, p, strict=True)}
        return {s: w.get(s, 0.0) for s in present}


def fuse(z: Mapping[str, float], weights: Mapping[str, float]) -> FusedScore:
    """Weighted sum of z-scores over streams present in both maps, weights renormalised to sum 1.

    No usable stream gives score 0.0 (the median of normal footage) and empty contributions.
    """
    names = [s for s in z if s in weights and math.isfinite(z[s]) and weights[s] > 0]
    total = sum(weights[s] for s in names)
    if not names or total <= 0:
        return FusedScore(score=0.0, contributions={}, raw_fused=0.0, weights={})
    w = {s: weights[s] / total for s in names}
    contributions = {s: w[s] * float(z[s]) for s in names}
    score = float(sum(contributions.values()))
    return FusedScore(score=score, contributions=contributions, raw_fused=score, weights=w)


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
    """Calibration + gate + smoother of one camera.

    ``calibration`` None means uncalibrated: raw scores are used as they are, with a warning once.
    ``gate`` None means equal weights over the present streams.
    """

    def __init__(
        self,
        camera: str,
        calibration: Calibration | None = None,
        gate: StreamGate | None = None,
        smoothing: int = 3,
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
        self.gate = gate if gate is not None else StreamGate.uniform()
        self.smoother = TemporalSmoother(smoothing)
        self._last_t: float | None = None

    def update(self, raw: Mapping[str, float], context_vec: np.ndarray | None, t: float) -> FusedScore:
        """Fuse one clip's raw stream scores at stream time ``t`` seconds.

        ``context_vec``: ``(D,)`` float32 or None. Time going backwards (a file that loops, a reconnect)
        restarts the smoothing window. The returned ``score`` is smoothed; ``raw_fused`` is not.
        """
        if self._last_t is not None and t < self._last_t:
            self.smoother.reset()
        self._last_t = t
        z = calibrate(raw, self.calibration)
        weights = self.gate.weights(context_vec, z.keys())
        fused = fuse(z, weights)
        smoothed = self.smoother.update(fused.raw_fused)
        return FusedScore(
            score=smoothed,
            contributions=fused.contributions,
            raw_fused=fused.raw_fused,
            weights=fused.weights,
        )

    def cell_stats(self) -> dict[str, tuple[float, float]] | None:
        """Each stream's ``(location, scale)``, to z-score its error map cell by cell
        (:func:`plugins.zones.evidence_map`); None for an uncalibrated camera (z is the raw value)."""
        if self.calibration.identity:
            return None
        return {name: (s.location, s.scale) for name, s in self.calibration.streams.items()}

    @property
    def default_threshold(self) -> float | None:
        """The calibrated quantile threshold, if the calibration has one."""
        return self.calibration.threshold
