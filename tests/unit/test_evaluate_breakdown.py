"""`zsad eval`'s breakdown by kind and its printed table."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli.evaluate import print_summary
from training.evaluate import breakdown
from training.metrics import roc_auc, score_report


def test_a_kind_is_judged_on_its_own_frames_not_on_those_an_easier_event_shares() -> None:
    # One video: a walker off the path (frames 10-29, scored low: barely seen) and a van (frames 20-39,
    # scored high); frames 20-29 hold both. Normal frames score 0.
    scores = np.zeros(60)
    scores[10:20] = 0.2  # the walker alone: hardly above the normal frames
    scores[20:40] = 5.0  # while the van is there (and after)
    labels = (scores > 0).astype(np.int64)
    scores[45:60] = np.linspace(0.0, 0.5, 15)  # normal frames, some above the walker's
    events = {
        "v": [{"kind": "off_path", "start": 10, "end": 29}, {"kind": "vehicle", "start": 20, "end": 39}]
    }
    b = breakdown({"v": scores}, {"v": labels}, {"v": "campus"}, events)
    normal = scores[labels == 0]

    def auc(pos: np.ndarray) -> float:
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(normal))])
        return round(roc_auc(y, np.concatenate([pos, normal])), 4)

    assert b["per_kind"]["off_path"] == auc(scores[10:20])  # the walker's own frames only
    assert b["per_kind_with_overlaps"]["off_path"] == auc(scores[10:30])  # the van's frames lift it
    assert b["per_kind"]["off_path"] < 0.8 < b["per_kind_with_overlaps"]["off_path"]
    assert b["per_kind"]["vehicle"] == auc(scores[30:40])
    assert b["overlap_frames"] == {"off_path": 10, "vehicle": 10}


def test_the_printed_table_says_n_a_where_no_video_has_both_classes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = score_report({"a": [0.1, 0.2, 0.9], "b": [0.8, 0.7]}, {"a": [0, 0, 0], "b": [1, 1]}, fps=10)
    assert report["macro_auc"] is None
    row = {  # as training.evaluate summarises each variant
        "micro_auc": report["micro_auc"],
        "macro_auc": report["macro_auc"],
        "ap": report["average_precision"],
        "recall_at_5pct_fpr": report["recall_at_fpr"].get("0.05"),
    }
    empty = {"per_context": {}, "per_kind": {}}
    alerts = {"on_threshold": 3.0, "hop_frames": 4, "detected": 1, "events": 1, "false_alarms": 0}
    print_summary(
        {
            "summary": {"product": row},
            "breakdown": {**empty, "floor_model_resolution": empty},
            "alerts": {**alerts, "normal_minutes": 0.1},
        }
    )
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("product"))
    assert printed.split()[1:3] == [f"{report['micro_auc']:.4f}", "n/a"]


def test_a_kind_counts_only_the_frames_the_labels_call_abnormal() -> None:
    """A synthetic event can run on after its actor has left the view (seed 59's off-path walker: 136 of
    its span's frames labelled normal). Those frames are normal to the micro AUC; the kind must not count
    them as its own, nor may the alert replay ask for an alert there."""
    from training.alert_replay import Event
    from training.evaluate import _labelled

    scores = np.zeros(60)
    scores[10:20] = 5.0  # the walker, seen while in view (frames 10-19)
    labels = np.zeros(60, np.int64)
    labels[10:20] = 1  # ... and labelled while in view
    scores[40:60] = np.linspace(0.0, 1.0, 20)  # normal frames
    events = {"v": [{"kind": "off_path", "start": 10, "end": 39}]}  # the event runs on to frame 39
    b = breakdown({"v": scores}, {"v": labels}, {"v": "station"}, events)
    assert b["per_kind"]["off_path"] == 1.0  # frames 20-39 (score 0, labelled normal) are not the walker's
    walker_event = {"kind": "off_path", "start": 10, "end": 39}  # a set without per-event runs
    assert _labelled(walker_event, labels) == Event(10, 19, "off_path")
    assert _labelled({**walker_event, "start": 30}, labels) is None  # never labelled: no event to detect
    # The shape seed 59's walker has: abnormal, normal for a long stretch, abnormal for one frame as it
    # leaves through the frame's edge. An alert only in the normal stretch is a false alarm.
    labels[39] = 1
    walker = _labelled(walker_event, labels)
    assert walker == Event(10, 39, "off_path", ((10, 19), (39, 39)))
    from plugins.alerting import AlertParams
    from training.alert_replay import replay_alerts

    fused = np.zeros(60)
    fused[28:34] = 9.0  # an alert in the normal stretch only (more than the 2 s slack after frame 19)
    params = AlertParams(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=0.0)
    report = replay_alerts({"v": fused}, {"v": [walker]}, {"v": params}, hop=1, fps=1.0, smoothing=1)
    assert (report["detected"], report["false_alarms"]) == (0, 1)


def test_an_event_that_records_its_own_runs_is_judged_on_them_not_on_the_union_labels() -> None:
    """A set written since 2026-12-06 records each event's own abnormal frames. Another event's frames
    inside this one's normal stretch (a van passing while the off-path walker is back on the path) are
    abnormal in the labels, a union over every event, but not the walker's."""
    from training.alert_replay import Event
    from training.evaluate import _labelled

    scores = np.zeros(80)
    labels = np.zeros(80, np.int64)
    scores[10:20] = 0.3  # the walker off the path, faintly seen
    labels[10:20] = 1
    scores[25:35] = 6.0  # a van, inside the walker's span, while the walker is back on the path
    labels[25:35] = 1
    scores[40:45] = 0.3  # the walker off the path again
    labels[40:45] = 1
    scores[50:80] = np.linspace(0.0, 1.0, 30)  # normal frames
    walker = {"kind": "off_path", "start": 10, "end": 44, "runs": [[10, 19], [40, 44]]}
    van = {"kind": "vehicle", "start": 25, "end": 34, "runs": [[25, 34]]}
    b = breakdown({"v": scores}, {"v": labels}, {"v": "station"}, {"v": [walker, van]})
    normal = scores[labels == 0]
    pos = np.concatenate([scores[10:20], scores[40:45]])
    expected = roc_auc(np.r_[np.ones(pos.size), np.zeros(normal.size)], np.r_[pos, normal])
    assert b["per_kind"]["off_path"] == round(expected, 4)
    assert b["per_kind_with_overlaps"]["off_path"] == round(expected, 4)  # the van is not the walker's
    assert b["overlap_frames"] == {"off_path": 0, "vehicle": 0}
    assert _labelled(walker, labels) == Event(10, 44, "off_path", ((10, 19), (40, 44)))
    # Without its runs, the union labels would hand the van's frames to the walker.
    unrecorded = {k: v for k, v in walker.items() if k != "runs"}
    assert _labelled(unrecorded, labels) == Event(10, 44, "off_path", ((10, 19), (25, 34), (40, 44)))


def test_runs_outside_their_event_are_refused_with_the_event_named() -> None:
    from training.evaluate import EvaluationError, _labelled

    labels = np.ones(50, np.int64)
    with pytest.raises(EvaluationError, match=r"running event of frames 10\.\.20 records runs"):
        _labelled({"kind": "running", "start": 10, "end": 20, "runs": [[5, 12]]}, labels)
    with pytest.raises(EvaluationError, match="in order"):
        _labelled({"kind": "running", "start": 10, "end": 20, "runs": [[15, 20], [10, 12]]}, labels)
