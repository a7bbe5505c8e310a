"""The alert state machine of one camera: hysteresis, minimum duration, cooldown and peak tracking.

Pure: time is passed in explicitly (stream seconds, float, non-decreasing), nothing here reads a clock or
does I/O. It never imports ``pipeline``. A camera's config ``AlertPolicy`` becomes :class:`AlertParams`
through :func:`resolve_policy` (``on_threshold: calibrated`` -> its calibration's number) and
:func:`alert_params`, here so that the run and ``zsad eval``'s alert replay resolve it the same way.

States::

    idle --score>=on--> pending --held min_duration_s--> open --score<off--> cooldown --cooldown_s--> idle
    pending --score<on--> idle

* An alert opens once the score has stayed at or above ``on_threshold`` for ``min_duration_s`` (measured
  from the first sample at or above it); with ``min_duration_s == 0`` the first such sample opens it.
* An open alert closes at the first sample strictly below ``off_threshold`` (``off <= on``: hysteresis).
* For ``cooldown_s`` after a close no alert opens; the minimum duration is counted from the end of it.
* Non-finite scores carry no information: they are ignored (no state change).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from core.config import CALIBRATED_THRESHOLD, FALLBACK_ON_THRESHOLD, AlertPolicy
from plugins.fusion import Calibration
from plugins.zones import PeakLocation

__all__ = [
    "ActiveAlert",
    "AlertMachine",
    "AlertParams",
    "AlertParamsError",
    "AlertPolicyError",
    "AlertTimeError",
    "AlertTransition",
    "Peak",
    "alert_params",
    "resolve_policy",
    "threshold_mismatches",
]

log = logging.getLogger(__name__)

MachineState = Literal["idle", "pending", "open", "cooldown"]


class AlertParamsError(ValueError):
    """Alert parameters that make no sense (off above on, negative durations, non-finite values)."""


class AlertTimeError(ValueError):
    """Time passed to the machine went backwards."""


@dataclass(frozen=True)
class AlertParams:
    """Thresholds apply to the fused, calibrated, smoothed score; durations are in seconds."""

    on_threshold: float
    off_threshold: float
    min_duration_s: float = 0.0
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        values = (self.on_threshold, self.off_threshold, self.min_duration_s, self.cooldown_s)
        if not all(math.isfinite(v) for v in values):
            raise AlertParamsError(f"alert parameters must be finite, got {self}")
        if self.off_threshold > self.on_threshold:
            raise AlertParamsError(
                f"off_threshold {self.off_threshold} must not exceed on_threshold {self.on_threshold}"
            )
        if self.min_duration_s < 0 or self.cooldown_s < 0:
            raise AlertParamsError(
                f"min_duration_s and cooldown_s must be >= 0, got {self.min_duration_s}, {self.cooldown_s}"
            )


@dataclass(frozen=True)
class Peak:
    """The highest-scoring sample of an alert. ``frame_ref`` is whatever the caller passed (opaque);
    ``location`` where in the view that sample's evidence peaked (None when unknown)."""

    time: float
    score: float
    contributions: dict[str, float]
    prompt: str | None = None
    frame_ref: Any = None
    weights: dict[str, float] = field(default_factory=dict)
    location: PeakLocation | None = None
    #: The fusion's agreement term at that sample (``plugins.fusion.FusedScore.agreement``), None without one.
    agreement: float | None = None


@dataclass(frozen=True)
class ActiveAlert:
    """An alert as of a transition. ``start``: first sample at/above ``on_threshold`` of the run that
    opened it; ``opened_at``: when it opened (``start + min_duration_s`` or later); ``end``: set when closed.
    ``seq`` counts this machine's alerts from ``first_seq``."""

    alert_id: str
    seq: int
    start: float
    opened_at: float
    peak: Peak
    end: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class AlertTransition:
    """``kind`` "opened" or "closed" at stream time ``t``; ``alert`` is the alert's state at that moment."""

    kind: Literal["opened", "closed"]
    t: float
    alert: ActiveAlert


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class _Candidate:
    since: float
    peak: Peak


@dataclass
class AlertMachine:
    """Per-camera alert state machine. Call :meth:`update` once per fused score, in time order."""

    params: AlertParams
    first_seq: int = 1
    id_factory: Callable[[], str] = _new_id
    _next_seq: int = field(init=False)
    _last_t: float | None = field(init=False, default=None)
    _candidate: _Candidate | None = field(init=False, default=None)
    _active: ActiveAlert | None = field(init=False, default=None)
    _cooldown_until: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._next_seq = self.first_seq

    @property
    def state(self) -> MachineState:
        if self._active is not None:
            return "open"
        if self._candidate is not None:
            return "pending"
        if (
            self._cooldown_until is not None
            and self._last_t is not None
            and self._last_t < self._cooldown_until
        ):
            return "cooldown"
        return "idle"

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next alert will get (to continue numbering in a new machine)."""
        return self._next_seq

    @property
    def is_open(self) -> bool:
        return self._active is not None

    @property
    def active(self) -> ActiveAlert | None:
        """The open alert with its peak so far, or None."""
        return self._active

    @property
    def current_peak(self) -> Peak | None:
        """The peak so far of the open alert, or of the run above ``on_threshold`` that may open one."""
        if self._active is not None:
            return self._active.peak
        return self._candidate.peak if self._candidate is not None else None

    def _check_time(self, t: float) -> None:
        if not math.isfinite(t):
            raise AlertTimeError(f"time must be finite, got {t}")
        if self._last_t is not None and t < self._last_t:
            raise AlertTimeError(f"time went backwards: {t} after {self._last_t}")
        self._last_t = t

    def update(
        self,
        t: float,
        score: float,
        contributions: Mapping[str, float] | None = None,
        prompt: str | None = None,
        frame_ref: Any = None,
        weights: Mapping[str, float] | None = None,
        location: PeakLocation | None = None,
        agreement: float | None = None,
    ) -> list[AlertTransition]:
        """Feed the score at stream time ``t`` seconds; return the transitions it caused (0 or 1).

        ``prompt`` is the best-matching anomalous prompt for this sample, ``frame_ref`` an opaque reference
        to its frame, ``weights`` the gate weights behind ``contributions``, ``location`` where its evidence
        peaks in the view, ``agreement`` the fusion's agreement term; all are kept with the peak.
        Raises :class:`AlertTimeError` if ``t`` goes backwards.
        """
        self._check_time(t)
        if not math.isfinite(score):
            return []
        sample = Peak(
            time=t,
            score=float(score),
            contributions=dict(contributions or {}),
            prompt=prompt,
            frame_ref=frame_ref,
            weights=dict(weights or {}),
            location=location,
            agreement=agreement,
        )
        p = self.params
        if self._active is not None:
            if score < p.off_threshold:
                return [self._close(t, "threshold")]
            if score > self._active.peak.score:
                self._active = replace(self._active, peak=sample)
            return []
        if self._cooldown_until is not None:
            if t < self._cooldown_until:
                return []
            self._cooldown_until = None
        if score < p.on_threshold:
            self._candidate = None
            return []
        if self._candidate is None:
            self._candidate = _Candidate(since=t, peak=sample)
        elif score > self._candidate.peak.score:
            self._candidate.peak = sample
        if t - self._candidate.since >= p.min_duration_s:
            return [self._open(t)]
        return []

    def _open(self, t: float) -> AlertTransition:
        cand = self._candidate
        if cand is None:  # pragma: no cover - guarded by update()
            raise RuntimeError("no candidate to open")
        self._active = ActiveAlert(
            alert_id=self.id_factory(), seq=self._next_seq, start=cand.since, opened_at=t, peak=cand.peak
        )
        self._next_seq += 1
        self._candidate = None
        return AlertTransition("opened", t, self._active)

    def _close(self, t: float, reason: str) -> AlertTransition:
        active = self._active
        if active is None:  # pragma: no cover - guarded by callers
            raise RuntimeError("no alert to close")
        closed = replace(active, end=max(t, active.start), reason=reason)
        self._active = None
        self._cooldown_until = t + self.params.cooldown_s if self.params.cooldown_s > 0 else None
        return AlertTransition("closed", t, closed)

    def force_close(self, t: float, reason: str = "shutdown") -> list[AlertTransition]:
        """Close the open alert now (shutdown, stream end); return its "closed" transition, or [] if none.

        A pending run that had not yet opened is dropped. ``t`` earlier than the last update is clamped.
        """
        if self._last_t is not None and t < self._last_t:
            t = self._last_t
        self._last_t = t
        self._candidate = None
        if self._active is None:
            return []
        return [self._close(t, reason)]


class AlertPolicyError(ValueError):
    """An alert policy used before its thresholds were resolved (:func:`resolve_policy`): a defect."""


def resolve_policy(
    policy: AlertPolicy, calibration: Calibration | None, camera: str, rule: str | None = None
) -> AlertPolicy:
    """``policy`` with numeric thresholds: ``on_threshold: calibrated`` becomes the camera's calibration
    threshold (``off_threshold`` at most that), or :data:`core.config.FALLBACK_ON_THRESHOLD` with a warning
    when the camera has no calibration or its calibration no threshold. A number is kept as it is.
    ``rule``: the fusion rule the camera runs (None: its calibration's); another one than the threshold was
    computed for is warned about."""
    if policy.on_threshold != CALIBRATED_THRESHOLD:
        return policy
    if (
        calibration is None
        or calibration.identity
        or calibration.threshold is None
        or not math.isfinite(calibration.threshold)
    ):
        log.warning(
            "camera %s: alerts.on_threshold is 'calibrated' but the camera has no calibration threshold "
            "(uncalibrated, or footage too short to fuse): it opens alerts at %g until it is calibrated",
            camera,
            FALLBACK_ON_THRESHOLD,
        )
        return _with_threshold(policy, FALLBACK_ON_THRESHOLD)
    threshold = calibration.threshold
    if threshold <= 0.0:
        # Normal footage that never moved fuses to 0: an alert would open at once and never close.
        log.warning(
            "camera %s: its calibration threshold %g is not above 0 (no stream varied on its calibration "
            "footage): it opens alerts at %g; calibrate it again from footage in which the scene moves",
            camera,
            threshold,
            FALLBACK_ON_THRESHOLD,
        )
        return _with_threshold(policy, FALLBACK_ON_THRESHOLD)
    for problem in threshold_mismatches(policy, calibration, rule):
        log.warning("camera %s: %s", camera, problem)
    log.info(
        "camera %s: alerts open at its calibration threshold %.3f (the %g quantile of its normal score)",
        camera,
        threshold,
        calibration.threshold_quantile,
    )
    return _with_threshold(policy, threshold)


def threshold_mismatches(policy: AlertPolicy, calibration: Calibration, rule: str | None = None) -> list[str]:
    """Why a calibration's threshold does not stand for the false-alarm rate it was fitted for, on a camera
    that alerts by ``policy`` and fuses by ``rule`` (None or ``auto``: the calibration's): one sentence per
    mismatch, empty when it does. The run logs them (:func:`resolve_policy`), ``zsad validate`` shows them."""
    if calibration.identity or calibration.threshold is None:
        return []
    out = []
    threshold = calibration.threshold
    if rule not in (None, "auto") and rule != calibration.rule:
        out.append(
            f"its calibration threshold {threshold:.3f} was computed for the fusion rule {calibration.rule}, "
            f"the camera fuses by {rule}: set a number for alerts.on_threshold, or the rule back to auto"
        )
    if calibration.threshold_smoothing != policy.smoothing:
        # The threshold is a quantile of the normal score smoothed as the calibration says; another window
        # crosses it more often (a shorter one) or less (a longer one).
        out.append(
            f"its calibration threshold {threshold:.3f} was computed for alerts.smoothing "
            f"{calibration.threshold_smoothing}, the camera smooths {policy.smoothing}: recalibrate for the "
            "false-alarm rate the threshold stands for"
        )
    return out


def _with_threshold(policy: AlertPolicy, threshold: float) -> AlertPolicy:
    return policy.model_copy(
        update={"on_threshold": threshold, "off_threshold": min(policy.off_threshold, threshold)}
    )


def alert_params(policy: AlertPolicy) -> AlertParams:
    """The alert machine's parameters from a camera's resolved ``AlertPolicy`` (:func:`resolve_policy`)."""
    if not isinstance(policy.on_threshold, float):
        raise AlertPolicyError(f"on_threshold {policy.on_threshold!r} was not resolved to a number")
    return AlertParams(
        on_threshold=policy.on_threshold,
        off_threshold=policy.off_threshold,
        min_duration_s=policy.min_duration_s,
        cooldown_s=policy.cooldown_s,
    )
