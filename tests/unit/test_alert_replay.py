"""``zsad eval``'s alert replay: the run's smoother and alert machine over frame scores, counted per event."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.alerting import AlertParams
from training.alert_replay import AlertReplayError, Event, replay_alerts, video_alerts

FPS = 10.0
PARAMS = AlertParams(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=3.0)


def _video(n: int, bursts: list[tuple[int, int, float]]) -> np.ndarray:
    x = np.zeros(n)
    for a, b, v in bursts:
        x[a:b] = v
    return x


def test_an_alert_opens_and_closes_where_the_smoothed_score_crosses() -> None:
    x = _video(200, [(80, 120, 5.0)])
    # Read every 8th frame: frames 80..112 are samples 10..14; the median of 3 crosses at the second.
    assert video_alerts(x, PARAMS, hop=8, fps=FPS, smoothing=3) == [(88 / FPS, 128 / FPS)]
    # A single-sample spike never survives a median of 3, and does alert without one.
    spike = _video(200, [(80, 81, 9.0)])
    assert video_alerts(spike, PARAMS, hop=8, fps=FPS, smoothing=3) == []
    assert video_alerts(spike, PARAMS, hop=8, fps=FPS, smoothing=1) == [(8.0, 8.8)]
    # The run has a clip, and scores it, when its last frame arrives: (clip_len - 1) * stride frames after
    # the first, which the score of the clip's first frame stands for.
    assert video_alerts(x, PARAMS, hop=8, fps=FPS, smoothing=3, delay=6) == [(94 / FPS, 134 / FPS)]


def test_detected_events_false_alarms_and_normal_time_are_counted() -> None:
    fused = {
        "a": _video(400, [(100, 140, 6.0), (300, 330, 6.0)]),  # an event, then a false alarm
        "b": _video(400, []),  # an event nobody alerted on
        "c": _video(400, []),  # a normal video
    }
    events = {"a": [Event(100, 150, "cyclist")], "b": [Event(50, 90, "running")]}
    params = {v: PARAMS for v in fused}
    report = replay_alerts(fused, events, params, hop=8, fps=FPS, smoothing=3)
    assert (report["events"], report["detected"], report["false_alarms"]) == (2, 1, 1)
    assert report["per_kind"] == {"cyclist": [1, 1], "running": [0, 1]}
    assert report["missed"] == ["b:running@50"]
    # Normal time: every frame outside the events and the 2 s after them.
    assert report["normal_minutes"] == pytest.approx((1200 - 71 - 61) / FPS / 60, abs=0.01)
    # A higher threshold on video a: the event is still caught, nothing else is.
    strict = {**params, "a": AlertParams(7.0, 2.0, 0.0, 3.0)}
    assert replay_alerts(fused, events, strict, hop=8, fps=FPS, smoothing=3)["detected"] == 0


def test_an_alert_in_the_slack_after_an_event_is_its_detection() -> None:
    fused = {"a": _video(300, [(125, 160, 6.0)])}  # rises 0.5 s after the event ends, opens 1.6 s after
    late = replay_alerts(fused, {"a": [Event(100, 120)]}, {"a": PARAMS}, hop=8, fps=FPS, smoothing=3)
    assert (late["detected"], late["false_alarms"]) == (1, 0)
    never = replay_alerts(
        fused, {"a": [Event(100, 120)]}, {"a": PARAMS}, hop=8, fps=FPS, smoothing=3, slack_s=0.0
    )
    assert (never["detected"], never["false_alarms"]) == (0, 1)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(AlertReplayError, match="outside its 100 frames"):
        replay_alerts(
            {"a": np.zeros(100)}, {"a": [Event(90, 120)]}, {"a": PARAMS}, hop=8, fps=FPS, smoothing=3
        )
    with pytest.raises(AlertReplayError, match="hop must be"):
        video_alerts(np.zeros(10), PARAMS, hop=0, fps=FPS, smoothing=3)
