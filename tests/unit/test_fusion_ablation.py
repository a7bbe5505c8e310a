"""The offline evaluation fuses as the run does: folds by video, gate factors, and every fusion rule with and
without reliability weights and the gate (training/evaluate.py), on small synthetic score arrays."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.fusion import (
    Agreement,
    Calibration,
    CameraFusion,
    StreamGate,
    StreamStats,
    fit_calibration,
    time_folds,
)
from plugins.streams import APPEARANCE
from training.evaluate import (
    alert_weights,
    assessment_fold_ids,
    fusion_ablation,
    fusion_variant,
    gate_factors,
)
from training.metrics import roc_auc


def test_the_weights_are_judged_on_two_groups_of_each_contexts_videos() -> None:
    names = ["a0", "a1", "a2", "a3", "b0", "b1", "c0", "d0", "d1", "d2"]
    contexts = {n: n[0] for n in names}
    lengths = [3, 2, 4, 1, 2, 3, 5, 1, 1, 1]
    got = assessment_fold_ids(names, contexts, lengths).tolist()
    assert got[:10] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # four videos: the first two, then the last two
    assert got[10:15] == [0, 0, 1, 1, 1]  # two videos (two of the four memory folds' groups): one each
    assert got[15:20] == time_folds(5).tolist()  # one video: split by time instead
    assert got[20:] == [0, 0, 1]  # three videos: the halves of three groups


def test_gate_factors_are_neutral_for_streams_without_a_gate_row() -> None:
    w = np.array([[0.75, 0.25], [0.5, 0.5]])
    f = gate_factors(w, ["pixel", "motion"], ["pixel", "motion", APPEARANCE])
    np.testing.assert_allclose(f["pixel"], [1.5, 1.0])
    np.testing.assert_allclose(f["motion"], [0.5, 1.0])
    np.testing.assert_allclose(f[APPEARANCE], [1.0, 1.0])


@pytest.mark.parametrize("rule", ["max", "mean"])
def test_alert_weights_are_the_weights_an_alert_fuses_with(rule: str) -> None:
    """The localisation block's evidence is weighted as the run weights an alert's evidence map: the
    reliability weight times the gate factor (normalised under mean), memory streams at factor 1."""
    streams = ["pixel", "motion", APPEARANCE]
    cal = Calibration(
        streams={
            "pixel": StreamStats(0.0, 1.0, 40, 0.5),
            "motion": StreamStats(0.0, 1.0, 40, 1.0),
            APPEARANCE: StreamStats(0.0, 1.0, 40, 0.25),
        },
        rule=rule,
    )
    gate = StreamGate(np.array([[1.0], [-1.0]], np.float32), np.zeros(2, np.float32), ["pixel", "motion"])
    context = np.array([0.7], np.float32)
    fused = CameraFusion("cam", cal, gate, smoothing=1).update(
        {"pixel": 2.0, "motion": 1.0, APPEARANCE: 3.0}, context, 0.0
    )
    factors = gate.factors(context, streams)
    softmax = np.array([[factors["pixel"] / 2, factors["motion"] / 2]])  # what the model's gate gives
    w = alert_weights(softmax, ["pixel", "motion"], streams, cal)
    assert w.shape == (1, 3)
    np.testing.assert_allclose(w[0], [fused.weights[s] for s in streams], rtol=1e-6)


def _scores(seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Two test videos of 200 frames. ``strong`` sees the anomaly (frames 80-119 of video a) plainly;
    ``weak`` and ``flicker`` see nothing, and ``flicker`` has a heavy normal tail."""
    rng = np.random.default_rng(seed)
    z: dict[str, dict[str, np.ndarray]] = {"strong": {}, "weak": {}, "flicker": {}}
    labels: dict[str, np.ndarray] = {}
    for v in ("a", "b"):
        y = np.zeros(200)
        if v == "a":
            y[80:120] = 1
        labels[v] = y
        z["strong"][v] = rng.normal(0, 1, 200) + 4.0 * y
        z["weak"][v] = rng.normal(0, 1, 200)
        z["flicker"][v] = 0.5 * rng.standard_t(1.2, 200)
    return z, labels


def _auc(fused: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> float:
    return roc_auc(np.concatenate([labels[v] for v in labels]), np.concatenate([fused[v] for v in labels]))


def test_ablation_names_and_the_max_rule_is_not_diluted() -> None:
    z, labels = _scores()
    factors = {v: {s: np.ones(200) for s in z} for v in labels}
    out = fusion_ablation(z, {"strong": 1.0, "weak": 1.0, "flicker": 0.1}, factors)
    assert set(out) == {
        fusion_variant(rule, rel, gate)
        for rule in ("mean", "max")
        for rel in (False, True)
        for gate in (False, True)
    }
    assert (
        fusion_variant("max", True, True)
        == "fused: all streams (max rule, reliability weights, context gate)"
    )
    plain_mean = out[fusion_variant("mean", False, False)]
    np.testing.assert_allclose(plain_mean["a"], (z["strong"]["a"] + z["weak"]["a"] + z["flicker"]["a"]) / 3)
    auc = {name: _auc(fused, labels) for name, fused in out.items()}
    # The weak streams dilute the mean; the max keeps the strong stream's evidence; the reliability weight
    # keeps the flickering stream's tail from leading the max.
    assert auc[fusion_variant("max", True, False)] > auc[fusion_variant("mean", False, False)]
    assert auc[fusion_variant("max", True, False)] > auc[fusion_variant("max", False, False)]
    assert auc[fusion_variant("max", True, False)] > 0.95
    # A uniform gate changes nothing.
    np.testing.assert_allclose(
        out[fusion_variant("max", True, True)]["a"], out[fusion_variant("max", True, False)]["a"]
    )
    assert set(fusion_ablation(z, {}, None)) == {
        fusion_variant(r, rel, False) for r in ("mean", "max") for rel in (False, True)
    }


@pytest.mark.parametrize("term", [None, Agreement(0.3, 1.4, ("pixel", "motion", APPEARANCE))])
def test_ablation_fuses_frame_by_frame_as_the_run_does(term: Agreement | None) -> None:
    """The product variant (max rule, reliability weights, context gate, the calibration's agreement term
    when it has one) equals CameraFusion's raw fused score clip by clip, with a trained gate and a memory
    stream it has no row for; the variant without the term is the plain max."""
    rng = np.random.default_rng(1)
    n = 50
    streams = ("pixel", "motion", APPEARANCE)
    raw = {s: {"v": rng.normal(1.0, 0.3, n)} for s in streams}
    cal = Calibration(
        streams={
            "pixel": StreamStats(1.0, 0.3, 100, weight=0.4),
            "motion": StreamStats(1.0, 0.3, 100),
            APPEARANCE: StreamStats(1.0, 0.3, 100, weight=0.7),
        },
        rule="max",
        agreement=term,
    )
    gate = StreamGate(np.array([[1.0], [-1.0]], np.float32), np.zeros(2, np.float32), ["pixel", "motion"])
    contexts = rng.normal(size=(n, 1)).astype(np.float32)
    gated = ["pixel", "motion"]
    w = np.array([[gate.weights(c, gated)[s] for s in gated] for c in contexts])
    z = {s: {"v": (raw[s]["v"] - cal.streams[s].location) / cal.streams[s].scale} for s in streams}
    out = fusion_ablation(
        z,
        {s: cal.weight(s) for s in streams},
        {"v": gate_factors(w, gated, list(streams))},
        agreement={"v": term},
    )
    fusion = CameraFusion("cam", cal, gate, smoothing=1)
    run = [
        fusion.update({s: float(raw[s]["v"][i]) for s in streams}, contexts[i], float(i)).raw_fused
        for i in range(n)
    ]
    np.testing.assert_allclose(out[fusion_variant("max", True, True)]["v"], run, rtol=1e-6)
    if term is not None:
        plain = out[fusion_variant("max", True, True, agreement=False)]["v"]
        weighted = [
            cal.weight(s) * np.minimum(gate_factors(w, gated, list(streams))[s], 1.0) * z[s]["v"]
            for s in streams
        ]
        np.testing.assert_allclose(plain, np.max(weighted, axis=0), rtol=1e-6)
        assert (np.asarray(run) > plain).any()  # the term leads on some clips
    else:
        assert fusion_variant("max", True, True, agreement=False) not in out
    mean_run = CameraFusion("cam", cal, gate, smoothing=1, rule="mean")
    mean = [
        mean_run.update({s: float(raw[s]["v"][i]) for s in streams}, contexts[i], float(i)).raw_fused
        for i in range(n)
    ]
    np.testing.assert_allclose(out[fusion_variant("mean", True, True)]["v"], mean, rtol=1e-6)


def test_reliability_weights_from_two_groups_of_videos() -> None:
    """Training videos whose second half is brighter: the stream that follows the brightness drifts between
    the two groups of videos and is weighed down; the stable one is trusted."""
    rng = np.random.default_rng(2)
    lengths = [60, 60, 60, 60]
    n = sum(lengths)
    drift = np.concatenate([rng.normal(0.0, 1.0, n // 2), rng.normal(3.0, 1.0, n // 2)])
    folds = assessment_fold_ids(["v0", "v1", "v2", "v3"], {}, lengths)
    cal = fit_calibration({"stable": rng.normal(0.0, 1.0, n), "brightness": drift}, folds)
    assert cal.streams["stable"].weight > 0.9
    assert cal.streams["brightness"].weight < 0.6  # through its held-out tail (drift is not charged twice)
    assert cal.streams["brightness"].drift == pytest.approx(3.0, abs=0.8)


def test_each_video_can_be_weighed_by_its_own_cameras_calibration() -> None:
    """With a calibration per context, a stream one camera distrusts is weighed down in that camera's
    videos only."""
    z, labels = _scores()
    videos = list(labels)
    weights = {"strong": 1.0, "weak": 1.0, "flicker": 1.0}
    own = {videos[0]: {"strong": 1.0, "weak": 1.0, "flicker": 0.1}}
    out = fusion_ablation(z, weights, None, per_video=own)[fusion_variant("max", True, False)]
    plain = fusion_ablation(z, weights, None)[fusion_variant("max", True, False)]
    first, second = videos[0], videos[1]
    np.testing.assert_allclose(out[second], plain[second])
    expected = np.maximum.reduce([z["strong"][first], z["weak"][first], 0.1 * z["flicker"][first]])
    np.testing.assert_allclose(out[first], expected)
