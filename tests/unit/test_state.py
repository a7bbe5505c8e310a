"""RunState: camera states, fps, bounded score history, alerts, review labels and their persistence."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.outputs.alert_schema import example_record, validate_alert
from pipeline.outputs.state import (
    LabelError,
    RunState,
    StateError,
    UnknownAlertError,
    parse_time,
)

T0 = parse_time("2024-05-01T12:00:00Z")


def record(
    camera: str = "cam-a",
    start_s: float = 0.0,
    duration_s: float | None = 5.0,
    *,
    alert_id: str | None = None,
    prompt: str | None = "a person climbing over a fence",
) -> dict[str, Any]:
    """A valid alert record starting ``start_s`` after 12:00:00 UTC; open when ``duration_s`` is None."""
    rec = example_record()
    rec.update(
        alert_id=alert_id or str(uuid.uuid4()),
        camera=camera,
        start=_iso(T0 + start_s),
        start_pts=100.0 + start_s,
        peak_time=100.0 + start_s,
        prompt=prompt,
    )
    if duration_s is None:
        rec.update(status="open", end=None, end_pts=None, reason=None)
    else:
        rec.update(end=_iso(T0 + start_s + duration_s), end_pts=100.0 + start_s + duration_s)
    rec["snapshot"] = f"events/{camera}/{rec['alert_id']}.jpg"
    rec["clip"] = f"events/{camera}/{rec['alert_id']}.mp4"
    validate_alert(rec)
    return rec


def _iso(epoch: float) -> str:
    from pipeline.outputs.alert_schema import iso_utc

    return iso_utc(epoch)


def test_parse_time_accepts_iso_and_epoch() -> None:
    assert parse_time("2024-05-01T12:00:00Z") == T0
    assert parse_time("2024-05-01T14:00:00+02:00") == T0
    assert parse_time("2024-05-01T12:00:00") == T0  # naive means UTC
    assert parse_time("2024-05-01T12:00:00.123456789Z") == pytest.approx(T0 + 0.123456)
    assert parse_time(str(T0)) == T0
    assert parse_time(T0) == T0
    with pytest.raises(StateError, match="neither epoch seconds nor ISO 8601"):
        parse_time("yesterday")
    with pytest.raises(StateError, match="not finite"):
        parse_time(float("nan"))
    for text in ("nan", "inf", "-Infinity"):  # float() reads them from text too
        with pytest.raises(StateError, match="not finite"):
            parse_time(text)


@pytest.mark.parametrize(
    ("fraction", "seconds"),
    [
        ("5", 0.5),
        ("25", 0.25),
        ("1250", 0.125),
        ("12345", 0.12345),
        ("1234567", 0.123456),
        ("123456789", 0.123456),
    ],
)
def test_parse_time_takes_fractions_of_any_length(fraction: str, seconds: float) -> None:
    """Python 3.10's fromisoformat takes a fraction of exactly 3 or 6 digits only: anything else is padded
    or cut to 6 first (the text it is given is checked too, since the interpreter running the tests may be
    a newer one that takes any length)."""
    from pipeline.outputs.alert_schema import fromisoformat_text

    assert parse_time(f"2024-05-01T12:00:00.{fraction}Z") == pytest.approx(T0 + seconds, abs=1e-9)
    assert parse_time(f"2024-05-01 14:00:00.{fraction}+02:00") == pytest.approx(T0 + seconds, abs=1e-9)
    six = f"{fraction}000000"[:6]
    assert fromisoformat_text(f"2024-05-01T12:00:00.{fraction}Z") == f"2024-05-01T12:00:00.{six}+00:00"
    assert fromisoformat_text(f"2024-05-01 12:00:00.{fraction}z") == f"2024-05-01 12:00:00.{six}+00:00"


def test_camera_lifecycle_and_states(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    state.add_camera("cam-a", "campus", "rtsp://***@10.0.0.5/live", threshold=3.0)
    state.add_camera("cam-b", "parking", "file:///x.mp4")
    [a, b] = state.cameras()
    assert (a["id"], a["context"], a["state"], a["threshold"], a["score"]) == (
        "cam-a",
        "campus",
        "starting",
        3.0,
        None,
    )
    assert b["threshold"] is None
    state.set_camera_state("cam-a", "reconnecting", "connection refused")
    a = state.cameras()[0]
    assert (a["state"], a["detail"]) == ("reconnecting", "connection refused")
    with pytest.raises(StateError, match="not one of"):
        state.set_camera_state("cam-a", "sleeping", "")
    # Events for a camera removed while they were in flight are dropped, not raised into GStreamer threads.
    state.remove_camera("cam-b")
    state.set_camera_state("cam-b", "live", "")
    state.frame_in("cam-b")
    state.add_score("cam-b", 1.0, 0.5, {}, {})
    assert [c["id"] for c in state.cameras()] == ["cam-a"]
    with pytest.raises(KeyError):
        state.scores("cam-b")


def test_an_uncalibrated_camera_says_so_in_its_detail(tmp_path: Path) -> None:
    """The review page shows ``detail`` on each camera card: an uncalibrated camera's says it cannot be
    expected to alert, after whatever its state says."""
    state = RunState(tmp_path)
    state.add_camera("cal", "campus", "file:///a.mp4")
    state.add_camera("raw", "campus", "file:///b.mp4", calibrated=False)
    cal, raw = state.cameras()
    assert (cal["calibrated"], cal["detail"]) == (True, "")
    assert raw["calibrated"] is False
    assert raw["detail"] == "uncalibrated: expect no alerts until `zsad calibrate`"
    state.set_camera_state("raw", "eos", "end of file")
    assert (
        state.cameras()[1]["detail"] == "end of file · uncalibrated: expect no alerts until `zsad calibrate`"
    )


def test_run_outputs_mark_cameras_without_a_readable_calibration(tmp_path: Path) -> None:
    from core.config import parse_config
    from pipeline.outputs.hub import RunOutputs
    from plugins.fusion import Calibration, save_calibration

    save_calibration(Calibration.identity_for("good"), tmp_path / "good.json")
    cfg = parse_config(
        json.dumps(
            {
                "cameras": [
                    {"id": "good", "uri": "file:///a.mp4", "calibration": str(tmp_path / "good.json")},
                    {"id": "none", "uri": "file:///b.mp4"},
                    {"id": "gone", "uri": "file:///c.mp4", "calibration": str(tmp_path / "gone.json")},
                ],
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    outputs = RunOutputs(cfg, model_id="test", gate_path=None)
    try:
        assert {c["id"]: c["calibrated"] for c in outputs.run_state.cameras()} == {
            "good": True,
            "none": False,
            "gone": False,
        }
    finally:
        outputs.shutdown()


def test_fps_is_measured_over_a_sliding_window(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    state.add_camera("cam", "generic", "loop://")
    for i in range(50):  # 10 fps for 4.9 s
        state.frame_in("cam", 100.0 + i * 0.1)
    cam = state.cameras(now_monotonic=104.95)[0]
    assert cam["fps"] == pytest.approx(10.0, abs=0.01)
    assert cam["frames"] == 50
    # Once the frames stop, the rate falls to 0 within the window instead of freezing at the last value.
    assert state.cameras(now_monotonic=120.0)[0]["fps"] == 0.0


def test_score_history_is_bounded_in_time_and_count(tmp_path: Path) -> None:
    state = RunState(tmp_path, history_s=10.0, max_points=15)
    state.add_camera("cam", "generic", "loop://")
    for i in range(40):
        state.add_score("cam", i * 0.5, float(i), {"pixel": 0.1 * i}, {"pixel": 1.0})
    pts = state.scores("cam")
    assert len(pts) == 15  # the count bound is tighter than 10 s / 0.5 s
    assert (pts[0]["t"], pts[-1]["t"]) == (12.5, 19.5)
    state2 = RunState(tmp_path, history_s=3.0)
    state2.add_camera("cam", "generic", "loop://")
    for i in range(40):
        state2.add_score("cam", i * 0.5, float(i), {}, {})
    assert [p["t"] for p in state2.scores("cam")] == [16.5, 17.0, 17.5, 18.0, 18.5, 19.0, 19.5]
    assert [p["t"] for p in state2.scores("cam", since_t=18.5)] == [19.0, 19.5]
    cam = state2.cameras()[0]
    assert (cam["score"], cam["score_t"]) == (39.0, 19.5)


def test_scores_keep_contributions_and_make_non_finite_values_null(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    state.add_camera("cam", "generic", "loop://")
    state.add_score("cam", 1.0, float("nan"), {"pixel": float("inf"), "motion": 0.25}, {"pixel": 2.0})
    [p] = state.scores("cam")
    assert p["score"] is None
    assert p["contributions"] == {"pixel": None, "motion": 0.25}
    assert p["streams"] == {"pixel": 2.0}
    json.dumps(p, allow_nan=False)  # the browser's JSON.parse rejects NaN


def test_history_restarts_when_stream_time_goes_back(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    state.add_camera("cam", "generic", "loop://")
    for t in (50.0, 51.0, 52.0):
        state.add_score("cam", t, 1.0, {}, {})
    state.add_score("cam", 0.5, 2.0, {}, {})
    assert [p["t"] for p in state.scores("cam")] == [0.5]


def test_alerts_update_by_id_and_sort_newest_first(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    first = record("cam-a", 0.0)
    second_open = record("cam-b", 60.0, None)
    third = record("cam-a", 120.0)
    for rec in (first, second_open, third):
        state.add_alert(rec)
    assert [a["alert_id"] for a in state.alerts()] == [
        third["alert_id"],
        second_open["alert_id"],
        first["alert_id"],
    ]
    assert state.alert(second_open["alert_id"])["status"] == "open"
    assert state.alert(second_open["alert_id"])["duration_s"] is None
    closed = record("cam-b", 60.0, 8.0, alert_id=second_open["alert_id"])
    state.add_alert(closed)
    assert state.alert(closed["alert_id"])["status"] == "closed"
    assert state.alert(closed["alert_id"])["duration_s"] == pytest.approx(8.0)
    # A redelivered open record (after a restart) must not reopen a closed alert.
    state.add_alert({**second_open, "redelivered": True})
    assert state.alert(closed["alert_id"])["status"] == "closed"
    assert len(state.alerts()) == 3
    with pytest.raises(UnknownAlertError):
        state.alert("nope")
    with pytest.raises(StateError, match="status"):
        state.add_alert({**first, "status": "maybe"})


def test_alert_filters_by_camera_time_window_label_and_limit(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    a0 = record("cam-a", 0.0, 10.0)  # 12:00:00 - 12:00:10
    b1 = record("cam-b", 100.0, 5.0)  # 12:01:40 - 12:01:45
    a2 = record("cam-a", 200.0, None)  # 12:03:20 - now (open)
    for rec in (a0, b1, a2):
        state.add_alert(rec)
    ids = lambda alerts: [a["alert_id"] for a in alerts]  # noqa: E731
    assert ids(state.alerts(camera="cam-a")) == [a2["alert_id"], a0["alert_id"]]
    # Overlap: an alert that started before 'since' but was still going counts.
    assert ids(state.alerts(since=T0 + 5.0, until=T0 + 100.0)) == [b1["alert_id"], a0["alert_id"]]
    assert ids(state.alerts(since=T0 + 11.0, until=T0 + 99.0)) == []
    assert ids(state.alerts(since=T0 + 1e6)) == [a2["alert_id"]]  # still open, so it lasts until now
    assert ids(state.alerts(limit=1)) == [a2["alert_id"]]
    state.set_label(b1["alert_id"], "false_alarm")
    assert ids(state.alerts(label="false_alarm")) == [b1["alert_id"]]
    assert ids(state.alerts(label="none")) == [a2["alert_id"], a0["alert_id"]]


def test_camera_summary_shows_open_alert(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    state.add_camera("cam-a", "campus", "loop://")
    open_rec = record("cam-a", 30.0, None)
    state.add_alert(open_rec)
    cam = state.cameras()[0]
    assert cam["open_alert"] == open_rec["alert_id"]
    assert cam["last_alert_start"] == open_rec["start"]
    state.add_alert(record("cam-a", 30.0, 2.0, alert_id=open_rec["alert_id"]))
    assert state.cameras()[0]["open_alert"] is None


def test_labels_persist_atomically_across_instances(tmp_path: Path) -> None:
    rec = record()
    (tmp_path / "alerts.jsonl").write_text(json.dumps(rec) + "\n")
    state = RunState(tmp_path)
    assert state.load_existing() == 1
    review = state.set_label(rec["alert_id"], "ack", "  delivery van, expected  ")
    assert review is not None
    assert (review["label"], review["note"]) == ("ack", "delivery van, expected")
    assert not list(tmp_path.glob(".*.part"))  # the temporary file was renamed into place
    on_disk = json.loads((tmp_path / "review_labels.json").read_text())
    assert on_disk["version"] == 1
    assert on_disk["labels"][rec["alert_id"]]["label"] == "ack"

    again = RunState(tmp_path)
    again.load_existing()
    assert again.alert(rec["alert_id"])["review"]["label"] == "ack"
    assert again.alert(rec["alert_id"])["review"]["note"] == "delivery van, expected"
    assert again.set_label(rec["alert_id"], None) is None
    assert RunState(tmp_path).labels() == {}

    with pytest.raises(LabelError, match="not one of"):
        again.set_label(rec["alert_id"], "maybe")
    with pytest.raises(LabelError, match="at most"):
        again.set_label(rec["alert_id"], "ack", "x" * 5000)
    with pytest.raises(UnknownAlertError):
        again.set_label("0000", "ack")


def test_corrupt_labels_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "review_labels.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="pipeline.outputs.state"):
        state = RunState(tmp_path)
    assert state.labels() == {}
    assert "cannot read review labels" in caplog.text
    assert list(tmp_path.glob("review_labels.json.corrupt-*"))


def test_load_existing_skips_malformed_lines_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good_open = record("cam-a", 0.0, None)
    good_closed = record("cam-a", 0.0, 4.0, alert_id=good_open["alert_id"])
    other = record("cam-b", 50.0, 1.0)
    lines = [
        json.dumps(good_open),
        "{this is not json",
        json.dumps([1, 2, 3]),
        json.dumps({**other, "start": "not a time"}),
        json.dumps({k: v for k, v in other.items() if k != "alert_id"}),
        "",
        json.dumps(good_closed),
        json.dumps(other),
        '{"alert_id": "torn", "camera": "cam',  # a torn last line
        json.dumps({**other, "alert_id": "nan-peak", "peak_score": float("nan")}),  # Python writes NaN
        # Nested, and a literal too large for a float (it reads as inf): as unservable.
        json.dumps(
            {**other, "alert_id": "inf-box", "peak_box": {"x0": 1, "y0": 2, "x1": 3, "y1": 4}}
        ).replace('"x0": 1', '"x0": 1e400'),
    ]
    (tmp_path / "alerts.jsonl").write_text("\n".join(lines) + "\n")
    state = RunState(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.outputs.state"):
        taken = state.load_existing()
    assert taken == 3
    assert [a["alert_id"] for a in state.alerts()] == [other["alert_id"], good_open["alert_id"]]
    assert state.alert(good_open["alert_id"])["status"] == "closed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 7
    assert "alerts.jsonl:2" in warnings[0].getMessage()
    # NaN is not JSON (Python reads it): such an alert could never be served, the API's numbers being finite.
    assert "NaN is not a finite number" in warnings[-2].getMessage()
    assert "1e400 is not a finite number" in warnings[-1].getMessage()
    assert not {"nan-peak", "inf-box"} & {a["alert_id"] for a in state.alerts()}
    # The same held by a record added live (the alert machine's, a sink's replay): refused, nested too.
    with pytest.raises(StateError, match=r"contributions\.pixel inf is not a finite number"):
        state.add_alert({**other, "alert_id": "live-inf", "contributions": {"pixel": float("inf")}})
    assert RunState(tmp_path / "missing").load_existing() == 0


def test_alerts_in_memory_are_bounded(tmp_path: Path) -> None:
    state = RunState(tmp_path, max_alerts=3)
    recs = [record("cam", float(i) * 10, 1.0) for i in range(5)]
    for rec in recs:
        state.add_alert(rec)
    assert [a["alert_id"] for a in state.alerts()] == [r["alert_id"] for r in reversed(recs[2:])]


def test_bad_construction_arguments(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="history_s"):
        RunState(tmp_path, history_s=0)
    with pytest.raises(StateError, match="max_points"):
        RunState(tmp_path, max_points=1)


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    """Smoke test: camera threads, the scheduler and web readers at once; nothing raises, nothing is lost."""
    state = RunState(tmp_path, history_s=1e9, max_points=100_000)
    cams = [f"cam-{i}" for i in range(4)]
    for cam in cams:
        state.add_camera(cam, "generic", "loop://")
    alerts = [record(cams[i % 4], float(i), 1.0) for i in range(40)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def guard(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        return run

    def writer(cam: str) -> None:
        for i in range(2000):
            state.frame_in(cam)
            state.add_score(cam, i * 0.01, float(i), {"pixel": 1.0}, {"pixel": 2.0})
            if i % 200 == 0:
                state.set_camera_state(cam, "live" if i % 400 == 0 else "reconnecting", f"step {i}")

    def alerter() -> None:
        for rec in alerts:
            state.add_alert(rec)
            state.set_label(rec["alert_id"], "ack")

    def reader() -> None:
        while not stop.is_set():
            state.cameras()
            state.alerts(limit=1000)
            for cam in cams:
                state.scores(cam, since_t=5.0)

    threads = [threading.Thread(target=guard(lambda c=c: writer(c))) for c in cams]
    threads.append(threading.Thread(target=guard(alerter)))
    readers = [threading.Thread(target=guard(reader)) for _ in range(2)]
    for t in readers + threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    for t in readers:
        t.join(timeout=10)
    assert errors == []
    for cam in state.cameras():
        assert cam["frames"] == 2000
        assert len(state.scores(cam["id"])) == 2000
    assert len(state.alerts(limit=1000)) == 40
    assert len(RunState(tmp_path).labels()) == 40


def test_alerts_filter_by_zone_and_cameras_show_zones_and_learning(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    road, outside = record("cam-a", 0.0, 1.0), record("cam-a", 10.0, 1.0)
    road["zone"], outside["zone"] = "road", None
    for rec in (road, outside):
        state.add_alert(rec)
    assert [a["alert_id"] for a in state.alerts(zone="road")] == [road["alert_id"]]
    assert [a["alert_id"] for a in state.alerts(zone="none")] == [outside["alert_id"]]
    assert state.alerts(zone="gate") == []
    state.add_camera("cam-a", "campus", "loop://")
    assert state.cameras()[0]["zones"] == {"names": [], "alert_zones": None, "masks": 0}
    assert state.cameras()[0]["learned"] is None
    state.set_camera_zones("cam-a", ["road", "lawn"], ["road"], 2)
    state.set_camera_learning("cam-a", {"labels": 1, "version": 3, "updated": "2024-05-01T12:00:00.000Z"})
    cam = state.cameras()[0]
    assert cam["zones"] == {"names": ["road", "lawn"], "alert_zones": ["road"], "masks": 2}
    assert cam["learned"]["labels"] == 1
    state.set_camera_zones("nobody", [], None, 0)  # an unknown camera is ignored


def test_label_listeners_hear_label_changes_only(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    rec = record()
    state.add_alert(rec)
    heard: list[tuple[str, str | None, str | None]] = []
    state.add_label_listener(lambda r, before, after: heard.append((r["alert_id"], before, after)))
    state.set_label(rec["alert_id"], "false_alarm")
    state.set_label(rec["alert_id"], "false_alarm", "a flag")  # a note only: no label change
    state.set_label(rec["alert_id"], None)
    state.set_label(rec["alert_id"], "ack")
    aid = rec["alert_id"]
    assert heard == [(aid, None, "false_alarm"), (aid, "false_alarm", None), (aid, None, "ack")]


def test_run_outputs_show_which_streams_each_camera_trusts(tmp_path: Path) -> None:
    """/api/cameras and the metrics say, per camera, the fusion rule in force and each stream's reliability
    weight with its reason, from the camera's calibration file; a camera's config can change the rule."""
    from core.config import parse_config
    from pipeline.outputs.hub import RunOutputs
    from plugins.fusion import fit_calibration, save_calibration, time_folds

    rng = np.random.default_rng(0)
    n = 300
    samples = {"motion": rng.normal(0.2, 0.02, n), "pixel": 0.1 + 0.01 * rng.standard_t(1.5, n)}
    # Pasted movers: motion catches every one, pixel half (a factor recorded, not applied).
    probes = {"mover": {"motion": np.full(20, 1.0), "pixel": np.r_[np.full(10, 5.0), np.full(10, 0.1)]}}
    save_calibration(fit_calibration(samples, time_folds(n), camera="a", probes=probes), tmp_path / "a.json")
    cfg = parse_config(
        json.dumps(
            {
                "cameras": [
                    {"id": "a", "uri": "file:///a.mp4", "calibration": str(tmp_path / "a.json")},
                    {
                        "id": "b",
                        "uri": "file:///b.mp4",
                        "calibration": str(tmp_path / "a.json"),
                        "fusion": {"rule": "mean"},
                    },
                    {"id": "raw", "uri": "file:///c.mp4"},
                ],
                "metrics": {"enabled": False},
                "ui": {"enabled": False},
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    outputs = RunOutputs(cfg, model_id="test", gate_path=None)
    try:
        cams = {c["id"]: c for c in outputs.run_state.cameras()}
        assert cams["a"]["trust"]["rule"] == "max"
        assert cams["b"]["trust"]["rule"] == "mean"
        rows = {r["stream"]: r for r in cams["a"]["trust"]["streams"]}
        assert rows["motion"]["verdict"] == "trusted"
        assert rows["pixel"]["verdict"] == "weighed down"
        assert rows["pixel"]["reason"].startswith("held-out 99th pct z ")
        # What the pasted pseudo-anomalies said of each stream (docs/api.md).
        assert rows["motion"]["probe_recall"] == {"mover": 1.0}
        assert rows["motion"]["sensitivity"] == 1.0
        assert rows["pixel"]["probe_recall"] == {"mover": 0.5}
        assert rows["pixel"]["sensitivity"] == 0.5
        assert cams["raw"]["trust"] == {"rule": "mean", "streams": [], "agreement": None}
        # The max rule's agreement term in force: a's own; b fuses by the mean, so none.
        assert cams["a"]["trust"]["agreement"]["streams"] == ["motion", "pixel"]
        assert cams["a"]["trust"]["agreement"]["slope"] > 0
        assert cams["b"]["trust"]["agreement"] is None
        assert outputs.metrics.stream_weight.value(camera="a", stream="pixel") == pytest.approx(
            rows["pixel"]["weight"]
        )
        assert "zsad_stream_weight{" in outputs.metrics.render()
        outputs.remove_camera("a")
        assert {key for _, key, _ in outputs.metrics.stream_weight.samples()} == {
            ("b", "motion"),
            ("b", "pixel"),
        }
    finally:
        outputs.shutdown()
