"""The alert state machine: hysteresis, minimum duration, cooldown, peak tracking, force_close, noise."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.alerting import (
    AlertMachine,
    AlertParams,
    AlertParamsError,
    AlertTimeError,
    AlertTransition,
)


def _run(machine: AlertMachine, samples: list[tuple[float, float]]) -> list[AlertTransition]:
    out: list[AlertTransition] = []
    for t, s in samples:
        out += machine.update(t, s, {"pixel": s})
    return out


def _ids() -> AlertMachine:
    counter = itertools.count()
    return AlertMachine(AlertParams(3.0, 2.0, 0.0, 0.0), id_factory=lambda: f"id-{next(counter)}")


def test_params_validation() -> None:
    with pytest.raises(AlertParamsError, match="must not exceed"):
        AlertParams(1.0, 2.0)
    with pytest.raises(AlertParamsError, match=">= 0"):
        AlertParams(3.0, 2.0, min_duration_s=-1)
    with pytest.raises(AlertParamsError, match="finite"):
        AlertParams(float("nan"), 2.0)
    p = AlertParams(3.0, 3.0)
    with pytest.raises(AttributeError):
        p.on_threshold = 5.0  # type: ignore[misc]


def test_opens_and_closes_with_hysteresis() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0, 0.0, 0.0))
    tr = _run(m, [(0, 1.0), (1, 3.0), (2, 2.5), (3, 2.0), (4, 2.9), (5, 1.99), (6, 2.5)])
    assert [(x.kind, x.t) for x in tr] == [("opened", 1), ("closed", 5)]
    # 2.0 == off_threshold does not close (strictly below closes); 2.5 after the close does not re-open.
    assert tr[1].alert.start == 1
    assert tr[1].alert.end == 5
    assert tr[1].alert.reason == "threshold"
    assert m.state == "idle"


def test_between_thresholds_does_not_open() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0))
    assert _run(m, [(t, 2.99) for t in range(10)]) == []
    assert m.state == "idle"


def test_min_duration_counts_from_first_crossing() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0, min_duration_s=1.0))
    tr = _run(m, [(0.0, 5.0), (0.5, 5.0), (0.9, 2.5), (1.0, 5.0), (1.5, 5.0), (2.0, 4.0), (2.5, 1.0)])
    # The dip to 2.5 at 0.9 s (below on) restarts the run; it opens 1 s after the 1.0 s crossing.
    assert [(x.kind, x.t) for x in tr] == [("opened", 2.0), ("closed", 2.5)]
    assert tr[0].alert.start == 1.0
    assert tr[0].alert.opened_at == 2.0
    assert m.state == "idle"


def test_pending_state_and_short_spike_never_opens() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0, min_duration_s=2.0))
    assert m.update(0.0, 10.0) == []
    assert m.state == "pending"
    assert m.update(1.9, 10.0) == []
    assert m.update(2.1, 0.0) == []
    assert m.state == "idle"


def test_cooldown_blocks_reopening_then_min_duration_restarts() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0, min_duration_s=0.5, cooldown_s=5.0))
    tr = _run(m, [(0.0, 4.0), (0.5, 4.0), (1.0, 0.0)])
    assert [x.kind for x in tr] == ["opened", "closed"]
    assert m.update(2.0, 9.0) == []
    assert m.state == "cooldown"
    assert m.update(5.9, 9.0) == []
    # Cooldown ends at 6.0: the minimum duration is counted from there.
    assert m.update(6.0, 9.0) == []
    assert m.state == "pending"
    opened = m.update(6.5, 9.0)
    assert [x.kind for x in opened] == ["opened"]
    assert opened[0].alert.start == 6.0
    assert opened[0].alert.seq == 2


def test_peak_tracks_time_score_contributions_prompt_and_frame() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0, min_duration_s=0.2))
    m.update(0.0, 3.5, {"pixel": 3.5}, prompt="a fight", frame_ref="f0")
    m.update(0.1, 6.0, {"pixel": 4.0, "motion": 2.0}, prompt="a fall", frame_ref="f1")
    opened = m.update(0.2, 4.0, {"pixel": 4.0}, prompt="a car", frame_ref="f2")
    # The peak before opening (during the minimum duration) is kept.
    assert opened[0].alert.peak.frame_ref == "f1"
    m.update(0.3, 7.0, {"pixel": 7.0}, prompt="a fire", frame_ref="f3")
    m.update(0.4, 6.9, {"pixel": 6.9}, prompt="smoke", frame_ref="f4")
    assert m.active is not None
    assert m.active.peak.score == 7.0
    closed = m.update(0.5, 1.0)
    peak = closed[0].alert.peak
    assert (peak.time, peak.score, peak.prompt, peak.frame_ref) == (0.3, 7.0, "a fire", "f3")
    assert peak.contributions == {"pixel": 7.0}


def test_force_close_closes_open_alert_with_reason() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0))
    m.update(1.0, 5.0)
    tr = m.force_close(2.5)
    assert len(tr) == 1
    assert tr[0].kind == "closed"
    assert tr[0].alert.reason == "shutdown"
    assert tr[0].alert.end == 2.5
    assert m.force_close(3.0) == []
    assert not m.is_open


def test_force_close_drops_pending_and_clamps_time() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0, min_duration_s=10))
    m.update(1.0, 5.0)
    assert m.force_close(2.0) == []
    assert m.state == "idle"
    m2 = AlertMachine(AlertParams(3.0, 2.0))
    m2.update(5.0, 5.0)
    tr = m2.force_close(1.0, reason="stream-end")
    assert tr[0].alert.end == 5.0
    assert tr[0].alert.reason == "stream-end"


def test_time_must_not_go_backwards() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0))
    m.update(1.0, 0.0)
    with pytest.raises(AlertTimeError, match="backwards"):
        m.update(0.5, 0.0)
    with pytest.raises(AlertTimeError, match="finite"):
        m.update(float("nan"), 0.0)


def test_nan_scores_are_ignored() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0))
    assert m.update(0.0, float("nan")) == []
    m.update(1.0, 5.0)
    assert m.update(2.0, float("nan")) == []
    assert m.is_open


def test_ids_and_seq() -> None:
    m = _ids()
    tr = _run(m, [(0, 5), (1, 0), (2, 5), (3, 0)])
    assert [x.alert.alert_id for x in tr] == ["id-0", "id-0", "id-1", "id-1"]
    assert [x.alert.seq for x in tr] == [1, 1, 2, 2]
    default_ids = AlertMachine(AlertParams(3.0, 2.0), first_seq=7)
    a = default_ids.update(0, 5)[0].alert
    assert a.seq == 7
    assert len(a.alert_id) == 36


@settings(max_examples=300, deadline=None)
@given(
    on=st.floats(-5, 10),
    gap=st.floats(0, 5),
    min_dur=st.floats(0, 3),
    cooldown=st.floats(0, 5),
    steps=st.lists(st.tuples(st.floats(0, 2), st.one_of(st.floats(-20, 20), st.just(math.nan))), max_size=80),
)
def test_noisy_input_invariants(
    on: float, gap: float, min_dur: float, cooldown: float, steps: list[tuple[float, float]]
) -> None:
    params = AlertParams(on, on - gap, min_dur, cooldown)
    m = AlertMachine(params)
    t = 0.0
    transitions: list[AlertTransition] = []
    for dt, score in steps:
        t += dt
        transitions += m.update(t, score)
        assert m.is_open == (m.active is not None)
    transitions += m.force_close(t + 1.0)
    assert not m.is_open
    # Alternating opened/closed, same alert in each pair: alerts never overlap; every open one is closed.
    assert len(transitions) % 2 == 0
    last_end = -math.inf
    for opened, closed in zip(transitions[::2], transitions[1::2], strict=True):
        assert (opened.kind, closed.kind) == ("opened", "closed")
        a = closed.alert
        assert opened.alert.alert_id == a.alert_id
        assert a.end is not None
        assert a.end >= a.start
        assert a.start >= last_end
        assert a.opened_at - a.start >= params.min_duration_s - 1e-9
        assert a.peak.score >= params.on_threshold
        assert a.start <= a.peak.time <= a.end
        if last_end > -math.inf:
            assert a.start >= last_end + params.cooldown_s - 1e-9
        last_end = a.end
    seqs = [x.alert.seq for x in transitions[::2]]
    assert seqs == list(range(1, len(seqs) + 1))
