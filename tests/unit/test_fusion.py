"""Score fusion: robust calibration, the gate's masked softmax, weighted fusion, smoothing, file I/O."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from plugins.fusion import (
    Calibration,
    CalibrationError,
    CameraFusion,
    GateError,
    StreamGate,
    StreamStats,
    TemporalSmoother,
    calibrate,
    fit_calibration,
    fuse,
    load_calibration,
    save_calibration,
)


def _normal_samples(n: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "predictive": rng.normal(5.0, 2.0, n),
        "pixel": rng.normal(0.01, 0.002, n),
        "motion": rng.normal(100.0, 10.0, n),
    }


def test_fit_calibration_recovers_median_and_sigma() -> None:
    cal = fit_calibration(_normal_samples(), threshold_quantile=0.99)
    assert cal.streams["predictive"].location == pytest.approx(5.0, abs=0.15)
    assert cal.streams["predictive"].scale == pytest.approx(2.0, rel=0.1)
    assert cal.streams["pixel"].scale == pytest.approx(0.002, rel=0.1)
    assert cal.streams["motion"].n == 2000
    assert cal.n_samples == 2000
    # Uniform fusion of three unit normals has std 1/sqrt(3); its 99% quantile is ~2.33/sqrt(3).
    assert cal.threshold == pytest.approx(2.326 / np.sqrt(3), rel=0.15)


def test_robust_to_outliers_in_normal_footage() -> None:
    x = np.concatenate([np.random.default_rng(1).normal(0, 1, 1000), np.full(50, 1e6)])
    cal = fit_calibration({"motion": x})
    assert abs(cal.streams["motion"].location) < 0.2
    assert cal.streams["motion"].scale < 1.5


def test_scale_floors_for_constant_streams() -> None:
    cal = fit_calibration({"a": np.zeros(10), "b": np.full(10, 50.0)})
    assert cal.streams["a"].scale == pytest.approx(1e-6)
    assert cal.streams["b"].scale == pytest.approx(0.05)  # 1e-3 * |median|
    z = calibrate({"a": 1e-6, "b": 50.05}, cal)
    assert z == pytest.approx({"a": 1.0, "b": 1.0})


def test_unaligned_samples_have_no_threshold() -> None:
    cal = fit_calibration({"a": np.arange(10.0), "b": np.arange(20.0)})
    assert cal.threshold is None
    assert cal.n_samples == 20


def test_fit_rejects_empty_and_all_nan() -> None:
    with pytest.raises(CalibrationError):
        fit_calibration({})
    with pytest.raises(CalibrationError, match="'pixel'"):
        fit_calibration({"pixel": np.array([np.nan, np.inf])})


def test_calibrate_z_scores_and_drops_unknown_and_nonfinite(caplog: pytest.LogCaptureFixture) -> None:
    cal = Calibration(
        streams={"pixel": StreamStats(1.0, 2.0, 10), "motion": StreamStats(0.0, 0.5, 10)}, camera="camZ"
    )
    with caplog.at_level(logging.WARNING):
        z = calibrate({"pixel": 5.0, "motion": float("nan"), "semantic": 3.0}, cal)
        calibrate({"semantic": 3.0}, cal)
    assert z == {"pixel": 2.0}
    assert sum("semantic" in r.getMessage() for r in caplog.records) == 1


def test_identity_calibration_passes_through() -> None:
    z = calibrate({"pixel": 5.0, "motion": -1.0}, Calibration.identity_for("x"))
    assert z == {"pixel": 5.0, "motion": -1.0}


def test_calibration_json_round_trip(tmp_path: Path) -> None:
    cal = fit_calibration(_normal_samples(200), threshold_quantile=0.95, camera="cam-1")
    path = tmp_path / "sub" / "cam-1.json"
    save_calibration(cal, path)
    back = load_calibration(path)
    assert back == cal
    assert json.loads(path.read_text())["streams"]["pixel"]["n"] == 200


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level must be an object"),
        ('{"version": 2, "streams": {}}', "unsupported calibration version"),
        ('{"version": 1, "streams": {"pixel": {"location": 0, "scale": 0}}}', "scale > 0"),
        ('{"version": 1, "streams": {"pixel": {"location": "x", "scale": 1}}}', "expected a number"),
        ('{"version": 1}', "'streams' must be an object"),
        ('{"version": 1, "streams": {}, "threshold_quantile": 2}', "threshold_quantile"),
    ],
)
def test_malformed_calibration_names_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad_cal.json"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=match) as err:
        load_calibration(path)
    assert "bad_cal.json" in str(err.value)


def test_missing_calibration_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"nope\.json"):
        load_calibration(tmp_path / "nope.json")


def test_gate_masked_softmax_over_present_streams() -> None:
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    b = np.array([0.0, 0.0, 5.0], np.float32)
    gate = StreamGate(W, b, ["pixel", "motion", "semantic"])
    c = np.array([2.0, 0.0], np.float32)
    w = gate.weights(c, ["pixel", "motion"])  # semantic absent: masked out despite its large bias
    e = np.exp([2.0, 0.0])
    assert w == pytest.approx({"pixel": e[0] / e.sum(), "motion": e[1] / e.sum()})
    w3 = gate.weights(c, ["pixel", "motion", "semantic"])
    assert w3["semantic"] > 0.9
    assert sum(w3.values()) == pytest.approx(1.0)


def test_gate_unknown_stream_weighted_out_and_no_context_uniform() -> None:
    gate = StreamGate(np.ones((2, 3), np.float32), np.zeros(2, np.float32), ["pixel", "motion"])
    w = gate.weights(np.zeros(3, np.float32), ["pixel", "motion", "extra"])
    assert w == pytest.approx({"pixel": 0.5, "motion": 0.5, "extra": 0.0})
    assert gate.weights(None, ["pixel"]) == {"pixel": 1.0}
    assert gate.weights(None, []) == {}
    with pytest.raises(GateError, match="expects 3"):
        gate.weights(np.zeros(4, np.float32), ["pixel"])


def test_gate_rejects_bad_shapes() -> None:
    with pytest.raises(GateError):
        StreamGate(np.zeros((2, 3)), np.zeros(3), ["a", "b"])
    with pytest.raises(GateError):
        StreamGate(np.zeros((2, 3)), np.zeros(2), ["a"])
    with pytest.raises(GateError):
        StreamGate(np.zeros((2, 3)), np.zeros(2), ["a", "a"])


def test_gate_npz_round_trip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gate = StreamGate(
        rng.normal(size=(4, 8)), rng.normal(size=4), ["predictive", "pixel", "semantic", "motion"]
    )
    path = tmp_path / "gate.npz"
    gate.save(path)
    back = StreamGate.load(path)
    assert back.streams == gate.streams
    np.testing.assert_array_equal(back.W, gate.W)
    c = rng.normal(size=8).astype(np.float32)
    assert back.weights(c, gate.streams) == pytest.approx(gate.weights(c, gate.streams))
    np.savez(tmp_path / "partial.npz", W=np.zeros((1, 1)))
    with pytest.raises(GateError, match=r"partial\.npz.*\['b', 'streams'\]"):
        StreamGate.load(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(GateError, match=r"junk\.npz"):
        StreamGate.load(tmp_path / "junk.npz")


def test_fuse_contributions_sum_to_score() -> None:
    f = fuse({"pixel": 4.0, "motion": -2.0, "semantic": 1.0}, {"pixel": 0.5, "motion": 0.5})
    assert f.contributions == pytest.approx({"pixel": 2.0, "motion": -1.0})
    assert f.score == pytest.approx(1.0)
    assert f.weights == pytest.approx({"pixel": 0.5, "motion": 0.5})
    # Weights are renormalised over the streams actually present.
    g = fuse({"pixel": 4.0}, {"pixel": 0.25, "motion": 0.75})
    assert g.score == pytest.approx(4.0)
    assert fuse({}, {"pixel": 1.0}).score == 0.0


def test_temporal_smoother_moving_median() -> None:
    s = TemporalSmoother(3)
    out = [s.update(v) for v in [1.0, 10.0, 2.0, 3.0, 100.0, 4.0]]
    assert out == [1.0, 5.5, 2.0, 3.0, 3.0, 4.0]
    assert TemporalSmoother(1).update(7.0) == 7.0
    assert np.isnan(TemporalSmoother(2).update(float("nan")))


def test_camera_fusion_smooths_and_resets_on_time_jump(caplog: pytest.LogCaptureFixture) -> None:
    cal = Calibration(streams={"pixel": StreamStats(0.0, 1.0, 100), "motion": StreamStats(0.0, 1.0, 100)})
    cf = CameraFusion("cam", cal, None, smoothing=3)
    a = cf.update({"pixel": 0.0, "motion": 0.0}, None, 0.0)
    b = cf.update({"pixel": 10.0, "motion": 10.0}, None, 0.4)  # a single spike
    c = cf.update({"pixel": 0.0, "motion": 0.0}, None, 0.8)
    assert (a.score, b.raw_fused, c.score) == (0.0, 10.0, 0.0)
    assert b.score == pytest.approx(5.0)  # median of two values
    assert b.contributions == pytest.approx({"pixel": 5.0, "motion": 5.0})
    d = cf.update({"pixel": 6.0}, None, 0.1)  # time went back: window restarts; motion absent
    assert d.score == pytest.approx(6.0)
    assert d.weights == {"pixel": 1.0}
    with caplog.at_level(logging.WARNING):
        CameraFusion("uncal-cam", None)
        CameraFusion("uncal-cam", None)
    assert sum("uncal-cam" in r.getMessage() for r in caplog.records) == 1


def test_camera_fusion_with_gate_and_context() -> None:
    gate = StreamGate(np.array([[4.0], [-4.0]], np.float32), np.zeros(2, np.float32), ["pixel", "motion"])
    cf = CameraFusion("cam", Calibration.identity_for("cam"), gate, smoothing=1)
    out = cf.update({"pixel": 1.0, "motion": 1.0}, np.array([1.0], np.float32), 0.0)
    assert out.weights["pixel"] > 0.99
    assert out.score == pytest.approx(1.0)
    assert sum(out.weights.values()) == pytest.approx(1.0)
