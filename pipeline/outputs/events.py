"""Per-camera glue from clip scores to published alert records: fusion, the alert machine, event media,
the record, the sinks and the metrics, in the order ``zsad run`` needs them.

    cam = CameraAlerts("cam-1", "parking", settings.alerts, CameraFusion(...), fanout,
                       recorder=EventRecorder(...), metrics=metrics, model=manifest_id)
    cam.add_frame(frame, pts)                       # every sampled frame (for snapshots and clips)
    fused, records = cam.update(raw_scores, context_vec, t, prompt=best_prompt,
                                maps=scores.maps, counted=scores.counted)   # every scored clip
    cam.end_stream()                                # end of stream, failed: closes it, finishes its media
    cam.shutdown()                                  # SIGTERM, camera removed: closes an open alert

With the clip's error maps, each update also finds where the evidence peaks (``plugins.zones``): the alert
record carries the peak's zone and box, a camera with alert zones opens alerts only while the peak is in one
of them, and each alert's evidence (the maps at its peak and their per-cell maxima over the alert) is saved
as ``<evidence_dir>/<alert_id>.npz`` for feedback learning (``plugins.learned``). The evidence map of the
alert's peak clip, the one its peak box comes from, goes to the event media with the peak frame, which
renders it as the alert's heatmap (``pipeline.outputs.heatmap``) beside the snapshot.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.config import AlertPolicy
from pipeline.outputs.alert_schema import AlertSchemaError, build_alert_record
from pipeline.outputs.heatmap import PeakEvidence
from pipeline.outputs.media import EventMedia, EventRecorder, Frame
from pipeline.outputs.metrics import ZsadMetrics
from plugins.alerting import AlertMachine, AlertTransition, Peak, alert_params, resolve_policy
from plugins.fusion import CameraFusion, FusedScore
from plugins.learned import EventEvidence, LearnedError
from plugins.zones import PeakLocation, ViewZones, evidence_map, locate_peak

__all__ = ["CameraAlerts", "RecordPublisher"]

log = logging.getLogger(__name__)


class RecordPublisher(Protocol):
    """Anything with ``publish(record)``: :class:`pipeline.outputs.sinks.SinkFanout`, a single sink."""

    def publish(self, record: Mapping[str, Any]) -> Any: ...


class _EvidenceAccumulator:
    """One alert's evidence while it builds up: the maps at its peak so far and their per-cell maxima."""

    def __init__(self) -> None:
        self.peak: dict[str, np.ndarray] = {}
        self.peak_time: float | None = None
        self.maxima: dict[str, np.ndarray] = {}
        self.weights: dict[str, float] = {}
        self.clips = 0

    def add(
        self, maps: Mapping[str, np.ndarray], t: float, is_peak: bool, weights: Mapping[str, float]
    ) -> None:
        for stream, m in maps.items():
            current = self.maxima.get(stream)
            if current is None or current.shape != m.shape:
                self.maxima[stream] = m.copy()
            else:
                np.fmax(current, m, out=current)  # fmax: a NaN (masked) cell stays NaN only if never seen
        if is_peak or self.peak_time is None:
            self.peak = {k: v.copy() for k, v in maps.items()}
            self.peak_time = t
            self.weights = dict(weights)
        self.clips += 1


class CameraAlerts:
    """Everything between one camera's clip scores and its published alert records.

    ``fusion`` should be built with ``smoothing=policy.smoothing``; ``policy`` is resolved against its
    calibration (:func:`resolve_policy`, :attr:`on_threshold`). ``epoch_offset_s`` maps stream time to
    wall time (``epoch = pts + offset``); None takes ``clock() - t`` at the first :meth:`update`, right for
    live cameras. ``zones``: the camera's zones, mask and alert restriction (:meth:`set_zones` replaces
    them while it runs). ``evidence_dir``: where each alert's evidence is saved (None: not saved).
    Not thread-safe: call from the camera's scoring thread (:meth:`set_zones` may be called from any thread).
    """

    def __init__(
        self,
        camera: str,
        context: str,
        policy: AlertPolicy,
        fusion: CameraFusion,
        sinks: RecordPublisher | None,
        *,
        recorder: EventRecorder | None = None,
        metrics: ZsadMetrics | None = None,
        model: str | None = None,
        epoch_offset_s: float | None = None,
        clock: Callable[[], float] = time.time,
        zones: ViewZones | None = None,
        evidence_dir: Path | None = None,
    ) -> None:
        self.camera = camera
        self.context = context
        # From here on ``on_threshold: calibrated`` is the number the camera's calibration gives.
        self.policy = resolve_policy(policy, fusion.calibration, camera, fusion.rule)
        self.fusion = fusion
        self.machine = AlertMachine(alert_params(self.policy))
        self.sinks = sinks
        self.recorder = recorder
        self.metrics = metrics
        self.model = model
        self.epoch_offset_s = epoch_offset_s
        self._offset_from_clock = epoch_offset_s is None  # then taken again when stream time restarts
        self._clock = clock
        self._media: dict[str, EventMedia] = {}
        self._peak_time: float | None = None
        self._last_t: float | None = None
        self.zones = zones if zones is not None else ViewZones()
        self.evidence_dir = evidence_dir
        self._evidence: _EvidenceAccumulator | None = None
        self.last_location: PeakLocation | None = None
        #: The latest clip's evidence map and peak (None without maps, or when no cell counted).
        self.last_evidence: PeakEvidence | None = None
        self._peak_evidence: PeakEvidence | None = None

    @property
    def on_threshold(self) -> float:
        """The score that opens this camera's alerts (a calibrated one resolved to its number)."""
        return self.machine.params.on_threshold

    def set_zones(self, zones: ViewZones | None) -> None:
        """Replace the camera's zones from the next clip on (an atomic swap of one immutable object)."""
        self.zones = zones if zones is not None else ViewZones()

    def evidence_path(self, alert_id: str) -> Path | None:
        """Where the evidence of ``alert_id`` is saved, or None without an evidence folder."""
        if self.evidence_dir is None:
            return None
        return self.evidence_dir / f"{alert_id}.npz"

    def add_frame(self, frame: Frame, pts: float) -> None:
        """One sampled frame ``(H, W, 3)`` uint8 RGB (an array, or a
        :class:`~pipeline.outputs.media.LazyFrame`) at stream time ``pts`` (for snapshots and clips)."""
        if self.recorder is not None:
            self.recorder.add_frame(frame, pts)

    def update(
        self,
        raw: Mapping[str, float],
        context_vec: np.ndarray | None,
        t: float,
        prompt: str | None = None,
        *,
        maps: Mapping[str, np.ndarray] | None = None,
        counted: Mapping[str, np.ndarray] | None = None,
        frame_t: float | None = None,
    ) -> tuple[FusedScore, list[dict[str, Any]]]:
        """Fuse one clip's raw stream scores (clip end at stream time ``t``), run the alert machine, and
        publish a record for each transition. Returns the fused score and the records published.

        ``maps``: the clip's error maps as the engine gave them; ``counted``: the same with NaN where a
        cell did not count (``StreamScores.counted``; None: every cell counted). With maps, the peak's
        location is found and kept with the alert. A camera with alert zones (or zones marked
        ``alert: false``) feeds the machine a score below ``off_threshold`` while the peak is where it may
        not alert: no alert opens, and an open one closes.

        ``frame_t``: stream time of the frame the maps describe, whose buffered frame becomes the peak's
        snapshot and heatmap (None: ``t``). The DPC head compares a clip's first frame with the history,
        so the graphs pass the clip's first frame; its last frame (``t``) shows a fast object a clip's
        span further on, beside its evidence.

        If ``t`` goes backwards (a looping file, a reconnect), an open alert is closed ("shutdown"), and
        the machine restarts; an offset taken from the clock is taken again.
        """
        if self._last_t is not None and t < self._last_t:
            log.info("camera %s: stream time went back; alert state restarts", self.camera)
            records = self.shutdown(self._last_t)
            self.machine = AlertMachine(alert_params(self.policy), first_seq=self.machine.next_seq)
            if self._offset_from_clock:  # the old offset would date the new stream's alerts in the past
                self.epoch_offset_s = None
        else:
            records = []
        self._last_t = t
        if self.epoch_offset_s is None:
            self.epoch_offset_s = self._clock() - t
        fused = self.fusion.update(raw, context_vec, t)
        if self.metrics is not None and np.isfinite(fused.score):
            self.metrics.score.set(fused.score, camera=self.camera)
        zones = self.zones
        location = None
        evidence = None
        if maps is not None:
            scored = counted if counted is not None else maps
            stats = self.fusion.cell_stats()
            evidence = evidence_map(scored, fused.weights, stats, rule=fused.rule)
            if evidence is not None:
                tiebreak = evidence_map(scored, fused.weights, stats, positive=False, rule=fused.rule)
                location = locate_peak(evidence, zones, tiebreak)
        self.last_location = location
        current = (
            PeakEvidence(t, evidence, location) if evidence is not None and location is not None else None
        )
        self.last_evidence = current
        score = fused.score
        if math.isfinite(score) and not self._may_alert(zones, location):
            # Below off_threshold: no alert opens here, and an open one closes.
            score = min(score, self.policy.off_threshold - 1e-6)
        frame = (
            self.recorder.frame_at(t if frame_t is None else frame_t) if self.recorder is not None else None
        )
        transitions = self.machine.update(
            t,
            score,
            fused.contributions,
            prompt=prompt,
            frame_ref=frame,
            weights=fused.weights,
            location=location,
            agreement=fused.agreement,
        )
        self._keep_peak_evidence(t, current, transitions)
        if maps is not None:
            self._collect_evidence(maps, zones, t, transitions)
        records += self._handle(transitions)
        active = self.machine.active
        if active is not None and self.recorder is not None and active.peak.time != self._peak_time:
            self._peak_time = active.peak.time
            if not transitions:  # the peak rose while open
                self.recorder.update_peak(
                    active.alert_id, active.peak.time, active.peak.frame_ref, self._evidence_of(active.peak)
                )
        return fused, records

    def _keep_peak_evidence(
        self, t: float, current: PeakEvidence | None, transitions: list[AlertTransition]
    ) -> None:
        """Keep this clip's evidence while its sample is the peak of the pending or open alert: the alert's
        heatmap is made from it, the same map its peak box came from."""
        peak = self.machine.current_peak
        if peak is not None and peak.time == t:
            if current is not None and peak.location is current.location:
                self._peak_evidence = current
        elif peak is None and not transitions:
            self._peak_evidence = None  # no alert pending or open: nothing to keep

    def _evidence_of(self, peak: Peak) -> PeakEvidence | None:
        """The evidence of ``peak``'s clip, None when it had no evidence map (no maps, nothing counted)."""
        kept = self._peak_evidence
        if kept is None or peak.location is None or kept.location is not peak.location:
            return None
        return kept

    def _may_alert(self, zones: ViewZones, location: PeakLocation | None) -> bool:
        if zones.alert_zones is None and all(z.alert for z in zones.zones):
            return True  # no restriction: the location does not matter
        if location is None:
            return False  # restricted, and the peak cannot be placed: it is not in an alert zone
        return zones.allows_alert(location.zones)

    def _collect_evidence(
        self,
        maps: Mapping[str, np.ndarray],
        zones: ViewZones,
        t: float,
        transitions: list[AlertTransition],
    ) -> None:
        """Keep the evidence of the alert that is pending or open (masked cells NaN, raw values)."""
        if self.evidence_dir is None:
            return
        peak = self.machine.current_peak
        closing = any(tr.kind == "closed" for tr in transitions)
        if peak is None and not closing:
            self._evidence = None  # the run above on_threshold ended without an alert
            return
        masked: dict[str, np.ndarray] = {}
        for stream, m in maps.items():
            arr = np.asarray(m, dtype=np.float32)
            if zones.has_mask and arr.ndim == 2:
                arr = np.where(zones.mask_cells(arr.shape), np.float32(np.nan), arr)
            masked[stream] = arr
        if self._evidence is None:
            self._evidence = _EvidenceAccumulator()
        weights = peak.weights if peak is not None else {}
        self._evidence.add(masked, t, peak is not None and peak.time == t, weights)

    def _save_evidence(self, alert_id: str) -> None:
        acc = self._evidence
        path = self.evidence_path(alert_id)
        if acc is None or path is None or acc.peak_time is None:
            return
        evidence = EventEvidence(
            camera=self.camera,
            alert_id=alert_id,
            peak_time=acc.peak_time,
            peak=acc.peak,
            maxima=acc.maxima,
            weights=acc.weights,
            stats=self.fusion.cell_stats(),
            clips=acc.clips,
            rule=self.fusion.rule,
        )
        try:
            evidence.save(path)
        except (OSError, LearnedError) as exc:
            log.warning("camera %s: cannot save the evidence of alert %s: %s", self.camera, alert_id, exc)

    def shutdown(self, t: float | None = None) -> list[dict[str, Any]]:
        """Close an open alert with reason "shutdown" at ``t`` (default: the last update's time)."""
        when = t if t is not None else (self._last_t if self._last_t is not None else 0.0)
        return self._handle(self.machine.force_close(when, "shutdown"))

    def end_stream(self) -> list[dict[str, Any]]:
        """The camera's stream ended (end of file, failed) and its last clip is scored: close an open alert
        (reason "shutdown", as the schema has it) and finish its media now, since no later frame will."""
        records = self.shutdown()
        if self.recorder is not None:
            self.recorder.end_stream()
        return records

    def _handle(self, transitions: list[AlertTransition]) -> list[dict[str, Any]]:
        records = []
        for tr in transitions:
            alert = tr.alert
            if tr.kind == "opened":
                self._peak_time = alert.peak.time
                media = EventMedia(None, None)
                if self.recorder is not None:
                    media = self.recorder.open_event(
                        alert.alert_id,
                        alert.start,
                        alert.peak.time,
                        alert.peak.frame_ref,
                        self._evidence_of(alert.peak),
                    )
                self._media[alert.alert_id] = media
                if self.metrics is not None:
                    self.metrics.alerts.inc(camera=self.camera)
                self._save_evidence(alert.alert_id)  # so an alert can be labelled while it is open
            else:
                media = self._media.pop(alert.alert_id, EventMedia(None, None))
                if self.recorder is not None and alert.end is not None:
                    self.recorder.close_event(alert.alert_id, alert.end)
                self._peak_time = None
                self._save_evidence(alert.alert_id)
                self._evidence = None
            try:
                record = build_alert_record(
                    tr,
                    camera=self.camera,
                    context=self.context,
                    threshold=self.on_threshold,
                    epoch_offset_s=self.epoch_offset_s or 0.0,
                    snapshot=media.snapshot,
                    clip=media.clip,
                    heatmap=media.heatmap if self._evidence_of(alert.peak) is not None else None,
                    model=self.model,
                    frame_size=_frame_size(alert.peak.frame_ref),
                )
            except AlertSchemaError:
                log.exception("camera %s: alert %s does not fit the schema", self.camera, alert.alert_id)
                continue
            log.info(
                "camera %s: alert %s %s (peak %.2f)", self.camera, alert.alert_id, tr.kind, alert.peak.score
            )
            if self.sinks is not None:
                self.sinks.publish(record)
            records.append(record)
        return records


def _frame_size(frame: Any) -> tuple[int, int] | None:
    """``(width, height)`` of a frame (an array or a lazy frame with ``shape``), None without one."""
    shape = getattr(frame, "shape", None)
    if shape is None or len(shape) < 2 or shape[0] < 1 or shape[1] < 1:
        return None
    return int(shape[1]), int(shape[0])
