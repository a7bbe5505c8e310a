"""RunOutputs' zones and feedback without a camera graph: clips scored elsewhere (the DeepStream graph's
scorer has no filters) are masked all the same, false-alarm labels teach and un-teach the camera, and broken
overrides or learned stores leave the camera running without them (pipeline/outputs/hub.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.outputs.hub import RunOutputs, learned_dir
from plugins.fusion import fit_calibration, save_calibration
from plugins.scorer import StreamScores
from tests.fixtures.hub_outputs import alerting_outputs

CAMERA = "dock"
LEFT_HALF = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]


def _outputs(tmp_path: Path, **camera: Any) -> RunOutputs:
    return alerting_outputs(tmp_path, CAMERA, **camera)


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    """Normal level 0.1 with a spread of 0.01 on both map streams."""
    rng = np.random.default_rng(0)
    samples = {s: 0.1 + 0.01 * rng.standard_normal(200) for s in ("pixel", "motion")}
    path = tmp_path / "calib" / "dock.json"
    save_calibration(fit_calibration(samples, camera=CAMERA), path)
    return path


@pytest.fixture
def outputs(tmp_path: Path, calibration: Path) -> Iterator[RunOutputs]:
    out = _outputs(tmp_path, calibration=str(calibration))
    yield out
    out.shutdown()


def _clip(index: int, hot: tuple[int, int] | None, value: float = 1.0) -> StreamScores:
    """A clip scored by a scorer without filters: raw maxima, filter version 0."""
    m = np.full((2, 4), 0.1, np.float32)
    if hot is not None:
        m[hot] = value
    maps = {"pixel": m, "motion": m.copy()}
    return StreamScores(
        CAMERA, index, {k: float(v.max()) for k, v in maps.items()}, maps, np.zeros(4, np.float32)
    )


def _feed(out: RunOutputs, clips: list[StreamScores], t0: float) -> list[dict[str, Any]]:
    for i, clip in enumerate(clips):
        out.display_frame(CAMERA, np.zeros((24, 32, 3), np.uint8), t0 + i * 0.4)
        out.clip_scored(CAMERA, t0 + i * 0.4, clip, None, frames=2)
    return [a for a in out.run_state.alerts(camera=CAMERA, limit=1000) if a["start_pts"] >= t0]


def test_clips_scored_without_the_filter_are_masked_by_the_hub(tmp_path: Path, calibration: Path) -> None:
    out = _outputs(tmp_path, calibration=str(calibration), mask=[LEFT_HALF])
    try:
        clip = _clip(0, hot=(0, 1))  # hot, but under the mask
        out.clip_scored(CAMERA, 0.0, clip, None, frames=2)
        assert clip.filter_version == out.filters.get(CAMERA).version  # type: ignore[union-attr]
        assert clip.scores["motion"] == pytest.approx(0.1)
        assert out.run_state.alerts(camera=CAMERA) == []
        alerts = _feed(out, [_clip(i, hot=(1, 3)) for i in range(1, 4)], 1.0)  # hot on the right: alerts
        assert [a["status"] for a in alerts] == ["open"]
        assert alerts[0]["peak_box"]["x0"] == 24  # the last of 4 columns of a 32-pixel frame
    finally:
        out.shutdown()


def test_false_alarm_learns_and_taking_it_back_forgets(outputs: RunOutputs) -> None:
    flag = [_clip(0, None), _clip(1, (0, 1)), _clip(2, (0, 1)), _clip(3, None)]
    first = _feed(outputs, flag, 0.0)
    assert [a["status"] for a in first] == ["closed"]
    alert_id = first[0]["alert_id"]
    evidence = outputs.out / "events" / CAMERA / f"{alert_id}.npz"
    assert evidence.is_file()
    version = outputs.filters.get(CAMERA).version  # type: ignore[union-attr]

    outputs.run_state.set_label(alert_id, "false_alarm")
    learning = outputs.camera_learning(CAMERA)
    assert (learning["labels"], learning["version"], learning["alerts"]) == (1, 1, [alert_id])
    assert outputs.filters.get(CAMERA).version > version  # type: ignore[union-attr]
    assert outputs.run_state.cameras()[0]["learned"]["labels"] == 1
    assert Path(learning["dir"]) == learned_dir(outputs._settings[CAMERA], outputs.out)
    # The same flag again: no alert. Something else on the right: an alert.
    assert _feed(outputs, flag, 10.0) == []
    other = _feed(outputs, [_clip(0, None), _clip(1, (1, 3)), _clip(2, None)], 20.0)
    assert [a["status"] for a in other] == ["closed"]
    # A note-only change does nothing; taking the label back restores the alarms.
    outputs.run_state.set_label(alert_id, "false_alarm", "the flag")
    assert outputs.camera_learning(CAMERA)["version"] == 1
    outputs.run_state.set_label(alert_id, "ack")
    assert outputs.camera_learning(CAMERA)["labels"] == 0
    assert [a["status"] for a in _feed(outputs, flag, 30.0)] == ["closed"]
    assert outputs.metrics.feedback_labels.value(camera=CAMERA, action="learn") == 1
    assert outputs.metrics.feedback_labels.value(camera=CAMERA, action="forget") == 1


def test_a_label_without_evidence_is_stored_only(
    outputs: RunOutputs, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = _feed(outputs, [_clip(0, None), _clip(1, (0, 1)), _clip(2, None)], 0.0)
    alert_id = alerts[0]["alert_id"]
    (outputs.out / "events" / CAMERA / f"{alert_id}.npz").unlink()  # retention took it
    with caplog.at_level(logging.WARNING, logger="pipeline.outputs.hub"):
        outputs.run_state.set_label(alert_id, "false_alarm")
    assert "no evidence saved" in caplog.text
    assert outputs.camera_learning(CAMERA)["labels"] == 0
    assert outputs.run_state.labels()[alert_id]["label"] == "false_alarm"


def test_broken_overrides_and_store_leave_the_camera_running(
    tmp_path: Path, calibration: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tmp_path / "out" / "overrides" / f"{CAMERA}.yaml"
    overrides.parent.mkdir(parents=True)
    overrides.write_text("alert_zones: [nowhere]\n")
    store = calibration.with_name("dock.learned")
    store.mkdir()
    (store / "index.json").write_text("{broken")
    with caplog.at_level(logging.WARNING):
        out = _outputs(tmp_path, calibration=str(calibration))
    try:
        assert f"{overrides}:1: alert_zones" in caplog.text
        assert "learned normal levels ignored" in caplog.text
        assert out.camera_zones(CAMERA)["alert_zones"] is None
        assert out.camera_learning(CAMERA)["enabled"] is False
        assert out.run_state.cameras()[0]["learned"] is None
        alerts = _feed(out, [_clip(0, None), _clip(1, (0, 1)), _clip(2, None)], 0.0)
        assert [a["status"] for a in alerts] == ["closed"]  # it runs, and alerts, without them
    finally:
        out.shutdown()
