"""A 2-minute soak: 8 looping cameras in real time through the whole application (alerts opening and
closing every 8 s, event clips written and retained). Memory, file descriptors and threads stay flat.

The 30-minute version is ``python -m tests.reliability.soak --minutes 30 --cameras 8`` (docs/reliability.md).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from tests.reliability.soak import fit_slope, run_soak

pytest.importorskip("gi")
pytest.importorskip("psutil")

RSS_SLOPE_MAX_MB_PER_MIN = 15.0


def test_fit_slope() -> None:
    assert fit_slope([0.0, 1.0, 2.0], [5.0, 7.0, 9.0]) == pytest.approx(2.0)
    assert fit_slope([1.0], [3.0]) == 0.0
    assert fit_slope([1.0, 1.0], [3.0, 4.0]) == 0.0


@pytest.mark.slow
def test_two_minute_soak_is_flat(world: dict[str, Path], tmp_path: Path) -> None:
    result = run_soak(2.0, 8, work_dir=tmp_path, interval_s=5.0, warmup_s=45.0, world=world)
    assert set(result.camera_states.values()) == {"live"}
    # 8 cameras x 10 fps x 120 s, less start-up.
    assert result.frames_in >= 0.8 * 8 * 10 * 120
    assert result.alerts >= 8  # every camera alerted at least once: media paths were exercised
    assert result.clips_dropped == 0
    # A leak of one display frame per sampled frame would be ~1 GB/min; allocator noise is a few MB/min.
    assert result.rss_slope_mb_per_min < RSS_SLOPE_MAX_MB_PER_MIN, result.samples
    # Clip writers come and go (a thread and a few fds each), so counts move up and down for a moment;
    # what is typical must not rise from the first half of the run to the second (a leak would).
    after = [s for s in result.samples if s.t_s >= result.warmup_s]
    half = len(after) // 2
    for what in ("fds", "threads"):
        first = statistics.median(getattr(s, what) for s in after[:half])
        second = statistics.median(getattr(s, what) for s in after[half:])
        assert second <= first + 2, (what, [(round(s.t_s), getattr(s, what)) for s in after])
    assert max(s.fds for s in after) - min(s.fds for s in after) <= 60
    assert max(s.threads for s in after) - min(s.threads for s in after) <= 30
