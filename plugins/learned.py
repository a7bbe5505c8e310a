"""Feedback that teaches a camera: learned normal levels per stream and cell, from alerts marked false alarm.

Pure numpy plus small files, shared by both graphs (the levels are applied by
:class:`plugins.zones.CellFilter` inside :class:`plugins.scorer.ClipScorer`).

**An alert's evidence** (:class:`EventEvidence`, saved with the alert as ``<alert_id>.npz``): each map
stream's raw error map at the alert's peak clip (``peak``), the per-cell maximum of each stream over every
clip from the alert's onset to its close (``maxima``), both with masked cells NaN; the fused score's stream
weights at the peak, its fusion rule and the camera's calibration statistics (to rebuild the evidence map of
:func:`plugins.zones.evidence_map`).

**Learning one alert** (:func:`levels_from_evidence`). Its footprint is the set of cells whose evidence in the
``maxima`` maps is at least :func:`plugins.zones.half_level` of that map, grown by :data:`FOOTPRINT_GROW`
cell in every direction (a swaying flag moves a little between occurrences). On the footprint, each
stream's level is its maximum there plus :data:`LEARN_MARGIN` of its magnitude; elsewhere it is ``-inf``
(nothing learned). A camera's learned levels are the per-cell maximum over all the alerts it learned from.
That maximum does not depend on order, so forgetting one alert is recomputing the maximum over the others.

**Scoring.** A stream's cell counts only where its value is above the learned level. The same magnitude at
the same place is therefore ignored, while something stronger there, or anything anywhere else, scores as
before. Nothing else of the camera changes: its calibration, thresholds and the other cells.

**The store** (:class:`LearnedStore`), a folder beside the camera's calibration file::

    index.json             {"format": 1, "camera": ..., "current": N, "versions": [...]}
    v0001.npz, v0002.npz   the complete levels of each version (one array per stream)
    events/<alert_id>.npz  the levels each learned alert contributes (so forgetting never needs the alert's
                           media, which retention may have deleted)

Every change (learn or forget) writes a new numbered version file, then the index, each atomically
(temporary file, fsync, rename). Version 0 is "nothing learned". Forgetting the alert learned last restores
exactly the version before it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.datafile import write_atomic
from plugins.fusion import FUSION_RULES
from plugins.zones import dilate, evidence_map, half_level

__all__ = [
    "FOOTPRINT_GROW",
    "LEARN_MARGIN",
    "EventEvidence",
    "LearnedError",
    "LearnedState",
    "LearnedStore",
    "combine_levels",
    "footprint",
    "levels_from_evidence",
]

log = logging.getLogger(__name__)

#: A learned level is the event's value plus this fraction of its magnitude.
LEARN_MARGIN = 0.25
#: Cells the footprint grows by in every direction.
FOOTPRINT_GROW = 1
STORE_FORMAT = 1
EVIDENCE_FORMAT = 1
_ALERT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}\Z")  # \Z: $ takes a final newline (a file name)


class LearnedError(ValueError):
    """Evidence or a learned store that cannot be read, written or used; the message names the file."""


def _iso(epoch_s: float) -> str:
    dt = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    payload: dict[str, Any] = dict(arrays)  # Any: savez's own keywords are typed, the arrays' names are not
    write_atomic(path, lambda fh: np.savez(fh, **payload))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise LearnedError(f"{path}: cannot read: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# An alert's evidence
# --------------------------------------------------------------------------------------------------


@dataclass
class EventEvidence:
    """What one alert saw, per map stream, as ``(h, w)`` float32 maps (see the module)."""

    camera: str
    alert_id: str
    peak_time: float
    peak: dict[str, np.ndarray]
    maxima: dict[str, np.ndarray]
    weights: dict[str, float] = field(default_factory=dict)
    stats: dict[str, tuple[float, float]] | None = None
    clips: int = 0
    #: How ``weights`` combine the streams (``plugins.fusion.FUSION_RULES``); files without it are "mean".
    rule: str = "mean"

    def save(self, path: str | Path) -> None:
        """Write ``path`` (``.npz``) atomically."""
        meta = {
            "format": EVIDENCE_FORMAT,
            "camera": self.camera,
            "alert_id": self.alert_id,
            "peak_time": self.peak_time,
            "weights": self.weights,
            "stats": {k: list(v) for k, v in self.stats.items()} if self.stats is not None else None,
            "clips": self.clips,
            "rule": self.rule,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for name, m in self.peak.items():
            arrays[f"peak.{name}"] = np.asarray(m, dtype=np.float32)
        for name, m in self.maxima.items():
            arrays[f"max.{name}"] = np.asarray(m, dtype=np.float32)
        _save_npz(Path(path), arrays)

    @classmethod
    def load(cls, path: str | Path) -> EventEvidence:
        """Read what :meth:`save` wrote. Raises :class:`LearnedError` naming the file."""
        p = Path(path)
        arrays = _load_npz(p)
        try:
            meta = json.loads(str(arrays.pop("meta")))
            if meta.get("format") != EVIDENCE_FORMAT:
                raise LearnedError(f"{p}: unsupported evidence format {meta.get('format')!r}")
            stats_raw = meta.get("stats")
            stats = (
                {str(k): (float(v[0]), float(v[1])) for k, v in stats_raw.items()}
                if stats_raw is not None
                else None
            )
            rule = meta.get("rule", "mean")
            if rule not in FUSION_RULES:
                raise LearnedError(f"{p}: unknown fusion rule {rule!r} (expected one of {FUSION_RULES})")
            peak = {k[5:]: v for k, v in arrays.items() if k.startswith("peak.")}
            maxima = {k[4:]: v for k, v in arrays.items() if k.startswith("max.")}
            return cls(
                camera=str(meta["camera"]),
                alert_id=str(meta["alert_id"]),
                peak_time=float(meta["peak_time"]),
                peak=peak,
                maxima=maxima,
                weights={str(k): float(v) for k, v in meta.get("weights", {}).items()},
                stats=stats,
                clips=int(meta.get("clips", 0)),
                rule=str(rule),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LearnedError(f"{p}: malformed evidence: {exc}") from exc


def footprint(evidence: EventEvidence, grow: int = FOOTPRINT_GROW) -> np.ndarray | None:
    """The cells an alert covered: its ``maxima`` evidence (:func:`plugins.zones.evidence_map`, the part
    above normal) at or above the half level, grown by ``grow`` cells, never a cell that was masked. None
    when no cell was above normal."""
    e = evidence_map(evidence.maxima, evidence.weights, evidence.stats, rule=evidence.rule)
    if e is None:
        return None
    finite = np.isfinite(e)
    if not finite.any() or not np.nanmax(e) > 0:
        return None  # nowhere above normal: nothing to learn
    cells = finite & (e >= half_level(e)) & (e > 0)
    return dilate(cells, grow) & finite


def levels_from_evidence(
    evidence: EventEvidence, margin: float = LEARN_MARGIN, grow: int = FOOTPRINT_GROW
) -> dict[str, np.ndarray]:
    """The levels one alert contributes: stream -> ``(h, w)`` float32, ``-inf`` off its footprint. Raises
    :class:`LearnedError` when the evidence holds no usable map."""
    if not (margin >= 0 and math.isfinite(margin)):
        raise LearnedError(f"margin must be a finite number >= 0, got {margin}")
    cells = footprint(evidence, grow)
    if cells is None:
        raise LearnedError(f"alert {evidence.alert_id}: its evidence has no usable map")
    out: dict[str, np.ndarray] = {}
    for stream, m in evidence.maxima.items():
        values = np.asarray(m, dtype=np.float32)
        if values.shape != cells.shape:
            continue
        level = values + np.float32(margin) * np.abs(values)
        keep = cells & np.isfinite(level)
        out[stream] = np.where(keep, level, np.float32(-np.inf)).astype(np.float32)
    if not out:
        raise LearnedError(f"alert {evidence.alert_id}: its evidence has no usable map")
    return out


def combine_levels(contributions: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The per-cell maximum of every contribution, per stream; None when there is none. Contributions of a
    different grid than the newest one are left out (the engines changed)."""
    if not contributions:
        return None
    out: dict[str, np.ndarray] = {}
    # Newest first: the newest contribution fixes each stream's grid, so after an engine change the new
    # labels count and the old grid's are the ones left out.
    for contribution in reversed(contributions):
        for stream, level in contribution.items():
            current = out.get(stream)
            if current is None:
                out[stream] = np.asarray(level, dtype=np.float32).copy()
            elif current.shape == level.shape:
                np.maximum(current, level, out=current)
    return out


# --------------------------------------------------------------------------------------------------
# The versioned store
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearnedState:
    """The store's current version: its levels (None at version 0), the alerts they come from (oldest
    first) and when it was written."""

    version: int
    levels: dict[str, np.ndarray] | None
    alerts: tuple[str, ...]
    updated: str | None

    def summary(self) -> dict[str, Any]:
        return {
            "labels": len(self.alerts),
            "version": self.version,
            "updated": self.updated,
            "alerts": list(self.alerts),
        }


class LearnedStore:
    """A camera's learned levels, every version on disk (see the module). Thread-safe within a process."""

    def __init__(self, directory: str | Path, camera: str) -> None:
        self.directory = Path(directory)
        self.camera = camera
        self._lock = threading.Lock()

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    def _event_path(self, alert_id: str) -> Path:
        if not _ALERT_ID.match(alert_id):
            raise LearnedError(f"alert id {alert_id!r} is not a plain id")
        return self.directory / "events" / f"{alert_id}.npz"

    def _read_index(self) -> dict[str, Any]:
        path = self.index_path
        if not path.is_file():
            return {"format": STORE_FORMAT, "camera": self.camera, "current": 0, "versions": []}
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LearnedError(f"{path}: cannot read: {exc}") from exc
        if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
            raise LearnedError(f"{path}: not a learned-levels index of format {STORE_FORMAT}")
        versions = index.get("versions")
        current = index.get("current")
        if not isinstance(versions, list) or not isinstance(current, int) or current < 0:
            raise LearnedError(f"{path}: 'versions' must be a list and 'current' an integer >= 0")
        for entry in versions:
            if not isinstance(entry, dict) or not isinstance(entry.get("version"), int):
                raise LearnedError(f"{path}: malformed version entry {entry!r}")
            if not isinstance(entry.get("alerts"), list):
                raise LearnedError(f"{path}: version {entry.get('version')} has no 'alerts' list")
        if current and not any(v["version"] == current for v in versions):
            raise LearnedError(f"{path}: current version {current} is not listed")
        if index.get("camera") != self.camera:
            raise LearnedError(
                f"{path}: holds camera {index.get('camera')!r}'s learned levels, not {self.camera!r}'s "
                "(cameras that share a calibration file share its folder: give each its own)"
            )
        return index

    def _entry(self, index: dict[str, Any]) -> dict[str, Any] | None:
        current = index["current"]
        return next((v for v in index["versions"] if v["version"] == current), None)

    def state(self) -> LearnedState:
        """The current version with its levels. Raises :class:`LearnedError` on an unreadable store."""
        with self._lock:
            return self._state(self._read_index())

    def _state(self, index: dict[str, Any]) -> LearnedState:
        entry = self._entry(index)
        if entry is None:
            return LearnedState(0, None, (), None)
        path = self.directory / str(entry["file"])
        arrays = _load_npz(path)
        levels = {k: v.astype(np.float32) for k, v in arrays.items()}
        return LearnedState(
            int(entry["version"]),
            levels or None,
            tuple(str(a) for a in entry["alerts"]),
            str(entry.get("at")) if entry.get("at") else None,
        )

    def history(self) -> list[dict[str, Any]]:
        """Every version's index entry, oldest first (version, file, at, action, alert_id, alerts)."""
        with self._lock:
            return [dict(v) for v in self._read_index()["versions"]]

    def learn(self, alert_id: str, contribution: Mapping[str, np.ndarray]) -> LearnedState:
        """Add (or replace) one alert's contribution; writes a new version. Returns the new state."""
        with self._lock:
            index = self._read_index()
            entry = self._entry(index)
            alerts = [a for a in (entry["alerts"] if entry else []) if a != alert_id]
            _save_npz(self._event_path(alert_id), dict(contribution))
            alerts.append(alert_id)
            return self._write_version(index, alerts, "learn", alert_id)

    def forget(self, alert_id: str) -> LearnedState | None:
        """Remove one alert's contribution (the others stay); writes a new version. None when the alert was
        not learned (nothing changes)."""
        with self._lock:
            index = self._read_index()
            entry = self._entry(index)
            if entry is None or alert_id not in entry["alerts"]:
                return None
            alerts = [a for a in entry["alerts"] if a != alert_id]
            return self._write_version(index, alerts, "forget", alert_id)

    def _write_version(
        self, index: dict[str, Any], alerts: list[str], action: str, alert_id: str
    ) -> LearnedState:
        contributions = [_load_npz(self._event_path(a)) for a in alerts]
        levels = combine_levels(contributions)
        version = max((int(v["version"]) for v in index["versions"]), default=0) + 1
        name = f"v{version:04d}.npz"
        _save_npz(self.directory / name, levels or {})
        at = _iso(time.time())
        entry = {"version": version, "file": name, "at": at, "action": action, "alert_id": alert_id}
        index["versions"].append({**entry, "alerts": alerts})
        index["current"] = version
        index["camera"] = self.camera
        body = json.dumps(index, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        write_atomic(self.index_path, lambda fh: fh.write(body))
        log.info(
            "camera %s: learned levels version %d (%s alert %s; %d alert(s) learned)",
            self.camera,
            version,
            action,
            alert_id,
            len(alerts),
        )
        return LearnedState(version, levels, tuple(alerts), at)
