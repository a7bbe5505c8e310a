"""Per-camera glue: scores -> fusion -> alert machine -> media -> valid records -> a real JSONL sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.config import FALLBACK_ON_THRESHOLD, AlertPolicy, JsonlSink, MediaConfig
from pipeline.outputs.alert_schema import validate_alert
from pipeline.outputs.events import CameraAlerts
from pipeline.outputs.media import EventRecorder
from pipeline.outputs.metrics import ZsadMetrics
from pipeline.outputs.sinks import SinkFanout, build_sinks
from plugins.alerting import AlertPolicyError, alert_params, resolve_policy
from plugins.fusion import Calibration, CameraFusion, StreamStats
from plugins.learned import EventEvidence
from plugins.zones import ViewZones, Zone


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
    # Without error maps there is no evidence to show: no heatmap.
    assert [r["heatmap"] for r in records] == [None] * 4
    assert not list((tmp_path / "events" / "cam-1").glob("*.heatmap.jpg"))
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


def test_a_stream_that_restarts_after_hours_dates_its_alerts_by_the_clock_again() -> None:
    """A camera whose stream time restarts (a reconnect that resets pts) two hours on: its next alert is
    dated now, not two hours ago (the clock's offset is taken again; one given by the caller stays)."""
    pub = ListPublisher()
    now = [1_700_000_000.0]
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0, smoothing=1)
    cam = CameraAlerts("cam-1", "campus", policy, _fusion(), pub, clock=lambda: now[0])
    cam.update({"pixel": 0.0}, None, 100.0)
    now[0] += 7200.0
    cam.update({"pixel": 0.0}, None, 1.0)  # stream time went back: pts restarted at 0
    now[0] += 4.0
    cam.update({"pixel": 9.0}, None, 5.0)
    opened = [r for r in pub.records if r["status"] == "open"]
    assert len(opened) == 1
    assert opened[0]["start"] == "2023-11-15T00:13:24.000Z"  # now[0]; two hours earlier before the fix
    fixed = CameraAlerts("cam-2", "campus", policy, _fusion(), pub, clock=lambda: now[0], epoch_offset_s=0.0)
    fixed.update({"pixel": 0.0}, None, 100.0)
    fixed.update({"pixel": 9.0}, None, 5.0)
    assert pub.records[-1]["start"] == "1970-01-01T00:00:05.000Z"  # the caller's mapping, kept


# -- zones, peak box and evidence ------------------------------------------------------------------------


def _hot_maps(cell: tuple[int, int], value: float, shape: tuple[int, int] = (3, 4)) -> dict[str, np.ndarray]:
    """Maps at the normal level 0 with one hot cell."""
    m = np.zeros(shape, np.float32)
    m[cell] = value
    return {"pixel": m, "motion": m.copy()}


def _zones(alert_zones: list[str] | None = None) -> ViewZones:
    return ViewZones(
        zones=[
            Zone("left", ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0))),
            Zone("right", ((0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0))),
        ],
        alert_zones=alert_zones,
    )


def test_records_carry_the_peak_zone_and_box_and_save_evidence(tmp_path: Path) -> None:
    recorder = EventRecorder("cam-1", tmp_path, MediaConfig(clips=False), fps=10.0)
    pub = ListPublisher()
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0, smoothing=1)
    cam = CameraAlerts(
        "cam-1", "parking", policy, _fusion(), pub, recorder=recorder, zones=_zones(),
        evidence_dir=recorder.events_dir,
    )  # fmt: skip
    for i, value in enumerate([0.0, 5.0, 7.0, 6.0, 0.0]):
        t = i * 0.1
        cam.add_frame(np.zeros((240, 320, 3), np.uint8), t)
        maps = _hot_maps((1, 3), value)
        cam.update({"pixel": value, "motion": value}, None, t, maps=maps)
    _opened, closed = pub.records
    for r in pub.records:
        validate_alert(r)
        assert r["zone"] == "right"
    # Cell (1, 3) of a 3 x 4 grid: x 240..320, y 80..160 of the 320 x 240 snapshot frame.
    assert closed["peak_box"] == {"x0": 240, "y0": 80, "x1": 320, "y1": 160, "width": 320, "height": 240}
    evidence = EventEvidence.load(recorder.events_dir / f"{closed['alert_id']}.npz")
    assert evidence.peak_time == pytest.approx(0.2)
    assert evidence.maxima["motion"][1, 3] == 7.0
    assert evidence.peak["motion"][1, 3] == 7.0
    assert evidence.stats == {"pixel": (0.0, 1.0), "motion": (0.0, 1.0)}
    recorder.close()


def test_alert_zones_keep_alerts_to_the_peaks_inside_them() -> None:
    pub = ListPublisher()
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0, smoothing=1)
    cam = CameraAlerts("cam-1", "parking", policy, _fusion(), pub, zones=_zones(alert_zones=["left"]))
    # Strong on the right: no alert; the same on the left: an alert; moving back right closes it.
    for i, (cell, value) in enumerate(
        [((1, 3), 9.0), ((1, 3), 9.0), ((1, 0), 9.0), ((1, 0), 8.0), ((1, 3), 9.0)]
    ):
        fused, _ = cam.update({"pixel": value, "motion": value}, None, i * 0.1, maps=_hot_maps(cell, value))
        assert fused.score == value  # the score itself is not changed; only what may alert
    assert [(r["status"], r["zone"], r["start_pts"]) for r in pub.records] == [
        ("open", "left", pytest.approx(0.2)),
        ("closed", "left", pytest.approx(0.2)),
    ]
    assert pub.records[1]["end_pts"] == pytest.approx(0.4)
    # Without maps a restricted camera cannot place the peak: it does not alert.
    quiet = ListPublisher()
    blind = CameraAlerts("cam-2", "parking", policy, _fusion(), quiet, zones=_zones(alert_zones=["left"]))
    blind.update({"pixel": 9.0, "motion": 9.0}, None, 0.0)
    assert quiet.records == []
    # set_zones lifts the restriction from the next clip on.
    blind.set_zones(None)
    blind.update({"pixel": 9.0, "motion": 9.0}, None, 0.1)
    assert [(r["status"], r["zone"], r["peak_box"]) for r in quiet.records] == [("open", None, None)]


def test_the_peak_follows_the_fused_rule(tmp_path: Path) -> None:
    """Pixel is very hot on the left; on the right, pixel and motion are both warm. The mean adds the streams
    and puts the peak on the right (4.5 against 5); the max rule, which scores the clip by its strongest
    stream (9), puts the alert where that stream is: on the left. The saved evidence keeps the rule."""
    pixel = np.zeros((3, 4), np.float32)
    motion = np.zeros((3, 4), np.float32)
    pixel[1, 0], pixel[1, 3], motion[1, 3] = 9.0, 4.0, 6.0
    maps = {"pixel": pixel, "motion": motion}
    raw = {"pixel": 9.0, "motion": 6.0}
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0, smoothing=1)
    zones: dict[str, str] = {}
    for rule in ("mean", "max"):
        recorder = EventRecorder(f"cam-{rule}", tmp_path, MediaConfig(clips=False), fps=10.0)
        pub = ListPublisher()
        fusion = CameraFusion(f"cam-{rule}", _fusion().calibration, None, smoothing=1, rule=rule)
        cam = CameraAlerts(
            f"cam-{rule}", "parking", policy, fusion, pub, recorder=recorder, zones=_zones(),
            evidence_dir=recorder.events_dir,
        )  # fmt: skip
        fused, _ = cam.update(raw, None, 0.0, maps=maps)
        assert fused.score == (7.5 if rule == "mean" else 9.0)
        cam.update({"pixel": 0.0, "motion": 0.0}, None, 0.1, maps=_hot_maps((0, 0), 0.0))
        _opened, closed = pub.records
        validate_alert(closed)
        zones[rule] = closed["zone"]
        evidence = EventEvidence.load(recorder.events_dir / f"{closed['alert_id']}.npz")
        assert evidence.rule == rule
        recorder.close()
    assert zones == {"mean": "right", "max": "left"}


def test_each_alert_has_a_heatmap_of_its_peak_evidence_on_the_frame_the_maps_describe(tmp_path: Path) -> None:
    recorder = EventRecorder("cam-1", tmp_path, MediaConfig(clips=False), fps=10.0)
    pub = ListPublisher()
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0, smoothing=1)
    cam = CameraAlerts("cam-1", "parking", policy, _fusion(), pub, recorder=recorder)
    for i, value in enumerate([0.0, 5.0, 7.0, 6.0, 0.0]):
        t = i * 0.1
        cam.add_frame(np.full((240, 320, 3), 20 + 40 * i, np.uint8), t)
        maps = _hot_maps((1, 3), value)
        # Each clip's maps describe the frame before its end (a clip's first frame).
        cam.update({"pixel": value, "motion": value}, None, t, maps=maps, frame_t=max(0.0, t - 0.1))
        if value:
            assert cam.last_evidence is not None
            assert cam.last_evidence.location.cell == (1, 3)
    opened, closed = pub.records
    assert recorder.wait_idle(10)
    recorder.close()
    alert_id = closed["alert_id"]
    for r in (opened, closed):
        validate_alert(r)
        assert r["heatmap"] == f"events/cam-1/{alert_id}.heatmap.jpg"
        assert r["snapshot"] == f"events/cam-1/{alert_id}.jpg"
    # The peak (t 0.2) describes frame 1 (value 60): the snapshot and the heatmap are that frame.
    snap = np.asarray(Image.open(tmp_path / closed["snapshot"]).convert("RGB")).astype(int)
    heat = np.asarray(Image.open(tmp_path / closed["heatmap"]).convert("RGB")).astype(int)
    assert heat.shape == snap.shape == (240, 320, 3)
    assert abs(snap.mean() - 60) <= 2
    # Coloured on the peak cell (x 240..320, y 80..160: the record's peak box), the frame elsewhere.
    assert closed["peak_box"] == {"x0": 240, "y0": 80, "x1": 320, "y1": 160, "width": 320, "height": 240}
    assert np.abs(heat[110:130, 270:300] - snap[110:130, 270:300]).mean() > 40
    assert np.abs(heat[:60, :150] - snap[:60, :150]).max() <= 8  # JPEG noise only
    # The outline of the peak box is drawn where the record puts it (the left edge, x 240).
    assert heat[120, 240].min() > 200


def test_a_later_peak_without_evidence_takes_the_heatmap_back(tmp_path: Path) -> None:
    recorder = EventRecorder("cam-1", tmp_path, MediaConfig(clips=False), fps=10.0)
    pub = ListPublisher()
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0, smoothing=1)
    cam = CameraAlerts("cam-1", "parking", policy, _fusion(), pub, recorder=recorder)
    # Opens with maps, then its peak rises on a clip that came without maps, then it closes.
    for i, (value, with_maps) in enumerate([(5.0, True), (8.0, False), (0.0, True)]):
        t = i * 0.1
        cam.add_frame(np.full((48, 64, 3), 50, np.uint8), t)
        maps = _hot_maps((1, 3), value) if with_maps else None
        cam.update({"pixel": value, "motion": value}, None, t, maps=maps)
        assert recorder.wait_idle(10)
        if i == 0:
            heatmap = tmp_path / pub.records[0]["heatmap"]
            assert heatmap.is_file()
    opened, closed = pub.records
    recorder.close()
    assert opened["heatmap"] is not None
    assert closed["heatmap"] is None
    assert closed["peak_box"] is None
    assert not heatmap.exists()  # it showed an older peak than the record's
    assert (tmp_path / closed["snapshot"]).is_file()


def _calibrated_fusion(threshold: float | None, smoothing: int = 1) -> CameraFusion:
    cal = Calibration(
        streams={"pixel": StreamStats(0.0, 1.0, 100)}, threshold=threshold, threshold_smoothing=smoothing
    )
    return CameraFusion("cam-1", cal, None, smoothing=1)


def _opens_at(cam: CameraAlerts, score: float) -> bool:
    """Whether one clip at ``score`` opens an alert (min_duration 0)."""
    _, recs = cam.update({"pixel": score}, None, 0.0)
    return any(r["status"] == "open" for r in recs)


def test_calibrated_threshold_opens_at_the_calibrations_number() -> None:
    policy = AlertPolicy(on_threshold="calibrated", off_threshold=2.0, min_duration_s=0, smoothing=1)
    below = CameraAlerts("cam-1", "campus", policy, _calibrated_fusion(4.4), ListPublisher())
    above = CameraAlerts("cam-1", "campus", policy, _calibrated_fusion(4.4), ListPublisher())
    assert below.on_threshold == pytest.approx(4.4)
    assert not _opens_at(below, 4.3)
    assert _opens_at(above, 4.5)
    # Below the configured off threshold, the calibrated one pulls the off threshold down with it.
    low = CameraAlerts("cam-1", "campus", policy, _calibrated_fusion(1.5), ListPublisher())
    assert (low.policy.on_threshold, low.policy.off_threshold) == (1.5, 1.5)


def test_calibrated_threshold_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    policy = AlertPolicy(on_threshold="calibrated", smoothing=1)
    for fusion in (_calibrated_fusion(None), CameraFusion("cam-1", None, None, smoothing=1)):
        caplog.clear()
        cam = CameraAlerts("cam-1", "campus", policy, fusion, None)
        assert cam.on_threshold == FALLBACK_ON_THRESHOLD
        assert "no calibration threshold" in caplog.text


def test_a_calibrated_threshold_of_zero_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Calibration footage on which nothing moved fuses to 0: opening at 0 (and closing below it), an alert
    opened on that same normal footage and never closed."""
    policy = AlertPolicy(on_threshold="calibrated", smoothing=1)
    cam = CameraAlerts("cam-1", "campus", policy, _calibrated_fusion(0.0), None)
    assert cam.on_threshold == FALLBACK_ON_THRESHOLD
    assert "not above 0" in caplog.text


def test_calibrated_threshold_for_another_smoothing_is_used_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = AlertPolicy(on_threshold="calibrated", smoothing=3)
    cam = CameraAlerts("cam-1", "campus", policy, _calibrated_fusion(4.0, smoothing=1), None)
    assert cam.on_threshold == 4.0
    assert "computed for alerts.smoothing 1, the camera smooths 3" in caplog.text


def test_a_numeric_threshold_ignores_the_calibration() -> None:
    policy = AlertPolicy(on_threshold=3.0, off_threshold=2.0, smoothing=1)
    cam = CameraAlerts("cam-1", "campus", policy, _calibrated_fusion(4.4), None)
    assert cam.on_threshold == 3.0
    assert resolve_policy(policy, None, "cam-1") is policy


def test_an_unresolved_policy_is_refused_by_the_alert_machine() -> None:
    with pytest.raises(AlertPolicyError, match="not resolved"):
        alert_params(AlertPolicy(on_threshold="calibrated"))


def test_calibrated_threshold_under_another_fusion_rule_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    cal = Calibration(streams={"pixel": StreamStats(0.0, 1.0, 100)}, threshold=4.0, rule="max")
    fusion = CameraFusion("cam-1", cal, None, smoothing=1, rule="mean")
    cam = CameraAlerts("cam-1", "campus", AlertPolicy(on_threshold="calibrated", smoothing=1), fusion, None)
    assert cam.on_threshold == 4.0
    assert "computed for the fusion rule max, the camera fuses by mean" in caplog.text
    caplog.clear()
    CameraAlerts(
        "cam-1", "campus", AlertPolicy(on_threshold="calibrated", smoothing=1), _calibrated_fusion(4.0), None
    )
    assert "fusion rule" not in caplog.text


def test_calibrated_record_carries_the_number_in_force() -> None:
    pub = ListPublisher()
    policy = AlertPolicy(on_threshold="calibrated", off_threshold=2.0, min_duration_s=0, smoothing=1)
    cam = CameraAlerts("cam-1", "campus", policy, _calibrated_fusion(4.4), pub)
    cam.update({"pixel": 5.0}, None, 0.0)
    assert pub.records
    assert {r["threshold"] for r in pub.records} == {4.4}
