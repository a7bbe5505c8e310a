"""The demo's count of detections and false alarms (pipeline/cli/demo.py): an alert reports an injected
event only when it is open during or just after it and its peak box is on the event's mask. Ground truth is
written the way the scene generator writes it (synth.writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cli.demo import MATCH_MARGIN_PX, MATCH_SLACK_S, _summary_markdown, alert_matches
from synth.writer import frame_name, write_mask

FPS = 10.0
N_FRAMES = 100
H, W = 60, 80
START, END = 40, 59  # the event's first and last frame
EVENT: dict[str, Any] = {"kind": "cyclist", "start": START, "end": END, "n_frames": N_FRAMES}


@pytest.fixture
def masks(tmp_path: Path) -> Path:
    """The event's mask: a 10 x 10 object moving right to left along rows 40-49, one pixel a frame."""
    folder = tmp_path / "masks" / "campus_000"
    folder.mkdir(parents=True)
    for index in range(N_FRAMES):
        mask = np.zeros((H, W), dtype=bool)
        if START <= index <= END:
            x = W - 10 - (index - START)
            mask[40:50, x : x + 10] = True
        write_mask(folder / frame_name(index, N_FRAMES, ".png"), mask)
    return folder


def _alert(start: float, end: float, peak: float, box: tuple[int, int, int, int] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"start_pts": start, "end_pts": end, "peak_time": peak}
    if box is not None:
        x0, y0, x1, y1 = box
        # boxes are in the alert's frame coordinates: here twice the masks' resolution
        record["peak_box"] = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "width": 2 * W, "height": 2 * H}
    return record


def test_an_alert_on_the_object_while_it_is_there_is_a_detection(masks: Path) -> None:
    # at 5.0 s (frame 50) the object spans x 60-69, y 40-49 in the mask: x 120-139, y 80-99 in the frame
    assert alert_matches(_alert(4.6, 5.6, 5.0, (120, 80, 140, 100)), EVENT, masks, FPS)


def test_an_alert_on_the_other_side_of_the_frame_is_not(masks: Path) -> None:
    assert not alert_matches(_alert(4.6, 5.6, 5.0, (0, 0, 20, 20)), EVENT, masks, FPS)


def test_an_alert_that_ends_before_the_event_starts_is_not_a_detection_even_at_its_place(masks: Path) -> None:
    # the object enters at the right edge at 4.0 s; an alert there that closed at 3.6 s came before it
    assert not alert_matches(_alert(2.8, 3.6, 3.0, (140, 80, 160, 100)), EVENT, masks, FPS)


def test_an_alert_within_the_slack_after_the_event_matches_where_the_object_last_was(masks: Path) -> None:
    late = END / FPS + 0.1 + MATCH_SLACK_S / 2
    # the object's last mask (frame 59) spans x 51-60 of the mask: x 102-121 of the frame
    assert alert_matches(_alert(late, late + 1, late, (100, 80, 120, 100)), EVENT, masks, FPS)
    too_late = (END + 1) / FPS + MATCH_SLACK_S + 0.5
    assert not alert_matches(_alert(too_late, too_late + 1, too_late, (100, 80, 120, 100)), EVENT, masks, FPS)


def test_the_margin_admits_a_box_just_beside_the_mask_and_no_further(masks: Path) -> None:
    # frame 50: mask rows 40-49 = frame rows 80-99; a box ending 10 px above it is within a 16 px margin
    assert alert_matches(_alert(4.6, 5.6, 5.0, (120, 60, 140, 70)), EVENT, masks, FPS, margin_px=16)
    assert not alert_matches(_alert(4.6, 5.6, 5.0, (120, 60, 140, 70)), EVENT, masks, FPS, margin_px=4)


def test_without_a_peak_box_or_masks_time_alone_decides(tmp_path: Path, masks: Path) -> None:
    assert alert_matches(_alert(4.6, 5.6, 5.0, None), EVENT, masks, FPS)
    assert alert_matches(_alert(4.6, 5.6, 5.0, (0, 0, 20, 20)), EVENT, tmp_path / "absent", FPS)
    assert not alert_matches(_alert(0.5, 1.0, 0.5, None), EVENT, masks, FPS)


def test_an_alert_that_peaked_before_the_event_at_its_place_is_not_a_detection(masks: Path) -> None:
    # a walker at the right edge from 3.0 s, the alert still open when the object comes in there at 4.0 s:
    # the alert's snapshot and box are of the walker
    assert not alert_matches(_alert(3.0, 4.4, 3.2, (140, 80, 160, 100)), EVENT, masks, FPS)
    # the same alert peaking on the object once it is in: a detection
    assert alert_matches(_alert(3.0, 4.4, 4.2, (140, 80, 160, 100)), EVENT, masks, FPS)


def test_the_window_is_exact_to_the_frame(tmp_path: Path) -> None:
    """A mask set in one frame only: a peak in the slack after that frame sees it, a peak whose window
    ends one frame before it does not (a one-frame slip between frame index and file name would fail)."""
    folder = tmp_path / "one"
    folder.mkdir()
    only = 45
    for index in range(N_FRAMES):
        mask = np.zeros((H, W), dtype=bool)
        if index == only:
            mask[10:20, 10:20] = True
        write_mask(folder / frame_name(index, N_FRAMES, ".png"), mask)
    box = (20, 20, 40, 40)  # frame coordinates, twice the masks': the object's own place
    at = only / FPS
    assert alert_matches(_alert(at, at + 0.5, at, box), EVENT, folder, FPS, margin_px=0)
    assert alert_matches(_alert(at, at + 2.5, at + MATCH_SLACK_S, box), EVENT, folder, FPS, margin_px=0)
    before = (only - 1) / FPS
    assert not alert_matches(_alert(4.0, before + 0.5, before, box), EVENT, folder, FPS, margin_px=0)
    after = at + MATCH_SLACK_S + 1 / FPS
    assert not alert_matches(_alert(at, after + 0.5, after, box), EVENT, folder, FPS, margin_px=0)


def test_an_alert_that_peaks_long_after_the_event_is_not_its_detection(masks: Path) -> None:
    # open during the event, but its peak (and snapshot) 20 s later is of something else
    late = (END + 1) / FPS + MATCH_SLACK_S + 20.0
    assert not alert_matches(_alert(5.0, late + 1, late, (100, 80, 120, 100)), EVENT, masks, FPS)


def test_the_summary_says_how_alerts_were_counted() -> None:
    event = {"kind": "cyclist", "start_s": 4.0, "end_s": 6.0, "detected": False, "delay_s": None}
    text = _summary_markdown(
        {
            "injected": 1,
            "detected": 0,
            "false_alarms": 1,
            "alerts": 1,
            "missed": ["campus-1: cyclist at 4.0-6.0s"],
            "match_slack_s": MATCH_SLACK_S,
            "match_margin_px": MATCH_MARGIN_PX,
            "cameras": {"campus-1": {"context": "campus", "events": [event], "on_threshold": 4.474}},
        }
    )
    assert "Alerts open at campus-1 4.47 " in text
    assert f"between the anomaly's first frame and {MATCH_SLACK_S:g} s after its last" in text
    assert "its peak falls in that span" in text
    assert f"grown by {MATCH_MARGIN_PX} px, is on the anomaly's mask" in text
    assert "| campus-1 | campus | cyclist | 4.0-6.0 | **missed** | - |" in text
