"""Score fusion: robust calibration, reliability weights from held-out folds, the gate's masked softmax and
its neutral factor, the mean and max rules, smoothing, file I/O (versions 1 and 2), the trust table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from plugins.fusion import (
    AGREEMENT_QUANTILE,
    ASSESSMENT_FOLDS,
    BUSY_LEVEL,
    HELDOUT_FOLDS,
    MIN_WEIGHT,
    STREAM_MIN_SCALE,
    Agreement,
    Calibration,
    CalibrationError,
    CameraFusion,
    FusionError,
    GateError,
    StreamGate,
    StreamStats,
    TemporalSmoother,
    TrustRow,
    assess_stream,
    assessment_folds,
    calibrate,
    describe_trust,
    fit_agreement,
    fit_calibration,
    format_trust,
    fuse,
    fuse_arrays,
    load_calibration,
    save_calibration,
    time_folds,
    trailing_median,
)
from plugins.streams import APPEARANCE, STATIONARY


def _normal_samples(n: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "predictive": rng.normal(5.0, 2.0, n),
        "pixel": rng.normal(0.01, 0.002, n),
        "motion": rng.normal(100.0, 10.0, n),
    }


def test_fit_calibration_recovers_median_and_sigma() -> None:
    cal = fit_calibration(_normal_samples(), threshold_quantile=0.99, rule="mean")
    assert cal.streams["predictive"].location == pytest.approx(5.0, abs=0.15)
    assert cal.streams["predictive"].scale == pytest.approx(2.0, rel=0.1)
    assert cal.streams["pixel"].scale == pytest.approx(0.002, rel=0.1)
    assert cal.streams["motion"].n == 2000
    assert cal.n_samples == 2000
    assert cal.rule == "mean"
    # Uniform fusion of three unit normals has std 1/sqrt(3); its 99% quantile is ~2.33/sqrt(3).
    assert cal.threshold == pytest.approx(2.326 / np.sqrt(3), rel=0.15)


def test_threshold_is_the_quantile_of_the_same_rule() -> None:
    """A new calibration fuses by max, and its threshold is the quantile of the max of the streams: for three
    independent unit normals P(max < t) = Phi(t)^3, so t = Phi^-1(0.99^(1/3)) ~ 2.71, not 2.33/sqrt(3)."""
    samples = _normal_samples()
    cal = fit_calibration(samples, threshold_quantile=0.99)
    assert cal.rule == "max"
    assert cal.threshold == pytest.approx(NormalDist().inv_cdf(0.99 ** (1 / 3)), rel=0.08)
    # The same numbers through the run's own fusion give the same quantile.
    cf = CameraFusion("cam", cal, None, smoothing=1)
    fused = [
        cf.update({k: float(v[i]) for k, v in samples.items()}, None, float(i)).raw_fused for i in range(2000)
    ]
    assert cal.threshold == pytest.approx(float(np.quantile(fused, 0.99)))


def test_trailing_median_is_the_run_smoother_over_a_series_restarting_per_segment() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    x[[5, 23]] = np.nan
    segments = np.repeat([0, 1], 20)
    got = trailing_median(x, 3, segments)
    for seg in (0, 1):
        smoother = TemporalSmoother(3)
        want = [smoother.update(float(v)) for v in x[segments == seg]]
        np.testing.assert_allclose(got[segments == seg], want)
    assert got[20] == x[20]  # a new footage starts a new window
    np.testing.assert_array_equal(trailing_median(x, 1), x)


def test_the_threshold_is_the_quantile_of_the_smoothed_normal_score() -> None:
    """With smoothing k, the threshold is the quantile of what the alerts compare with it: the median of the
    last k fused clips. Single-clip spikes, which a median of 3 never lets through, do not set it."""
    samples = _normal_samples()
    spikes = np.zeros(2000)
    spikes[::50] = 8.0  # isolated clips, 2 % of them: the raw 0.99 quantile sits on them
    samples = {k: v + spikes for k, v in samples.items()}
    segments = np.repeat([0, 1], 1000)
    raw = fit_calibration(samples, threshold_quantile=0.99)
    smooth = fit_calibration(samples, threshold_quantile=0.99, smoothing=3, segments=segments)
    assert (raw.threshold_smoothing, smooth.threshold_smoothing) == (1, 3)
    assert raw.threshold is not None
    assert raw.threshold > 7.0
    assert smooth.threshold is not None
    assert smooth.threshold < 4.0
    # The same numbers through the run's own fusion and smoother (a new camera for each footage).
    fused: list[float] = []
    for seg in (0, 1):
        cf = CameraFusion("cam", smooth, None, smoothing=3)
        for i in np.flatnonzero(segments == seg):
            fused.append(cf.update({k: float(v[i]) for k, v in samples.items()}, None, float(i)).score)
    assert smooth.threshold == pytest.approx(float(np.quantile(fused, 0.99)))
    with pytest.raises(CalibrationError, match="one id per clip"):
        fit_calibration(samples, smoothing=3, segments=segments[:10])
    with pytest.raises(FusionError, match="one id per value"):
        trailing_median(np.zeros(5), 3, np.zeros(4))
    with pytest.raises(CalibrationError, match="smoothing must be >= 1"):
        fit_calibration(samples, smoothing=0)


def test_the_smoothed_threshold_counts_clips_no_stream_scored_as_the_run_does() -> None:
    """A clip where no stream has a value (every cell masked) fuses to 0.0 in the run and enters the alerts'
    window; the threshold's replay must do the same, or it sits higher than what the alerts see."""
    rng = np.random.default_rng(5)
    samples = {"pixel": rng.normal(3.0, 1.0, 400), "motion": rng.normal(3.0, 1.0, 400)}
    for v in samples.values():
        v[::4] = np.nan  # every 4th clip: nothing scored
    cal = fit_calibration(samples, threshold_quantile=0.5, smoothing=3)
    cf = CameraFusion("cam", cal, None, smoothing=3)
    run = [cf.update({k: float(v[i]) for k, v in samples.items()}, None, float(i)).score for i in range(400)]
    assert cal.threshold == pytest.approx(float(np.quantile(run, 0.5)))


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
        ('{"version": 4, "streams": {}}', "unsupported calibration version"),
        ('{"version": true, "streams": {}}', "unsupported calibration version"),
        ('{"version": 2, "rule": "median", "streams": {}}', "'rule' must be one of mean, max"),
        (
            '{"version": 2, "streams": {"pixel": {"location": 0, "scale": 1, "weight": -0.5}}}',
            "weight must be",
        ),
        ('{"version": 2, "streams": {"pixel": {"location": 0, "scale": 1, "reason": 3}}}', "'reason'"),
        ('{"version": 1, "streams": {"pixel": {"location": 0, "scale": 0}}}', "scale > 0"),
        ('{"version": 1, "streams": {"pixel": {"location": "x", "scale": 1}}}', "expected a number"),
        ('{"version": 1}', "'streams' must be an object"),
        ('{"version": 1, "streams": {}, "threshold_quantile": 2}', "threshold_quantile"),
        (
            '{"version": 3, "rule": "max", "streams": {}, "agreement": [1, 2]}',
            "'agreement' must be an object",
        ),
        (
            '{"version": 3, "rule": "max", "streams": {}, '
            '"agreement": {"offset": 0, "slope": -1, "streams": ["a", "b"]}}',
            "slope > 0",
        ),
        (
            '{"version": 3, "rule": "max", "streams": {}, '
            '"agreement": {"offset": 0, "slope": 1, "streams": ["a"]}}',
            "two or more distinct streams",
        ),
        (
            '{"version": 3, "rule": "max", "streams": {}, '
            '"agreement": {"offset": 0, "slope": 1, "streams": "ab"}}',
            "list of stream names",
        ),
        (
            '{"version": 3, "rule": "mean", "streams": {}, '
            '"agreement": {"offset": 0, "slope": 1, "streams": ["a", "b"]}}',
            "belongs to the max rule",
        ),
        (
            '{"version": 3, "rule": "max", "streams": {"pixel": {"location": 0, "scale": 1}}, '
            '"agreement": {"offset": 0, "slope": 1, "streams": ["pixel", "objects"]}}',
            r"\['objects'\] are not calibrated streams",
        ),
        (
            '{"version": 3, "streams": {}, "threshold_smoothing": 2.5}',
            "'threshold_smoothing' must be an integer",
        ),
        ('{"version": 3, "streams": {}, "threshold_smoothing": 0}', "threshold_smoothing must be >= 1"),
        # JSON numbers too large for an integer: an OverflowError escaped before, and stopped the run
        ('{"version": 3, "streams": {"pixel": {"location": 0, "scale": 1, "n": 1e999}}}', "streams.pixel: "),
        ('{"version": 3, "n_samples": Infinity, "streams": {}}', "infinity"),
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


# -- reliability weights from held-out folds -----------------------------------------------------------------


def _two_folds(n: int = 400) -> np.ndarray:
    return time_folds(n, 2)


def test_time_folds_are_contiguous_blocks() -> None:
    assert time_folds(6, 2).tolist() == [0, 0, 0, 1, 1, 1]
    assert time_folds(5, 2).tolist() == [0, 0, 0, 1, 1]
    assert time_folds(0, 2).size == 0
    with pytest.raises(CalibrationError):
        time_folds(4, 0)


def test_assessment_folds_pair_the_memory_folds_into_halves_in_time_order() -> None:
    folds = time_folds(12, HELDOUT_FOLDS)
    halves = assessment_folds(folds)
    assert (
        halves.tolist() == time_folds(12, ASSESSMENT_FOLDS).tolist()
    )  # the first half of the footage, then the second
    assert assessment_folds(np.array([-1, -1])).tolist() == [-1, -1]  # no fold stays no fold
    with pytest.raises(CalibrationError, match="integers"):
        assessment_folds(np.array([0.0, 1.0]))


def test_gaussian_stream_is_trusted() -> None:
    x = np.random.default_rng(3).normal(10.0, 2.0, 400)
    weight, q, drift, reason = assess_stream(x, _two_folds())
    assert weight == 1.0
    assert q is not None
    assert q == pytest.approx(2.33, abs=0.5)
    assert drift is not None
    assert drift < 0.3
    assert reason.startswith("held-out 99th pct z ")
    assert reason.endswith("trusted")


def test_heavy_tailed_stream_is_weighed_down_and_the_reason_says_so() -> None:
    """A stream whose normal clips now and then jump far (a flickering screen, headlights) has a MAD scale
    that says nothing of its tail; on held-out normal footage its 99th percentile is far above 2.33."""
    rng = np.random.default_rng(4)
    x = rng.standard_t(1.5, 400)  # heavy tails, both folds alike: no drift
    weight, q, _, reason = assess_stream(x, _two_folds())
    assert q is not None
    assert q > 5.0
    assert weight == pytest.approx(NormalDist().inv_cdf(0.99) / q, rel=0.15)
    assert weight < 0.5
    assert "weighed down (tail heavier than Gaussian" in reason
    assert f"z {q:.1f} (expected 2.3)" in reason


def test_drifting_stream_is_weighed_down_and_the_reason_says_so() -> None:
    """The level moves between the first and the second half of the footage (the sun comes out): each fold
    held out sits far from the other's median."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0.0, 1.0, 200), rng.normal(3.0, 1.0, 200)])
    weight, _, drift, reason = assess_stream(x, _two_folds())
    assert drift is not None
    assert drift > 2.0
    # Weighed down through the held-out tail (each fold sits ~3 sigma off the other's median); the drift
    # itself is named but not charged twice.
    assert weight < 0.6
    assert "weighed down (tail heavier than Gaussian, level drifts between folds)" in reason
    # The same values shuffled in time drift no more than noise: the drift term is about time, not values.
    shuffled = rng.permutation(x)
    _, _, drift2, reason2 = assess_stream(shuffled, _two_folds())
    assert drift2 is not None
    assert drift2 < 0.5
    assert "drifts" not in reason2


def test_weight_never_below_the_floor() -> None:
    x = np.concatenate([np.zeros(200), np.full(200, 50.0)])  # constant, then a jump: z of 1e7
    weight, _, _, _ = assess_stream(x, _two_folds())
    assert weight == MIN_WEIGHT


def test_a_stream_in_its_own_noise_units_keeps_that_unit_as_its_least_scale() -> None:
    """The stationary stream's clips score about 0 wherever nothing stays: on quiet footage their MAD is a
    few hundredths of the stream's own unit, and the first steady difference of one unit became a z of 20.
    Its scale may not go below 1 (:data:`STREAM_MIN_SCALE`); another stream with the same scores keeps its
    MAD scale."""
    rng = np.random.default_rng(11)
    quiet = rng.normal(0.05, 0.03, 400)
    quiet[rng.choice(400, 8, replace=False)] = rng.uniform(1.0, 2.0, 8)  # a few steady differences
    cal = fit_calibration({STATIONARY: quiet, "pixel": quiet}, _two_folds(), threshold_quantile=0.99)
    assert STREAM_MIN_SCALE[STATIONARY] == 1.0
    assert cal.streams[STATIONARY].scale == 1.0
    assert cal.streams["pixel"].scale < 0.1
    assert cal.streams[STATIONARY].weight == 1.0  # its held-out tail, in its own unit, is light
    assert cal.streams["pixel"].weight < 0.5  # the same values in MAD units: a heavy tail
    assert calibrate({STATIONARY: 1.05}, cal)[STATIONARY] == pytest.approx(1.0, abs=0.05)


def test_a_stream_busy_on_the_cameras_normal_footage_is_left_out_and_never_judged_by_the_probe() -> None:
    """Its normal clips' median is above :data:`BUSY_LEVEL` of its own units: its memory does not explain
    the footage (a flowing crowd leaves steady foreground in most clips). Left out before the pasted events
    are judged, so the probe cannot bring it back; a quiet one with the same spread is kept."""
    rng = np.random.default_rng(12)
    n = 400
    busy = rng.normal(BUSY_LEVEL + 0.7, 0.5, n)
    quiet = busy - (BUSY_LEVEL + 0.6)
    still = {STATIONARY: np.full(40, 9.0), "pixel": rng.normal(0.0, 1.0, 40)}
    mover = {STATIONARY: np.full(40, 0.0), "pixel": rng.normal(6.0, 1.0, 40)}
    for level, values in (("busy", busy), ("quiet", quiet)):
        samples = {STATIONARY: values, "pixel": rng.normal(0.0, 1.0, n)}
        cal = fit_calibration(samples, _two_folds(), probes={"still": still, "mover": mover})
        st = cal.streams[STATIONARY]
        if level == "busy":
            assert st.weight == 0.0
            assert "left out: busy on this camera" in st.reason
            assert st.sensitivity is None  # not judged by the pasted events
        else:
            assert st.weight == 1.0
            assert "busy" not in st.reason
        assert cal.streams["pixel"].weight > 0.0


def test_too_few_clips_per_fold_gives_weight_one_and_says_why() -> None:
    weight, q, drift, reason = assess_stream(np.arange(15.0), time_folds(15, 2), min_fold_clips=10)
    assert (weight, q, drift) == (1.0, None, None)
    assert "too few clips to hold out" in reason
    assert "[7, 8]" in reason


def test_fit_calibration_with_folds_weighs_each_stream() -> None:
    rng = np.random.default_rng(6)
    n = 400
    samples = {
        "motion": rng.normal(5.0, 1.0, n),
        "pixel": rng.standard_t(1.5, n),
        "predictive": np.concatenate([rng.normal(0.0, 1.0, n // 2), rng.normal(4.0, 1.0, n // 2)]),
    }
    cal = fit_calibration(samples, _two_folds(n))
    assert cal.heldout_quantile == 0.99
    assert cal.streams["motion"].weight == 1.0
    assert cal.streams["pixel"].weight < 0.5
    assert cal.streams["predictive"].weight < 0.6  # drifting: weighed down through its held-out tail
    # Location and scale still come from all the clips.
    assert cal.streams["motion"].location == pytest.approx(5.0, abs=0.2)
    # The threshold uses the weights: the max of the weighted z-scores or the agreement term (the weighted
    # mean on the max's scale), recomputed here by hand.
    z = {k: (v - cal.streams[k].location) / cal.streams[k].scale for k, v in samples.items()}
    w = {k: cal.streams[k].weight for k in samples}
    top = np.max([w[k] * z[k] for k in samples], axis=0)
    mean = np.sum([w[k] * z[k] for k in samples], axis=0) / sum(w.values())
    assert cal.agreement is not None
    by_hand = np.maximum(top, cal.agreement.offset + cal.agreement.slope * mean)
    assert cal.threshold == pytest.approx(float(np.quantile(by_hand, 0.99)))


def test_fit_calibration_without_folds_weighs_nothing() -> None:
    cal = fit_calibration(_normal_samples(100))
    assert {s.weight for s in cal.streams.values()} == {1.0}
    assert {s.reason for s in cal.streams.values()} == {"no held-out folds"}
    assert cal.heldout_quantile is None


def test_fit_calibration_rejects_bad_folds_and_rules() -> None:
    with pytest.raises(CalibrationError, match="one id per clip"):
        fit_calibration({"a": np.arange(10.0)}, np.zeros(9, np.int64))
    with pytest.raises(CalibrationError, match="one id per clip"):
        fit_calibration({"a": np.arange(10.0), "b": np.arange(12.0)}, np.zeros(10, np.int64))
    with pytest.raises(CalibrationError, match="integers"):
        fit_calibration({"a": np.arange(10.0)}, np.zeros(10))
    with pytest.raises(CalibrationError, match="unknown fusion rule 'sum'"):
        fit_calibration({"a": np.arange(10.0)}, rule="sum")


# -- file versions -------------------------------------------------------------------------------------------


def test_round_trip_keeps_weights_rule_and_agreement(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    cal = fit_calibration(
        {"motion": rng.normal(0, 1, 300), "pixel": rng.standard_t(1.5, 300)},
        time_folds(300),
        camera="c",
        smoothing=3,
    )
    path = tmp_path / "c.json"
    save_calibration(cal, path)
    data = json.loads(path.read_text())
    assert data["version"] == 3
    assert data["rule"] == "max"
    assert set(data["streams"]["pixel"]) == {
        "location",
        "scale",
        "n",
        "weight",
        "heldout_q",
        "drift",
        "reason",
        "sensitivity",
        "probe_recall",
    }
    assert set(data["agreement"]) == {"offset", "slope", "streams"}
    assert data["agreement"]["streams"] == ["motion", "pixel"]
    back = load_calibration(path)
    assert back == cal
    assert back.streams["pixel"].weight < 1.0
    assert back.agreement == cal.agreement
    assert back.threshold_smoothing == 3
    # A file from before smoothed thresholds: computed for no smoothing.
    del data["threshold_smoothing"]
    path.write_text(json.dumps(data))
    assert load_calibration(path).threshold_smoothing == 1


def test_version_1_file_loads_with_the_mean_rule_and_weight_one(tmp_path: Path) -> None:
    """A calibration written before reliability weights keeps today's fusion, so its threshold (a quantile
    of the uniformly weighted mean) still means what it meant."""
    path = tmp_path / "old.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "camera": "old",
                "identity": False,
                "n_samples": 100,
                "threshold_quantile": 0.995,
                "threshold": 1.7,
                "streams": {
                    "pixel": {"location": 1.0, "scale": 2.0, "n": 100},
                    "motion": {"location": 0.0, "scale": 1.0, "n": 100},
                },
            }
        )
    )
    cal = load_calibration(path)
    assert cal.rule == "mean"
    assert cal.threshold == 1.7
    assert {s.weight for s in cal.streams.values()} == {1.0}
    assert "version 1" in cal.streams["pixel"].reason
    cf = CameraFusion("old", cal, None, smoothing=1)
    out = cf.update({"pixel": 9.0, "motion": 0.0}, None, 0.0)
    assert out.rule == "mean"
    assert out.score == pytest.approx(2.0)  # (4 + 0) / 2, as before
    assert [r.verdict for r in describe_trust(cal)] == ["not assessed", "not assessed"]


# -- the max rule: a strong stream is never diluted ----------------------------------------------------------


def test_max_rule_a_strong_stream_is_not_diluted_by_weak_ones() -> None:
    z = {"appearance": 9.0, "pixel": 0.1, "motion": -0.2, "predictive": 0.0}
    ones = dict.fromkeys(z, 1.0)
    mean = fuse(z, ones, "mean")
    top = fuse(z, ones, "max")
    assert mean.score == pytest.approx(8.9 / 4)  # under a threshold of 3: the car on the footpath is missed
    assert top.score == pytest.approx(9.0)
    assert top.rule == "max"
    assert top.weights == ones  # multipliers, not renormalised
    assert top.contributions == pytest.approx(z)
    # Adding more quiet streams never lowers the max.
    more = fuse({**z, "semantic": -1.0}, {**ones, "semantic": 1.0}, "max")
    assert more.score == top.score


def test_max_rule_uses_the_multipliers() -> None:
    f = fuse({"pixel": 8.0, "motion": 3.0}, {"pixel": 0.25, "motion": 1.0}, "max")
    assert f.score == pytest.approx(3.0)
    assert f.contributions == pytest.approx({"pixel": 2.0, "motion": 3.0})
    assert fuse({}, {"pixel": 1.0}, "max").score == 0.0
    with pytest.raises(FusionError, match="unknown fusion rule"):
        fuse({"pixel": 1.0}, {"pixel": 1.0}, "median")


def test_fuse_arrays_matches_fuse_clip_by_clip() -> None:
    rng = np.random.default_rng(8)
    z = {"a": rng.normal(size=50), "b": rng.normal(size=50), "c": rng.normal(size=50)}
    z["b"][3] = np.nan
    z["a"][7] = z["b"][7] = z["c"][7] = np.nan
    w = {"a": 0.5, "b": rng.uniform(0.1, 2.0, 50), "c": 1.0}
    for rule in ("mean", "max"):
        fused = fuse_arrays(z, w, rule)
        for i in range(50):
            one = fuse(
                {k: float(v[i]) for k, v in z.items()},
                {k: float(np.broadcast_to(v, 50)[i]) for k, v in w.items()},
                rule,
            )
            if i == 7:
                assert np.isnan(fused[i])
            else:
                assert fused[i] == pytest.approx(one.raw_fused)


# -- the max rule's agreement term: streams that rise together -------------------------------------------


def test_agreement_term_matches_the_max_on_normal_footage() -> None:
    """The term is placed where the max is on normal clips: the same median and upper quantile."""
    rng = np.random.default_rng(11)
    z = {s: rng.normal(size=3000) for s in ("pixel", "motion", "objects")}
    w = {"pixel": 1.0, "motion": 1.0, "objects": 0.7}
    term = fit_agreement(z, w)
    assert term is not None
    top = fuse_arrays(z, w, "max")
    agreed = term.offset + term.slope * fuse_arrays(z, w, "mean")
    for q in (0.5, AGREEMENT_QUANTILE):
        assert np.quantile(agreed, q) == pytest.approx(np.quantile(top, q))
    # Independent streams: the mean is narrower than the max, so the term stretches it.
    assert term.slope > 1.0
    # Too few clips, or a mean that never moves, place nothing.
    assert fit_agreement({k: v[:10] for k, v in z.items()}, w) is None
    assert fit_agreement({"pixel": np.zeros(100)}, {"pixel": 1.0}) is None


def test_agreement_catches_streams_that_rise_together_and_keeps_a_lone_strong_one() -> None:
    """Three independent normal streams: each alone needs z ~ 2.7 to cross the fused 99th percentile, and the
    plain max misses a clip where all three stand at 2.2; the agreement term catches it. A lone stream at 9
    still scores 9, and a calm clip stays under the threshold."""
    samples = {
        s: np.random.default_rng(i).normal(size=4000) for i, s in enumerate(("pixel", "motion", "objects"))
    }
    cal = fit_calibration(samples, time_folds(4000))
    assert cal.agreement is not None
    assert cal.threshold is not None
    cf = CameraFusion("cam", cal, None, smoothing=1)
    together = cf.update(dict.fromkeys(samples, 2.2), None, 0.0)
    assert max(together.contributions.values()) < cal.threshold  # the max alone would miss it
    assert together.agreement is not None
    assert together.raw_fused == together.agreement > cal.threshold
    lone = cf.update({"pixel": 9.0, "motion": 0.0, "objects": 0.0}, None, 1.0)
    assert lone.raw_fused == lone.contributions["pixel"] > 8.5  # the max leads, undiluted
    calm = cf.update(dict.fromkeys(samples, 0.5), None, 2.0)
    assert calm.raw_fused < cal.threshold
    # A camera configured to fuse by the mean does not take the max rule's term.
    assert CameraFusion("cam", cal, None, smoothing=1, rule="mean").agreement is None
    with pytest.raises(FusionError, match="belongs to the max rule"):
        fuse({"pixel": 1.0}, {"pixel": 1.0}, "mean", Agreement(0.0, 1.0, ("pixel", "motion")))
    with pytest.raises(CalibrationError, match="belongs to the max rule"):
        Calibration(rule="mean", agreement=Agreement(0.0, 1.0, ("pixel", "motion")))


def test_a_clip_without_every_stream_of_the_term_is_fused_by_the_plain_max() -> None:
    """The line was fitted for the mean of all its streams: with one missing (a refused memory model, a NaN
    score) the mean of the rest is wider and would read as agreement, so the clip takes the plain max."""
    term = Agreement(1.0, 2.0, ("pixel", "motion", "objects"))
    ones = {"pixel": 1.0, "motion": 1.0, "objects": 1.0}
    both = fuse({"pixel": 2.0, "motion": 2.0}, ones, "max", term)
    assert both.score == 2.0
    assert both.agreement is None
    nan = fuse({"pixel": 2.0, "motion": 2.0, "objects": float("nan")}, ones, "max", term)
    assert nan.score == 2.0
    every = fuse({"pixel": 2.0, "motion": 2.0, "objects": 2.0}, ones, "max", term)
    assert every.score == every.agreement == pytest.approx(5.0)
    # A stream outside the term (here semantic) neither blocks it nor enters its mean.
    extra = fuse(
        {"pixel": 2.0, "motion": 2.0, "objects": 2.0, "semantic": -9.0},
        {**ones, "semantic": 1.0},
        "max",
        term,
    )
    assert extra.score == pytest.approx(5.0)
    z = {"pixel": np.array([2.0, 2.0]), "motion": np.array([2.0, 2.0]), "objects": np.array([2.0, np.nan])}
    np.testing.assert_allclose(fuse_arrays(z, ones, "max", term), [5.0, 2.0])
    np.testing.assert_allclose(
        fuse_arrays({k: z[k] for k in ("pixel", "motion")}, ones, "max", term), [2.0, 2.0]
    )


def test_a_version_2_max_calibration_loads_without_a_term_and_fuses_by_the_plain_max(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    streams = {s: {"location": 0.0, "scale": 1.0, "n": 100, "weight": 1.0} for s in ("pixel", "motion")}
    path.write_text(json.dumps({"version": 2, "rule": "max", "threshold": 2.5, "streams": streams}))
    cal = load_calibration(path)
    assert cal.agreement is None
    cf = CameraFusion("old", cal, None, smoothing=1)
    assert cf.update({"pixel": 2.0, "motion": 2.0}, None, 0.0).raw_fused == pytest.approx(2.0)


def test_a_term_over_streams_the_calibration_does_not_weigh_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    streams = {"pixel": StreamStats(0.0, 1.0, 100), "motion": StreamStats(0.0, 1.0, 100, weight=0.0)}
    with pytest.raises(CalibrationError, match=r"\['motion', 'objects'\] are not calibrated streams"):
        Calibration(
            streams=streams, rule="max", agreement=Agreement(0.0, 1.0, ("pixel", "motion", "objects"))
        )
    # A camera whose clips lack one of the term's streams says so once, and fuses them by the plain max.
    streams["motion"] = StreamStats(0.0, 1.0, 100)
    cal = Calibration(streams=streams, rule="max", agreement=Agreement(1.0, 2.0, ("pixel", "motion")))
    cf = CameraFusion("cam-x", cal, None, smoothing=1)
    with caplog.at_level(logging.WARNING, logger="plugins.fusion"):
        first = cf.update({"pixel": 2.0}, None, 0.0)
        cf.update({"pixel": 2.0}, None, 1.0)
    assert first.raw_fused == 2.0
    assert first.agreement is None
    assert (
        sum("stream motion of the agreement term is missing" in r.getMessage() for r in caplog.records) == 1
    )
    assert cf.update({"pixel": 2.0, "motion": 2.0}, None, 2.0).raw_fused == pytest.approx(5.0)


def test_fit_agreement_uses_only_clips_with_every_weighted_stream() -> None:
    rng = np.random.default_rng(3)
    z = {s: rng.normal(size=500) for s in ("pixel", "motion", "objects")}
    holed = {s: v.copy() for s, v in z.items()}
    holed["objects"][::2] = np.nan  # half the clips lack a stream: they say nothing about the three's mean
    w = {"pixel": 1.0, "motion": 1.0, "objects": 1.0, "left_out": 0.0}
    term = fit_agreement({**holed, "left_out": rng.normal(size=500)}, w)
    assert term is not None
    assert term.streams == ("pixel", "motion", "objects")  # a stream of weight 0 is not one of them
    every = fit_agreement({s: v[1::2] for s, v in z.items()}, w)
    assert every is not None
    assert (term.offset, term.slope) == pytest.approx((every.offset, every.slope))


def test_fuse_arrays_with_agreement_matches_fuse_clip_by_clip() -> None:
    rng = np.random.default_rng(9)
    z = {"a": rng.normal(size=40), "b": rng.normal(size=40)}
    z["b"][5] = np.nan
    w = {"a": 0.5, "b": rng.uniform(0.1, 1.0, 40)}
    term = Agreement(0.4, 1.3, ("a", "b"))
    fused = fuse_arrays(z, w, "max", term)
    for i in range(40):
        one = fuse(
            {k: float(v[i]) for k, v in z.items()},
            {k: float(np.broadcast_to(v, 40)[i]) for k, v in w.items()},
            "max",
            term,
        )
        assert fused[i] == pytest.approx(one.raw_fused)


def test_camera_fusion_max_rule_with_reliability_and_gate() -> None:
    cal = Calibration(
        streams={
            "pixel": StreamStats(0.0, 1.0, 100, weight=0.25),
            "motion": StreamStats(0.0, 1.0, 100),
            APPEARANCE: StreamStats(0.0, 1.0, 100, weight=0.5),
        },
        rule="max",
    )
    gate = StreamGate(np.array([[4.0], [-4.0]], np.float32), np.zeros(2, np.float32), ["pixel", "motion"])
    cf = CameraFusion("cam", cal, gate, smoothing=1)
    c = np.array([1.0], np.float32)
    out = cf.update({"pixel": 8.0, "motion": 8.0, APPEARANCE: 10.0}, c, 0.0)
    g = gate.weights(c, ["pixel", "motion"])
    # Under max a gate factor is capped at 1: it can weigh a stream down, never lift its tail above the
    # others' (pixel's factor 2 * g ~ 2 counts as 1, motion's ~ 0 stays ~ 0).
    assert out.weights == pytest.approx(
        {"pixel": 0.25 * min(1.0, 2 * g["pixel"]), "motion": 2 * g["motion"], APPEARANCE: 0.5}
    )
    # pixel: 8 * 0.25 * 1 = 2.0; motion: 8 * 2 * (1 - g) ~ 0.0; appearance: 10 * 0.5 = 5.0.
    assert out.score == pytest.approx(5.0)
    assert out.contributions["pixel"] == pytest.approx(2.0)
    assert max(out.contributions, key=out.contributions.__getitem__) == APPEARANCE
    # Under mean the factor shares the average out as it is.
    mean = CameraFusion("cam", cal, gate, smoothing=1, rule="mean").update(
        {"pixel": 8.0, "motion": 8.0}, c, 0.0
    )
    assert mean.weights["pixel"] / mean.weights["motion"] == pytest.approx(0.25 * g["pixel"] / g["motion"])


def test_gate_factor_is_neutral_for_memory_streams(caplog: pytest.LogCaptureFixture) -> None:
    """The trained gate has no row for a memory stream: it neither silences it (as weights() would) nor
    favours it; the streams it knows keep factors averaging 1, so a uniform gate is 1 everywhere."""
    uniform = StreamGate.uniform()
    with caplog.at_level(logging.WARNING):
        assert uniform.factors(None, ["pixel", "motion", APPEARANCE]) == {
            "pixel": 1.0,
            "motion": 1.0,
            APPEARANCE: 1.0,
        }
    assert not [r for r in caplog.records if APPEARANCE in r.getMessage()]
    gate = StreamGate(np.array([[2.0], [0.0]], np.float32), np.zeros(2, np.float32), ["pixel", "motion"])
    f = gate.factors(np.array([1.0], np.float32), ["pixel", "motion", APPEARANCE])
    assert f[APPEARANCE] == 1.0
    assert f["pixel"] + f["motion"] == pytest.approx(2.0)
    assert f["pixel"] > 1.0 > f["motion"]
    assert gate.factors(None, [APPEARANCE]) == {APPEARANCE: 1.0}
    with caplog.at_level(logging.WARNING):
        gate.factors(None, ["pixel", "brand-new"])
    assert any("'brand-new'" in r.getMessage() and "neutral" in r.getMessage() for r in caplog.records)


def test_mean_rule_gives_memory_streams_a_neutral_share() -> None:
    cal = Calibration(streams={s: StreamStats(0.0, 1.0, 10) for s in ("pixel", "motion", APPEARANCE)})
    out = CameraFusion("cam", cal, None, smoothing=1).update(
        {"pixel": 3.0, "motion": 0.0, APPEARANCE: 6.0}, None, 0.0
    )
    assert out.weights == pytest.approx({"pixel": 1 / 3, "motion": 1 / 3, APPEARANCE: 1 / 3})
    assert out.score == pytest.approx(3.0)


def test_config_rule_overrides_the_calibration_and_auto_keeps_it() -> None:
    cal = Calibration(streams={s: StreamStats(0.0, 1.0, 10) for s in ("pixel", "motion")}, rule="max")
    raw = {"pixel": 6.0, "motion": 0.0}
    assert CameraFusion("c", cal, None, 1).update(raw, None, 0.0).score == 6.0
    assert CameraFusion("c", cal, None, 1, rule="auto").update(raw, None, 0.0).score == 6.0
    assert CameraFusion("c", cal, None, 1, rule="mean").update(raw, None, 0.0).score == 3.0
    assert CameraFusion("c", None, None, 1).rule == "mean"  # uncalibrated: today's behaviour
    with pytest.raises(FusionError, match="unknown fusion rule"):
        CameraFusion("c", cal, None, 1, rule="sum")


# -- which streams a camera trusts ---------------------------------------------------------------------------


def test_describe_trust_rows_and_table() -> None:
    cal = Calibration(
        streams={
            "motion": StreamStats(
                0.0, 1.0, 300, 1.0, 2.41, 0.12, "held-out 99th pct z 2.4 (expected 2.3), drift 0.1: trusted"
            ),
            "pixel": StreamStats(
                0.0,
                1.0,
                300,
                0.22,
                7.9,
                1.2,
                "held-out 99th pct z 7.9 (expected 2.3), drift 1.2: weighed down",
            ),
        },
        rule="max",
    )
    rows = describe_trust(cal, ["motion", "pixel", APPEARANCE])
    assert [(r.stream, r.verdict) for r in rows] == [
        ("motion", "trusted"),
        ("pixel", "weighed down"),
        (APPEARANCE, "not calibrated"),
    ]
    assert rows[1] == TrustRow("pixel", 0.22, 7.9, 1.2, "weighed down", cal.streams["pixel"].reason)
    assert rows[2].weight is None
    assert "left out of the fused score" in rows[2].reason
    assert rows[0].to_dict()["heldout_q"] == 2.41
    table = format_trust(rows, "max").splitlines()
    assert table[0] == "fusion rule: max"
    assert table[1].split()[:6] == ["stream", "weight", "held-out", "q", "drift", "sees"]
    assert table[3].split()[:7] == ["pixel", "0.22", "7.90", "1.20", "-", "weighed", "down"]
    assert table[4].split()[:7] == [APPEARANCE, "-", "-", "-", "-", "not", "calibrated"]
    assert [r.verdict for r in describe_trust(Calibration.identity_for("x"), ["pixel"])] == ["not calibrated"]
    assert describe_trust(Calibration.identity_for("x")) == []


def test_a_quiet_cameras_objects_stream_is_fitted_on_what_it_saw_and_cannot_raise_the_threshold() -> None:
    """Blobs in a fifth of the normal clips, the objects stream's empty value (-5) in the rest: its median
    was -5 with no spread, so a normal passer-by scored a z near a thousand and the calibrated threshold
    followed it, out of every other stream's reach. Now it is fitted on the clips with a blob."""
    from plugins.objects import EMPTY
    from plugins.streams import OBJECTS

    rng = np.random.default_rng(1)
    n = 240
    seen = rng.random(n) < 0.2
    samples = {
        "pixel": rng.normal(1.0, 0.1, n),
        "motion": rng.normal(2.0, 0.2, n),
        OBJECTS: np.where(seen, rng.normal(0.0, 0.4, n), EMPTY),
    }
    cal = fit_calibration(samples, assessment_folds(time_folds(n, HELDOUT_FOLDS)), threshold_quantile=0.995)
    objects = cal.streams[OBJECTS]
    assert objects.location == pytest.approx(float(np.median(samples[OBJECTS][seen])))
    assert 0.2 < objects.scale < 0.8  # before the fix: 0.005
    assert objects.drift is not None
    assert objects.drift < 2.0  # of what was seen, not of the empty clips
    assert cal.threshold is not None
    assert cal.threshold < 5.0  # before the fix: 51
    fusion = CameraFusion("c", cal, smoothing=1)
    assert fusion.update({"pixel": 1.0, "motion": 2.0, OBJECTS: 0.0}, None, 0.0).raw_fused < cal.threshold
    assert fusion.update({"pixel": 2.0, "motion": 2.0, OBJECTS: EMPTY}, None, 1.0).raw_fused > cal.threshold
    # A camera where blobs are the rule is fitted as before, on every clip.
    busy = np.where(rng.random(n) < 0.8, rng.normal(0.0, 0.4, n), EMPTY)
    plain = fit_calibration({OBJECTS: busy}).streams[OBJECTS]
    assert plain.location == pytest.approx(float(np.median(busy)))
    # Hardly anything seen: the stream's own unit (0 = a median blob, 1 = its normal 99th percentile).
    rare = np.full(n, EMPTY)
    rare[:3] = 0.5
    assert fit_calibration({OBJECTS: rare}).streams[OBJECTS].location == 0.0


def test_a_stream_that_never_varied_on_the_normal_footage_is_left_out() -> None:
    """A still view (motion exactly 0 on every calibration clip) gave the stream a scale of 1e-6 at full
    weight, "trusted": the first clip with motion 0.001 fused to 1000. It is left out now, saying why; the
    streams that varied keep their weights, and a view on which nothing varied gives no usable threshold
    rather than 0 (the alert policy falls back, tests/unit/test_events.py)."""
    rng = np.random.default_rng(0)
    n = 80
    samples = {
        "pixel": rng.normal(5.0, 1.0, n),
        "predictive": rng.normal(2.0, 0.5, n),
        "motion": np.zeros(n),
    }
    cal = fit_calibration(samples, time_folds(n, HELDOUT_FOLDS), rule="max", camera="still")
    motion = cal.streams["motion"]
    assert motion.weight == 0.0
    assert "80 of 80 normal clips score exactly 0" in motion.reason
    assert cal.streams["pixel"].weight > 0.5
    fused = CameraFusion("still", cal, None, smoothing=1, rule="max")
    moved = fused.update({"pixel": 5.0, "predictive": 2.0, "motion": 0.001}, None, 0.0)
    assert moved.score < 5.0  # was 1000
    still = fit_calibration({k: np.zeros(n) for k in samples}, time_folds(n, HELDOUT_FOLDS), rule="max")
    assert all(st.weight == 0.0 for st in still.streams.values())
    assert not (still.threshold or 0.0) > 0.0  # zsad calibrate refuses to write it


def test_a_quiet_view_is_fitted_on_the_clips_that_moved_and_a_tied_median_away_from_zero_is_kept() -> None:
    """Most clips exactly 0 (nothing moved then) but the others vary: the stream is fitted on those, as the
    objects stream on its empty clips, not left out and not scaled by 1e-6. A stream whose tied median is
    away from 0 (quantised scores) keeps its relative scale floor and its weight, as before."""
    rng = np.random.default_rng(1)
    n = 80
    quiet = np.where(np.arange(n) % 5 < 3, 0.0, rng.uniform(0.05, 0.3, n))  # 60 % of clips exactly 0
    samples = {"pixel": rng.normal(5.0, 1.0, n), "motion": quiet}
    cal = fit_calibration(samples, time_folds(n, HELDOUT_FOLDS), rule="max")
    motion = cal.streams["motion"]
    assert motion.weight > 0.0
    assert motion.scale > 0.01
    fused = CameraFusion("quiet", cal, None, smoothing=1, rule="max")
    assert fused.update({"pixel": 5.0, "motion": 0.001}, None, 0.0).score < 5.0
    tied = np.where(np.arange(n) % 2 == 0, 1.0, rng.normal(1.0, 0.01, n)).astype(np.float16).astype(float)
    kept = fit_calibration({"pixel": samples["pixel"], "predictive": tied}, time_folds(n, HELDOUT_FOLDS))
    assert kept.streams["predictive"].weight > 0.0
