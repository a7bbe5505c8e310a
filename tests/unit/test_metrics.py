"""Frame-level metrics against brute force, the frame-difference floor, and the evaluation plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.baselines import FrameDifferenceError, extrapolation_scores, frame_difference_scores
from training.metrics import (
    MetricError,
    alarm_events,
    average_precision,
    concat_videos,
    count_false_alarms,
    false_alarms_per_hour,
    gaussian_smooth,
    macro_auc,
    micro_auc,
    minmax_normalise,
    per_video_auc,
    recall_at_fpr,
    roc_auc,
    roc_curve,
    score_report,
    threshold_at_fpr,
)

# ---- brute-force references --------------------------------------------------------------------


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_points(y: np.ndarray, s: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, fpr, tpr) for alarming on score >= t, every distinct t, highest first."""
    out = []
    for t in sorted(set(s.tolist()), reverse=True):
        alarm = s >= t
        out.append((t, alarm[y == 0].mean(), alarm[y == 1].mean()))
    return out


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        alarm = s >= t
        recall = (alarm & (y == 1)).sum() / (y == 1).sum()
        precision = (alarm & (y == 1)).sum() / alarm.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


@st.composite
def labelled_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 40))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    y[draw(st.integers(0, n - 1))] = 1
    zero_at = draw(st.integers(0, n - 1))
    if y.sum() == n:
        y[zero_at] = 0
    if y.sum() == 0:
        y[0] = 1
    # few distinct values force ties between positives and negatives
    tied = draw(st.booleans())
    elem = st.integers(0, 4).map(float) if tied else st.floats(-1e3, 1e3, allow_nan=False)
    s = np.array(draw(st.lists(elem, min_size=n, max_size=n)), dtype=np.float64)
    return y, s


# ---- AUC, ROC, AP --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(labelled_scores())
def test_auc_matches_pairwise_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(labelled_scores())
def test_ap_and_recall_at_fpr_match_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    assert average_precision(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)
    points = brute_points(y, s)
    for target, got in recall_at_fpr(y, s, (0.0, 0.1, 0.25, 0.5)).items():
        want = max([0.0] + [tpr for _, fpr, tpr in points if fpr <= target])
        assert got == pytest.approx(want, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(labelled_scores())
def test_roc_curve_points_are_the_brute_force_operating_points(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    fpr, tpr, thr = roc_curve(y, s)
    assert thr[0] == np.inf
    assert fpr[0] == 0
    assert tpr[0] == 0
    assert fpr[-1] == 1
    assert tpr[-1] == 1
    want = brute_points(y, s)
    assert len(thr) == len(want) + 1
    for (t, f, r), t2, f2, r2 in zip(want, thr[1:], fpr[1:], tpr[1:], strict=True):
        assert (t, f, r) == pytest.approx((t2, f2, r2))


def test_known_auc_and_ap_values() -> None:
    # scikit-learn's documented example: roc_auc_score = 0.75, average_precision_score = 0.8333...
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx(0.8333333333)


def test_ties_count_one_half() -> None:
    assert roc_auc([0, 1, 0, 1], [3.0, 3.0, 3.0, 3.0]) == pytest.approx(0.5)
    # one positive tied with one of two negatives, above the other: (1 + 0.5) / 2
    assert roc_auc([1, 0, 0], [2.0, 2.0, 1.0]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [1.0, 2.0]) == 0.0
    assert roc_auc(np.array([True, False]), np.array([2, 1], dtype=np.uint8)) == 1.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_one_class_is_a_clear_error(labels: list[int]) -> None:
    with pytest.raises(MetricError, match="need both classes"):
        roc_auc(labels, np.arange(len(labels)))
    with pytest.raises(MetricError, match="need both classes"):
        average_precision(labels, np.arange(len(labels)))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(MetricError, match="3 labels but 2 scores"):
        roc_auc([0, 1, 0], [1.0, 2.0])
    with pytest.raises(MetricError, match="NaN"):
        roc_auc([0, 1], [1.0, np.nan])
    with pytest.raises(MetricError, match="0 \\(normal\\) or 1"):
        roc_auc([0, 2], [1.0, 2.0])
    with pytest.raises(MetricError, match="no frames"):
        roc_auc([], [])
    with pytest.raises(MetricError, match="videos differ"):
        micro_auc({"a": [1.0, 2.0]}, {"b": [0, 1]})
    with pytest.raises(MetricError, match="video 'a'"):
        micro_auc({"a": [1.0]}, {"a": [0, 1]})


# ---- micro / macro ---------------------------------------------------------------------------------


def test_micro_and_macro_auc() -> None:
    # each video ranks perfectly on its own, but their scales differ, so pooling mis-ranks
    scores = {"a": np.array([0.0, 1.0]), "b": np.array([10.0, 11.0]), "c": np.array([5.0, 6.0])}
    labels = {"a": np.array([0, 1]), "b": np.array([0, 1]), "c": np.array([1, 1])}
    assert macro_auc(scores, labels) == 1.0
    assert per_video_auc(scores, labels)["c"] is None
    y, s = concat_videos(scores, labels)
    assert micro_auc(scores, labels) == pytest.approx(brute_auc(y, s))
    assert micro_auc(scores, labels) < 1.0
    with pytest.raises(MetricError, match="no video has both"):
        macro_auc({"c": scores["c"]}, {"c": labels["c"]})


def test_minmax_normalise() -> None:
    np.testing.assert_allclose(minmax_normalise([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(minmax_normalise([7.0, 7.0]), [0.0, 0.0])


# ---- thresholds and alarms ---------------------------------------------------------------------------


def test_threshold_at_fpr() -> None:
    normal = np.arange(1, 101, dtype=np.float64)  # 1..100
    t = threshold_at_fpr(normal, 0.05)
    assert t == 96.0  # 96..100 alarm: exactly 5 %
    assert (normal >= t).mean() <= 0.05
    assert (normal >= 95.0).mean() > 0.05  # no lower threshold keeps the rate
    assert threshold_at_fpr(normal, 1.0) == 1.0
    t0 = threshold_at_fpr(normal, 0.0)
    assert t0 > 100.0
    assert (normal >= t0).sum() == 0
    # ties: three normal frames at the top score; 1 % of 100 cannot admit any of them
    tied = np.r_[np.zeros(97), 5.0, 5.0, 5.0]
    assert threshold_at_fpr(tied, 0.01) > 5.0
    assert threshold_at_fpr(tied, 0.03) == 5.0
    with pytest.raises(MetricError, match="target FPR"):
        threshold_at_fpr(normal, 1.5)


def test_alarm_events_and_false_alarms_per_hour() -> None:
    s = np.array([0, 5, 5, 0, 5, 0, 0, 5, 5, 5], dtype=float)
    assert alarm_events(s, 5.0) == [(1, 3), (4, 5), (7, 10)]
    assert alarm_events(np.full(3, 9.0), 5.0) == [(0, 3)]  # starting above threshold is an event
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    # events (1,3) and (4,5) touch no anomaly; (7,10) overlaps frame 8 so it is a detection
    assert count_false_alarms(y, s, 5.0) == 2
    other_s = np.array([6.0, 6.0, 0.0, 6.0])
    other_y = np.zeros(4, dtype=int)
    rate = false_alarms_per_hour({"a": s, "b": other_s}, {"a": y, "b": other_y}, 5.0, fps=2.0)
    normal_hours = (9 + 4) / 2.0 / 3600.0
    assert rate == pytest.approx((2 + 2) / normal_hours)
    with pytest.raises(MetricError, match="no normal frames"):
        false_alarms_per_hour({"a": s}, {"a": np.ones(10, int)}, 5.0, fps=10.0)
    with pytest.raises(MetricError, match="fps"):
        false_alarms_per_hour({"a": s}, {"a": y}, 5.0, fps=0.0)


def test_gaussian_smooth() -> None:
    const = np.full(20, 3.0)
    np.testing.assert_allclose(gaussian_smooth(const, 2.0), const)
    impulse = np.zeros(41)
    impulse[20] = 1.0
    sm = gaussian_smooth(impulse, 2.0)
    assert sm.shape == (41,)
    assert sm.sum() == pytest.approx(1.0)
    assert int(np.argmax(sm)) == 20
    np.testing.assert_allclose(sm[:20], sm[21:][::-1])  # symmetric around the impulse
    assert sm[20] == pytest.approx(1 / (np.sqrt(2 * np.pi) * 2.0), rel=1e-3)
    np.testing.assert_array_equal(gaussian_smooth(impulse, 0.0), impulse)
    assert gaussian_smooth([1.0, 2.0, 3.0], 5.0).shape == (3,)  # kernel wider than the signal
    with pytest.raises(MetricError, match="sigma"):
        gaussian_smooth(impulse, -1.0)


def test_score_report_is_json_ready_and_consistent() -> None:
    rng = np.random.default_rng(0)
    labels = {f"v{i}": (np.arange(50) >= 30).astype(np.int8) for i in range(3)}
    labels["all_bad"] = np.ones(20, dtype=np.int8)
    scores = {v: y * 2.0 + rng.normal(size=len(y)) * (1 + i) for i, (v, y) in enumerate(labels.items())}
    report = score_report(scores, labels, fps=25.0)
    json.dumps(report)  # plain types only
    assert report["frames"] == 170
    assert report["anomalous_frames"] == 80
    assert report["videos"] == 4
    assert report["micro_auc"] == pytest.approx(micro_auc(scores, labels))
    assert report["macro_auc"] == pytest.approx(macro_auc(scores, labels))
    assert report["macro_auc_videos"] == 3
    assert report["per_video_auc"]["all_bad"] is None
    assert set(report["recall_at_fpr"]) == {"0.01", "0.02", "0.05"}
    norm = {v: minmax_normalise(s) for v, s in scores.items()}
    assert report["minmax_normalised"]["micro_auc"] == pytest.approx(micro_auc(norm, labels))
    assert report["threshold_source"].startswith("fpr<=0.01")
    assert report["frame_fpr_at_threshold"] <= 0.01
    assert report["normal_hours"] == pytest.approx(90 / 25.0 / 3600.0)
    given_thr = score_report(scores, labels, fps=25.0, threshold=1e9)
    assert given_thr["threshold_source"] == "given"
    assert given_thr["alarm_events"] == 0
    assert given_thr["false_alarms_per_hour"] == 0.0
    assert given_thr["frame_recall_at_threshold"] == 0.0


# ---- the frame-difference floor ------------------------------------------------------------------


def test_frame_difference_scores_take_the_strongest_patch() -> None:
    frames = np.zeros((4, 32, 48, 3), dtype=np.uint8)
    frames[2, 16:32, 0:16] = 80  # one whole patch brightens by 80 in frame 2, then stays
    frames[3, 16:32, 0:16] = 80
    frames[3, 0:4, 40:44] = 160  # a small change: 16 of 256 pixels of a patch
    s = frame_difference_scores(frames)
    assert s.dtype == np.float32
    assert s.shape == (4,)
    np.testing.assert_allclose(s, [0.0, 0.0, 80.0, 160 * 16 / 256], rtol=1e-5)


def test_frame_difference_first_frame_copies_second_and_any_resolution_works() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(5, 37, 50, 3), dtype=np.uint8)
    s = frame_difference_scores(frames)
    assert s[0] == s[1] > 0
    gray = rng.integers(0, 256, size=(3, 9, 11)).astype(np.float64)  # smaller than one patch
    g = frame_difference_scores(gray)
    assert g[1] == pytest.approx(np.abs(gray[1] - gray[0]).mean(), rel=1e-5)
    assert frame_difference_scores(frames[:1]).tolist() == [0.0]
    with pytest.raises(FrameDifferenceError, match="shape"):
        frame_difference_scores(np.zeros((3, 8, 8, 4), dtype=np.uint8))


def test_extrapolation_scores_are_zero_for_steady_motion_and_see_a_speed_change() -> None:
    x = np.arange(48, dtype=np.float64)

    def at(shift: float) -> np.ndarray:  # a brightness ramp moved ``shift`` pixels right
        return np.broadcast_to(3.0 * (x - shift), (32, 48))

    steady = np.stack([at(s) for s in (0, 1, 2, 3, 4)])
    np.testing.assert_allclose(extrapolation_scores(steady), 0.0, atol=1e-4)
    assert frame_difference_scores(steady)[2:].min() == pytest.approx(3.0, rel=1e-5)  # it does move
    faster = np.stack([at(s) for s in (0, 1, 2, 6, 10)])  # speeds up from 1 to 4 pixels a frame
    s = extrapolation_scores(faster)
    np.testing.assert_allclose(s, [0.0, 0.0, 0.0, 9.0, 0.0], atol=1e-4)
    assert extrapolation_scores(steady[:2]).tolist() == [0.0, 0.0]


# ---- plots ---------------------------------------------------------------------------------------------


def test_plots_write_pngs(tmp_path: Path) -> None:
    from PIL import Image

    from training.plots import PlotError, plot_roc_curves, plot_score_timelines

    rng = np.random.default_rng(2)
    labels = {f"Test{i:03d}": (np.arange(60) > 20 + i).astype(np.int8) for i in range(4)}
    model = {v: y + rng.normal(size=60) * 0.5 for v, y in labels.items()}
    floor = {v: y + rng.normal(size=60) * 2.0 for v, y in labels.items()}
    roc = plot_roc_curves(
        {"model": concat_videos(model, labels), "floor": concat_videos(floor, labels)}, tmp_path / "a/roc.png"
    )
    with Image.open(roc) as im:
        assert im.format == "PNG"
        assert im.width > 300
        assert im.height > 300
    tl = plot_score_timelines(
        model, tmp_path / "timeline.png", labels=labels, others={"floor": floor}, threshold=0.5, ncols=3
    )
    with Image.open(tl) as im:
        assert im.format == "PNG"
        assert im.width > im.height
    with pytest.raises(PlotError, match="need both classes"):
        plot_roc_curves({"bad": (np.ones(5), np.arange(5.0))}, tmp_path / "bad.png")
    with pytest.raises(PlotError, match="Test000"):
        plot_score_timelines(model, tmp_path / "x.png", others={"floor": {"Test000": np.zeros(3)}})
