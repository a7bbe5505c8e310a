"""Per-camera glue from clip scores to published alert records: fusion, the alert machine, event media,
the record, the sinks and the metrics, in the order ``zsad run`` needs them.

    cam = CameraAlerts("cam-1", "parking", settings.alerts, CameraFusion(...), fanout,
                       recorder=EventRecorder(...), metrics=metrics, model=manifest_id)
    cam.add_frame(frame, pts)                       # every sampled frame (for snapshots and clips)
    fused, records = cam.update(raw_scores, context_vec, t, prompt=best_prompt)   # every scored clip
    cam.shutdown()                                  # SIGTERM / end of stream: closes an open alert
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from core.config import AlertPolicy
from pipeline.outputs.alert_schema import AlertSchemaError, build_alert_record
from pipeline.outputs.media import EventMedia, EventRecorder, Frame
from pipeline.outputs.metrics import ZsadMetrics
from plugins.alerting import AlertMachine, AlertParams, AlertTransition
from plugins.fusion import CameraFusion, FusedScore

__all__ = ["CameraAlerts", "RecordPublisher", "alert_params"]

log = logging.getLogger(__name__)


class RecordPublisher(Protocol):
    """Anything with ``publish(record)``: :class:`pipeline.outputs.sinks.SinkFanout`, a single sink."""

    def publish(self, record: Mapping[str, Any]) -> Any: ...


def alert_params(policy: AlertPolicy) -> AlertParams:
    """The alert machine's parameters from the config's per-camera ``AlertPolicy``."""
    return AlertParams(
        on_threshold=policy.on_threshold,
        off_threshold=policy.off_threshold,
        min_duration_s=policy.min_duration_s,
        cooldown_s=policy.cooldown_s,
    )


class CameraAlerts:
    """Everything between one camera's clip scores and its published alert records.

    ``fusion`` should be built with ``smoothing=policy.smoothing``. ``epoch_offset_s`` maps stream time to
    wall time (``epoch = pts + offset``); None takes ``clock() - t`` at the first :meth:`update`, right for
    live cameras. Not thread-safe: call from the camera's scoring thread.
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
    ) -> None:
        self.camera = camera
        self.context = context
        self.policy = policy
        self.fusion = fusion
        self.machine = AlertMachine(alert_params(policy))
        self.sinks = sinks
        self.recorder = recorder
        self.metrics = metrics
        self.model = model
        self.epoch_offset_s = epoch_offset_s
        self._clock = clock
        self._media: dict[str, EventMedia] = {}
        self._peak_time: float | None = None
        self._last_t: float | None = None

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
    ) -> tuple[FusedScore, list[dict[str, Any]]]:
        """Fuse one clip's raw stream scores (clip end at stream time ``t``), run the alert machine, and
        publish a record for each transition. Returns the fused score and the records published.

        If ``t`` goes backwards (a looping file, a reconnect), an open alert is closed ("shutdown"), and
        the machine restarts.
        """
        if self._last_t is not None and t < self._last_t:
            log.info("camera %s: stream time went back; alert state restarts", self.camera)
            records = self.shutdown(self._last_t)
            self.machine = AlertMachine(alert_params(self.policy), first_seq=self.machine.next_seq)
        else:
            records = []
        self._last_t = t
        if self.epoch_offset_s is None:
            self.epoch_offset_s = self._clock() - t
        fused = self.fusion.update(raw, context_vec, t)
        if self.metrics is not None and np.isfinite(fused.score):
            self.metrics.score.set(fused.score, camera=self.camera)
        frame = self.recorder.frame_at(t) if self.recorder is not None else None
        transitions = self.machine.update(
            t, fused.score, fused.contributions, prompt=prompt, frame_ref=frame, weights=fused.weights
        )
        records += self._handle(transitions)
        active = self.machine.active
        if active is not None and self.recorder is not None and active.peak.time != self._peak_time:
            self._peak_time = active.peak.time
            if not transitions:  # the peak rose while open
                self.recorder.update_peak(active.alert_id, active.peak.time, active.peak.frame_ref)
        return fused, records

    def shutdown(self, t: float | None = None) -> list[dict[str, Any]]:
        """Close an open alert with reason "shutdown" at ``t`` (default: the last update's time)."""
        when = t if t is not None else (self._last_t if self._last_t is not None else 0.0)
        return self._handle(self.machine.force_close(when, "shutdown"))

    def _handle(self, transitions: list[AlertTransition]) -> list[dict[str, Any]]:
        records = []
        for tr in transitions:
            alert = tr.alert
            if tr.kind == "opened":
                self._peak_time = alert.peak.time
                media = EventMedia(None, None)
                if self.recorder is not None:
                    media = self.recorder.open_event(
                        alert.alert_id, alert.start, alert.peak.time, alert.peak.frame_ref
                    )
                self._media[alert.alert_id] = media
                if self.metrics is not None:
                    self.metrics.alerts.inc(camera=self.camera)
            else:
                media = self._media.pop(alert.alert_id, EventMedia(None, None))
                if self.recorder is not None and alert.end is not None:
                    self.recorder.close_event(alert.alert_id, alert.end)
                self._peak_time = None
            try:
                record = build_alert_record(
                    tr,
                    camera=self.camera,
                    context=self.context,
                    threshold=self.policy.on_threshold,
                    epoch_offset_s=self.epoch_offset_s or 0.0,
                    snapshot=media.snapshot,
                    clip=media.clip,
                    model=self.model,
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
