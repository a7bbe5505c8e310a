"""Per-camera glue: scores -> fusion -> alert machine -> media -> valid records -> a real JSONL sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.config import AlertPolicy, JsonlSink, MediaConfig
from pipeline.outputs.alert_schema import validate_alert
from pipeline.outputs.events import CameraAlerts, alert_params
from pipeline.outputs.media import EventRecorder
from pipeline.outputs.metrics import ZsadMetrics
from pipeline.outputs.sinks import SinkFanout, build_sinks
from plugins.fusion import Calibration, CameraFusion, StreamStats


class ListPublisher:
    """Collects published records (a receiver in memory)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def publish(self, record: Any) -> None:
        self.records.append(dict(record))


def _fusion(smoothing: int = 1) -> CameraFusion:
    cal = Calibration(streams={"pixel": StreamStats(0.0, 1.0, 100), "motion": StreamStats(0.0, 1.0, 100)})
    return CameraFusion("cam-1", cal, None, smoothing=smoothing)


def test_alert_params_from_policy() -> None:
    p = alert_params(AlertPolicy(on_threshold=4, off_threshold=1, min_duration_s=2, cooldown_s=9))
    assert (p.on_threshold, p.off_threshold, p.min_duration_s, p.cooldown_s) == (4, 1, 2, 9)


def test_scores_to_records_with_snapshot_and_jsonl(tmp_path: Path) -> None:
    metrics = ZsadMetrics()
    fan = SinkFanout(build_sinks([JsonlSink(path="alerts.jsonl")], tmp_path, metrics=metrics)).start()
    recorder = EventRecorder("cam-1", tmp_path, MediaConfig(clips=False), fps=10.0, metrics=metrics)
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.2, cooldown_s=0.0, smoothing=1)
    cam = CameraAlerts(
        "cam-1", "parking", policy, _fusion(), fan, recorder=recorder, metrics=metrics, model="m-1",
        epoch_offset_s=1_714_564_800.0,
    )  # fmt: skip
    scores = [0, 0, 4, 5, 8, 6, 1, 0, 0, 5, 5, 5, 5]
    records: list[dict[str, Any]] = []
    for i, s in enumerate(scores):
        t = i * 0.1
        frame = np.full((24, 32, 3), i * 10, np.uint8)
        cam.add_frame(frame, t)
        _, recs = cam.update({"pixel": float(s), "motion": float(s)}, None, t, prompt=f"p{i}")
        records += recs
    records += cam.shutdown()
    assert [(r["status"], r["reason"]) for r in records] == [
        ("open", None),
        ("closed", "threshold"),
        ("open", None),
        ("closed", "shutdown"),
    ]
    for r in records:
        validate_alert(r)
    first = records[1]
    assert first["peak_score"] == 8.0
    assert first["prompt"] == "p4"
    assert first["contributions"] == pytest.approx({"pixel": 4.0, "motion": 4.0})
    assert first["start_pts"] == pytest.approx(0.2)
    assert first["end_pts"] == pytest.approx(0.6)
    assert first["start"] == "2024-05-01T12:00:00.200Z"
    assert first["model"] == "m-1"
    assert records[2]["seq"] == 2
    assert metrics.alerts.value(camera="cam-1") == 2
    assert metrics.score.value(camera="cam-1") == 5.0
    assert recorder.wait_idle(10)
    recorder.close()
    # The snapshot is the peak's own frame (index 4: value 40), rewritten when the peak rose after opening.
    snap = np.asarray(Image.open(tmp_path / first["snapshot"]))
    assert abs(int(snap.mean()) - 40) <= 2
    assert fan.close(5.0) == {fan.sinks[0].name: 0}
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [x["alert_id"] for x in lines] == [r["alert_id"] for r in records]


def test_time_going_back_closes_and_restarts() -> None:
    pub = ListPublisher()
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0, smoothing=1)
    cam = CameraAlerts("cam-1", "campus", policy, _fusion(), pub, clock=lambda: 1000.0)
    cam.update({"pixel": 9.0}, None, 5.0)
    cam.update({"pixel": 9.0}, None, 0.5)  # the file looped
    cam.shutdown()
    assert [(r["status"], r["reason"], r["seq"]) for r in pub.records] == [
        ("open", None, 1),
        ("closed", "shutdown", 1),
        ("open", None, 2),
        ("closed", "shutdown", 2),
    ]
    assert pub.records[0]["start"] == "1970-01-01T00:16:40.000Z"  # clock() - t at the first update + t
    for r in pub.records:
        validate_alert(r)
        assert r["snapshot"] is None
