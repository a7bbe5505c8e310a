"""The run-state store: what the review page shows about a running ``zsad run``.

:class:`RunState` keeps, per camera, its connection state, its input frame rate, and a bounded history of
fused clip scores with per-stream contributions; across cameras, the alert records (open, then closed, keyed
by ``alert_id``) and the operator's review labels. It is written from GStreamer and scheduler threads and read
by the web server's threads, so every method takes one lock and returns copies (plain JSON-ready dicts).

Review labels (``ack`` / ``false_alarm`` plus a note) persist to ``OUTPUT/review_labels.json``, written
atomically (temporary file, fsync, rename), so they survive a restart. Label listeners
(:meth:`RunState.add_label_listener`) hear every change; the run uses that to teach a camera from its false
alarms (``pipeline.outputs.hub``).
:meth:`RunState.load_existing` reads ``OUTPUT/alerts.jsonl`` (the JSON Lines sink) so a restarted run shows
earlier alerts; malformed lines are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.outputs.alert_schema import fromisoformat_text

__all__ = [
    "CAMERA_STATES",
    "LABELS",
    "LabelError",
    "LabelListener",
    "RunState",
    "StateError",
    "UnknownAlertError",
    "parse_time",
]

log = logging.getLogger(__name__)

CAMERA_STATES = ("starting", "live", "reconnecting", "eos", "failed", "stopped")
LABELS = ("ack", "false_alarm")
LABELS_FILE = "review_labels.json"
ALERTS_FILE = "alerts.jsonl"
FPS_WINDOW_S = 5.0  # frame rate = frames in the last few seconds, so a stalled camera drops to 0 quickly
MAX_NOTE_CHARS = 1000
# Shown in an uncalibrated camera's ``detail`` (the review page's camera card) after its state's own detail.
UNCALIBRATED_DETAIL = "uncalibrated: expect no alerts until `zsad calibrate`"
_LABELS_VERSION = 1


#: Called after a label change is stored: ``(alert record, label before, label after)``.
LabelListener = Callable[[dict[str, Any], "str | None", "str | None"], None]


class StateError(ValueError):
    """A call with arguments the store cannot accept (unknown camera state, bad record)."""


class UnknownAlertError(KeyError):
    """No alert with that ``alert_id`` is known to the store."""


class LabelError(ValueError):
    """A review label outside :data:`LABELS` (or ``None``), or a note that is too long."""


def parse_time(value: str | float) -> float:
    """Epoch seconds from a number or an ISO 8601 string (``Z`` or an offset; naive means UTC).

    Raises :class:`StateError` naming the value when it is neither.
    """
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise StateError(f"time {value!r} is not finite")
        return float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):  # "nan", "inf": float() reads them, no time is either
            raise StateError(f"time {value!r} is not finite")
        return number
    try:
        dt = datetime.fromisoformat(fromisoformat_text(text))
    except ValueError as exc:
        raise StateError(f"time {value!r} is neither epoch seconds nor ISO 8601") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise ValueError(f"{text} is not a finite number")
    return value


def _non_finite(value: Any, where: str) -> str | None:
    """Where ``value`` (a record, at any depth) holds a number that is not finite, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} {value!r} is not a finite number"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _copy_trust(trust: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if trust is None:
        return None
    agreement = trust.get("agreement")
    return {
        "rule": trust["rule"],
        "streams": [dict(row) for row in trust["streams"]],
        "agreement": dict(agreement) if agreement is not None else None,
    }


def _finite(value: Any) -> float | None:
    """A float for JSON: NaN and infinities become None (browsers' JSON.parse rejects them)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _floats(values: Mapping[str, Any]) -> dict[str, float | None]:
    return {str(k): _finite(v) for k, v in values.items()}


def _iso(epoch_s: float) -> str:
    dt = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class _Score:
    t: float
    wall: float
    score: float | None
    contributions: dict[str, float | None]
    streams: dict[str, float | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "wall": round(self.wall, 3),
            "score": self.score,
            "contributions": dict(self.contributions),
            "streams": dict(self.streams),
        }


@dataclass
class _Camera:
    id: str
    context: str
    uri: str
    threshold: float | None
    calibrated: bool = True
    state: str = "starting"
    detail: str = ""
    state_since: float = field(default_factory=time.time)
    frames: int = 0
    frame_times: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    scores: deque[_Score] = field(default_factory=deque)
    zones: dict[str, Any] = field(default_factory=dict)
    learned: dict[str, Any] | None = None
    trust: dict[str, Any] | None = None


class RunState:
    """Thread-safe store of camera states, frame rates, score history, alerts and review labels.

    ``history_s`` bounds each camera's score history in stream seconds (relative to its newest score) and
    ``max_points`` in count; ``max_alerts`` bounds the alerts kept in memory (oldest onset dropped first).
    Labels are read from ``output_dir/review_labels.json`` at construction.
    """

    def __init__(
        self,
        output_dir: Path,
        history_s: float = 300.0,
        *,
        max_points: int = 2000,
        max_alerts: int = 10_000,
    ) -> None:
        if not history_s > 0:
            raise StateError(f"history_s must be > 0, got {history_s}")
        if max_points < 2 or max_alerts < 1:
            raise StateError(f"max_points must be >= 2 and max_alerts >= 1, got {max_points}, {max_alerts}")
        self.output_dir = Path(output_dir)
        self.history_s = float(history_s)
        self.max_points = int(max_points)
        self.max_alerts = int(max_alerts)
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()  # serialises label writes without holding up the camera threads
        self._cameras: dict[str, _Camera] = {}
        self._alerts: dict[str, dict[str, Any]] = {}
        self._labels: dict[str, dict[str, Any]] = self._read_labels()
        self._label_listeners: list[LabelListener] = []
        self.started = time.time()

    # -- cameras ----------------------------------------------------------------------------------------

    def add_camera(
        self,
        camera_id: str,
        context: str,
        uri_redacted: str,
        *,
        threshold: float | None = None,
        calibrated: bool = True,
    ) -> None:
        """Register (or re-register, keeping nothing) a camera. ``uri_redacted`` must already be redacted
        (``core.redact.redact_uri``); ``threshold`` is its ``on_threshold``, drawn on the sparkline;
        ``calibrated`` False marks a camera running without a calibration (its detail says so)."""
        with self._lock:
            self._cameras[camera_id] = _Camera(
                camera_id,
                str(context),
                str(uri_redacted),
                _finite(threshold) if threshold is not None else None,
                bool(calibrated),
            )

    def set_camera_zones(
        self, camera_id: str, zones: list[str], alert_zones: list[str] | None, masks: int
    ) -> None:
        """What ``/api/cameras`` says about a camera's zones: their names, the alert zones, how many mask
        polygons it has."""
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is not None:
                cam.zones = {"names": list(zones), "alert_zones": alert_zones, "masks": int(masks)}

    def set_camera_learning(self, camera_id: str, summary: Mapping[str, Any] | None) -> None:
        """What ``/api/cameras`` says about what a camera learned from false alarms (labels, version,
        updated), or None when it cannot learn."""
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is not None:
                cam.learned = dict(summary) if summary is not None else None

    def set_camera_trust(
        self,
        camera_id: str,
        rule: str,
        streams: list[Mapping[str, Any]],
        agreement: Mapping[str, Any] | None = None,
    ) -> None:
        """What ``/api/cameras`` says about how a camera fuses its streams: the fusion ``rule`` in force and,
        per stream, its reliability weight and why, and what the pasted pseudo-anomalies said of it
        (``plugins.fusion.TrustRow.to_dict()`` rows)."""
        rows = [
            {
                "stream": str(r["stream"]),
                "weight": _finite(r.get("weight")),
                "heldout_q": _finite(r.get("heldout_q")),
                "drift": _finite(r.get("drift")),
                "verdict": str(r["verdict"]),
                "reason": str(r["reason"]),
                "sensitivity": _finite(r.get("sensitivity")),
                "probe_recall": (
                    {str(k): _finite(v) for k, v in recall.items()}
                    if isinstance(recall := r.get("probe_recall"), Mapping)
                    else None
                ),
            }
            for r in streams
        ]
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is not None:
                cam.trust = {
                    "rule": str(rule),
                    "streams": rows,
                    # The max rule's agreement term in force (``plugins.fusion.Agreement.to_dict()``) or None.
                    "agreement": dict(agreement) if agreement is not None else None,
                }

    def remove_camera(self, camera_id: str) -> None:
        """Forget a camera and its score history; its alerts stay."""
        with self._lock:
            self._cameras.pop(camera_id, None)

    def set_camera_state(self, camera_id: str, state: str, detail: str = "") -> None:
        """Record a state change from the camera graph. Raises :class:`StateError` for a state outside
        :data:`CAMERA_STATES`; an unknown camera is ignored (it was removed while events were in flight)."""
        if state not in CAMERA_STATES:
            raise StateError(f"camera state {state!r} is not one of {', '.join(CAMERA_STATES)}")
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                log.debug("state %s for unknown camera %s ignored", state, camera_id)
                return
            if cam.state != state:
                cam.state_since = time.time()
            cam.state = state
            cam.detail = str(detail)

    def frame_in(self, camera_id: str, t_monotonic: float | None = None) -> None:
        """Count one input frame (``t_monotonic``: ``time.monotonic()`` of its arrival, default now)."""
        now = time.monotonic() if t_monotonic is None else float(t_monotonic)
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                return
            cam.frames += 1
            cam.frame_times.append(now)

    def add_score(
        self,
        camera_id: str,
        t: float,
        score: float,
        contributions: Mapping[str, float],
        streams: Mapping[str, float],
    ) -> None:
        """Append one clip's fused score at stream time ``t`` (seconds) with per-stream contributions
        (``w * z``) and raw stream scores. Non-finite values are stored as None. When ``t`` goes backwards
        (a source restarted its clock) the history restarts."""
        point = _Score(float(t), time.time(), _finite(score), _floats(contributions), _floats(streams))
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                log.debug("score for unknown camera %s ignored", camera_id)
                return
            ring = cam.scores
            if ring and point.t < ring[-1].t:
                ring.clear()
            ring.append(point)
            horizon = point.t - self.history_s
            while ring and (ring[0].t < horizon or len(ring) > self.max_points):
                ring.popleft()

    def cameras(self, now_monotonic: float | None = None) -> list[dict[str, Any]]:
        """Every camera as a JSON-ready dict, in registration order (see docs/api.md for the fields)."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        wall = time.time()
        with self._lock:
            open_by_camera: dict[str, str] = {}
            last_by_camera: dict[str, str] = {}
            for rec in self._alerts.values():
                cam_id = rec.get("camera", "")
                if rec.get("status") == "open":
                    open_by_camera[cam_id] = rec["alert_id"]
                if str(rec.get("start", "")) > last_by_camera.get(cam_id, ""):
                    last_by_camera[cam_id] = str(rec.get("start"))
            out = []
            for cam in self._cameras.values():
                recent = [ts for ts in cam.frame_times if ts > now - FPS_WINDOW_S]
                fps = (
                    (len(recent) - 1) / (recent[-1] - recent[0])
                    if len(recent) >= 2 and recent[-1] > recent[0]
                    else 0.0
                )
                last = cam.scores[-1] if cam.scores else None
                detail = cam.detail
                if not cam.calibrated:
                    detail = f"{detail} · {UNCALIBRATED_DETAIL}" if detail else UNCALIBRATED_DETAIL
                out.append(
                    {
                        "id": cam.id,
                        "context": cam.context,
                        "uri": cam.uri,
                        "state": cam.state,
                        "detail": detail,
                        "calibrated": cam.calibrated,
                        "state_since": _iso(cam.state_since),
                        "fps": round(fps, 2),
                        "frames": cam.frames,
                        "threshold": cam.threshold,
                        "score": last.score if last else None,
                        "score_t": last.t if last else None,
                        "score_age_s": round(wall - last.wall, 3) if last else None,
                        "contributions": dict(last.contributions) if last else {},
                        "streams": dict(last.streams) if last else {},
                        "open_alert": open_by_camera.get(cam.id),
                        "last_alert_start": last_by_camera.get(cam.id),
                        "zones": dict(cam.zones) or {"names": [], "alert_zones": None, "masks": 0},
                        "learned": dict(cam.learned) if cam.learned is not None else None,
                        "trust": _copy_trust(cam.trust),
                    }
                )
            return out

    def camera_ids(self) -> list[str]:
        with self._lock:
            return list(self._cameras)

    def scores(self, camera_id: str, since_t: float | None = None) -> list[dict[str, Any]]:
        """The camera's score history, oldest first, only points with ``t > since_t`` when given.
        Raises :class:`KeyError` for an unknown camera."""
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                raise KeyError(camera_id)
            return [p.to_json() for p in cam.scores if since_t is None or p.t > since_t]

    def threshold(self, camera_id: str) -> float | None:
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                raise KeyError(camera_id)
            return cam.threshold

    # -- alerts -----------------------------------------------------------------------------------------

    def add_alert(self, record: Mapping[str, Any]) -> None:
        """Insert or update an alert record by ``alert_id`` (open, then closed). A late ``open`` record never
        replaces a ``closed`` one (redelivery after a restart). Raises :class:`StateError` for a record
        without a string ``alert_id``/``camera``/``start`` or with an unknown ``status``."""
        rec = dict(record)
        problem = _record_problem(rec)
        if problem:
            raise StateError(f"alert record rejected: {problem}")
        rec["_start_epoch"] = parse_time(rec["start"])
        rec["_end_epoch"] = parse_time(rec["end"]) if rec.get("end") else None
        with self._lock:
            old = self._alerts.get(rec["alert_id"])
            if old is not None and old.get("status") == "closed" and rec["status"] == "open":
                return
            self._alerts[rec["alert_id"]] = rec
            if len(self._alerts) > self.max_alerts:
                oldest = min(self._alerts.values(), key=lambda r: r["_start_epoch"])
                del self._alerts[oldest["alert_id"]]

    def load_existing(self, path: Path | None = None) -> int:
        """Read earlier alerts from ``path`` (default ``output_dir/alerts.jsonl``); returns how many records
        were taken. A missing file reads as empty; each malformed line is skipped with a warning."""
        src = Path(path) if path is not None else self.output_dir / ALERTS_FILE
        if not src.is_file():
            return 0
        taken = 0
        with src.open("r", encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    # NaN and Infinity are not JSON, though Python reads them: an alert holding one could
                    # never be served (the API's numbers are finite).
                    rec = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
                except json.JSONDecodeError as exc:
                    log.warning("%s:%d: skipped a line that is not JSON (%s)", src, lineno, exc.msg)
                    continue
                except ValueError as exc:
                    log.warning("%s:%d: skipped a malformed alert record: %s", src, lineno, exc)
                    continue
                problem = _record_problem(rec) if isinstance(rec, dict) else "not a JSON object"
                if problem is None:
                    try:
                        self.add_alert(rec)
                    except StateError as exc:
                        problem = str(exc)
                if problem:
                    log.warning("%s:%d: skipped a malformed alert record: %s", src, lineno, problem)
                    continue
                taken += 1
        log.info("loaded %d alert records from %s", taken, src)
        return taken

    def alerts(
        self,
        camera: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        label: str | None = None,
        zone: str | None = None,
    ) -> list[dict[str, Any]]:
        """Alerts newest onset first, each with its ``review`` (label, note, at) or None.

        ``since``/``until`` are epoch seconds: an alert is kept when it overlaps ``[since, until]`` (an open
        alert lasts until now). ``label`` keeps only ``ack``, ``false_alarm`` or ``none`` (unreviewed).
        ``zone`` keeps only alerts whose peak is in that zone; ``"none"``: outside every zone."""
        now = time.time()
        with self._lock:
            picked = []
            for rec in self._alerts.values():
                if camera is not None and rec["camera"] != camera:
                    continue
                if zone is not None and (rec.get("zone") or "none") != zone:
                    continue
                end = rec["_end_epoch"] if rec["_end_epoch"] is not None else now
                if since is not None and end < since:
                    continue
                if until is not None and rec["_start_epoch"] > until:
                    continue
                review = self._labels.get(rec["alert_id"])
                if label is not None and (review["label"] if review else "none") != label:
                    continue
                picked.append((rec, review))
            picked.sort(key=lambda pair: pair[0]["_start_epoch"], reverse=True)
            return [_public(rec, review) for rec, review in picked[: max(0, int(limit))]]

    def alert(self, alert_id: str) -> dict[str, Any]:
        """One alert with its review. Raises :class:`UnknownAlertError`."""
        with self._lock:
            rec = self._alerts.get(alert_id)
            if rec is None:
                raise UnknownAlertError(alert_id)
            return _public(rec, self._labels.get(alert_id))

    # -- review labels ----------------------------------------------------------------------------------

    def set_label(self, alert_id: str, label: str | None, note: str | None = None) -> dict[str, Any] | None:
        """Store the operator's verdict on an alert and persist every label atomically.

        ``label`` is ``"ack"``, ``"false_alarm"`` or None (clears the label; a note alone is kept).
        Returns the stored review (``label``, ``note``, ``at`` ISO time) or None when cleared. Raises
        :class:`UnknownAlertError` and :class:`LabelError`; ``OSError`` if the file cannot be written (the
        in-memory label is then rolled back)."""
        if label is not None and label not in LABELS:
            raise LabelError(f"label {label!r} is not one of {', '.join(LABELS)} or null")
        if note is not None and not isinstance(note, str):
            raise LabelError(f"note must be a string or null, got {type(note).__name__}")
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise LabelError(f"note is {len(note)} characters; at most {MAX_NOTE_CHARS}")
        note = note.strip() if note else None
        with self._file_lock:
            with self._lock:
                if alert_id not in self._alerts:
                    raise UnknownAlertError(alert_id)
                before = self._labels.get(alert_id)
                record = {k: v for k, v in self._alerts[alert_id].items() if not k.startswith("_")}
                review: dict[str, Any] | None = None
                if label is not None or note:
                    review = {"label": label, "note": note, "at": _iso(time.time())}
                    self._labels[alert_id] = review
                else:
                    self._labels.pop(alert_id, None)
                snapshot = {k: dict(v) for k, v in self._labels.items()}
            try:
                self._write_labels(snapshot)
            except OSError:
                with self._lock:
                    if before is None:
                        self._labels.pop(alert_id, None)
                    else:
                        self._labels[alert_id] = before
                raise
            listeners = list(self._label_listeners)
        old = before["label"] if before else None
        new = review["label"] if review else None
        if old != new:
            for listener in listeners:
                listener(record, old, new)
        return dict(review) if review else None

    def add_label_listener(self, listener: LabelListener) -> None:
        """Call ``listener(record, label_before, label_after)`` after each stored change of an alert's label
        (on the thread that set it; a note-only change is not a label change)."""
        with self._lock:
            self._label_listeners.append(listener)

    def labels(self) -> dict[str, dict[str, Any]]:
        """Every stored review by alert_id (for calibration and export)."""
        with self._lock:
            return {k: dict(v) for k, v in self._labels.items()}

    def _labels_path(self) -> Path:
        return self.output_dir / LABELS_FILE

    def _read_labels(self) -> dict[str, dict[str, Any]]:
        path = self._labels_path()
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            raw = data["labels"]
            if not isinstance(raw, dict):
                raise TypeError("'labels' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("cannot read review labels %s (%s); moved aside to %s", path, exc, aside.name)
            path.replace(aside)
            return {}
        labels: dict[str, dict[str, Any]] = {}
        for alert_id, review in raw.items():
            if isinstance(review, dict) and review.get("label") in (*LABELS, None):
                labels[str(alert_id)] = {
                    "label": review.get("label"),
                    "note": review.get("note") if isinstance(review.get("note"), str) else None,
                    "at": str(review.get("at", "")),
                }
            else:
                log.warning("%s: skipped a malformed label for %s", path, alert_id)
        return labels

    def _write_labels(self, labels: dict[str, dict[str, Any]]) -> None:
        path = self._labels_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        body = json.dumps({"version": _LABELS_VERSION, "labels": labels}, indent=1, sort_keys=True)
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(body + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        # The rename itself must reach the disk too, or a power cut could bring back the old file.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _record_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a record cannot be stored, or None. The full schema check is the sinks' job; the store only needs
    the keys it indexes and sorts by."""
    for key in ("alert_id", "camera", "start"):
        if not isinstance(rec.get(key), str) or not rec.get(key):
            return f"missing or non-string {key!r}"
    if rec.get("status") not in ("open", "closed"):
        return f"status {rec.get('status')!r} is not open or closed"
    try:
        parse_time(rec["start"])
        if rec.get("end"):
            parse_time(rec["end"])
    except StateError as exc:
        return str(exc)
    # The API's numbers are finite (its JSON has no NaN): a record holding one could never be served.
    return _non_finite(dict(rec), "")


def _public(rec: Mapping[str, Any], review: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if not k.startswith("_")}
    out["review"] = dict(review) if review else None
    start, end = rec["_start_epoch"], rec["_end_epoch"]
    out["duration_s"] = round(end - start, 3) if end is not None else None
    return out
