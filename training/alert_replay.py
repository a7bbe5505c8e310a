"""Alerts, not frames: the product's fused score of each test video replayed through the run's own alert
machine, counted against the video's events.

``zsad eval``'s AUCs rank frames; an operator meets alerts. :func:`replay_alerts` takes each video's
unsmoothed fused score per frame, reads it every ``hop`` frames (the run scores a clip every ``clip_hop``
frames), smooths it by the alerts' trailing median (:func:`plugins.fusion.trailing_median`) and feeds it to
:class:`plugins.alerting.AlertMachine` with the camera's threshold, hysteresis, minimum duration and
cooldown. An event is **detected** when an alert is open at some time from its first frame to ``slack_s``
after its last; an alert open at no such time is a **false alarm**. Matched by time alone: the run's demo
also asks the alert's peak box to lie on the event's mask (``pipeline.cli.demo.alert_matches``), which
frame-level scores cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from plugins.alerting import AlertMachine, AlertParams
from plugins.fusion import trailing_median

__all__ = ["AlertReplayError", "Event", "replay_alerts", "video_alerts"]


class AlertReplayError(ValueError):
    """Inputs the replay cannot use (a non-positive hop or frame rate, an event outside its video)."""


@dataclass(frozen=True)
class Event:
    """One anomaly of a test video: frames ``start`` to ``end`` inclusive, of ``kind``; ``runs``: the
    inclusive frame runs within them where it is abnormal, when that is not all of them (empty: the whole
    span). An alert is its detection when it is open during a run or within the slack after one."""

    start: int
    end: int
    kind: str = "anomaly"
    runs: tuple[tuple[int, int], ...] = ()

    def windows(self) -> tuple[tuple[int, int], ...]:
        return self.runs or ((self.start, self.end),)


def video_alerts(
    fused: np.ndarray, params: AlertParams, *, hop: int, fps: float, smoothing: int, delay: int = 0
) -> list[tuple[float, float]]:
    """The alerts of one video, each ``(open_s, close_s)`` in seconds from its first frame (an alert still
    open at the end closes at the last sample). ``fused``: ``(N,)`` unsmoothed fused score per frame, the
    score of frame ``f`` that of the clip starting there; ``delay``: frames from a clip's first frame to its
    last, when the run has it and scores it (``(clip_len - 1) * frame_stride``), so that the replay's alerts
    open when the run's would."""
    if hop < 1 or fps <= 0 or delay < 0:
        raise AlertReplayError(f"hop must be >= 1, fps > 0 and delay >= 0, got {hop}, {fps}, {delay}")
    x = np.asarray(fused, dtype=np.float64).ravel()[::hop]
    scores = trailing_median(x, smoothing)
    machine = AlertMachine(params)
    alerts: list[tuple[float, float]] = []
    opened: float | None = None
    t = 0.0
    for i, s in enumerate(scores):
        t = (i * hop + delay) / fps
        for tr in machine.update(t, float(s)):
            if tr.kind == "opened":
                opened = tr.alert.opened_at
            elif opened is not None:
                alerts.append((opened, t))
                opened = None
    if opened is not None:
        alerts.append((opened, t))
    return alerts


def replay_alerts(
    fused: Mapping[str, np.ndarray],
    events: Mapping[str, Sequence[Event]],
    thresholds: Mapping[str, AlertParams],
    *,
    hop: int,
    fps: float,
    smoothing: int,
    slack_s: float = 2.0,
    delay: int = 0,
) -> dict[str, Any]:
    """Count detected events and false alarms over videos (see the module docstring).

    ``fused``: video -> ``(N,)`` unsmoothed fused score per frame; ``delay``: as in :func:`video_alerts`;
    ``events``: video -> its events (none:
    a normal video); ``thresholds``: video -> the alert parameters its camera runs with. Returns
    ``events``, ``detected``, ``false_alarms``, ``normal_minutes`` (frames outside every event and its
    slack), ``false_alarms_per_hour``, ``per_kind`` (kind -> [detected, events]) and ``missed``
    (``video:kind@start``)."""
    detected = total = false_alarms = 0
    normal_frames = 0
    per_kind: dict[str, list[int]] = {}
    missed: list[str] = []
    slack = round(slack_s * fps)
    for video, scores in fused.items():
        n = int(np.asarray(scores).size)
        evs = list(events.get(video, ()))
        for ev in evs:
            if not 0 <= ev.start <= ev.end < n:
                raise AlertReplayError(f"{video}: event frames {ev.start}-{ev.end} outside its {n} frames")
        alerts = video_alerts(scores, thresholds[video], hop=hop, fps=fps, smoothing=smoothing, delay=delay)
        windows = [[(a / fps, (b + slack) / fps) for a, b in ev.windows()] for ev in evs]
        for ev, spans in zip(evs, windows, strict=True):
            hit = any(o <= b and c >= a for o, c in alerts for a, b in spans)
            total += 1
            detected += hit
            counts = per_kind.setdefault(ev.kind, [0, 0])
            counts[0] += hit
            counts[1] += 1
            if not hit:
                missed.append(f"{video}:{ev.kind}@{ev.start}")
        every = [w for spans in windows for w in spans]
        false_alarms += sum(1 for o, c in alerts if not any(o <= b and c >= a for a, b in every))
        busy = np.zeros(n, bool)
        for ev in evs:
            for a, b in ev.windows():
                busy[a : min(n, b + slack + 1)] = True
        normal_frames += int((~busy).sum())
    minutes = normal_frames / fps / 60.0
    return {
        "events": total,
        "detected": detected,
        "false_alarms": false_alarms,
        "normal_minutes": round(minutes, 2),
        "false_alarms_per_hour": round(false_alarms / minutes * 60.0, 2) if minutes > 0 else None,
        "per_kind": per_kind,
        "missed": missed,
    }
