"""RunOutputs when event-media frames and scored clips do not arrive together (pipeline/outputs/hub.py,
pipeline/outputs/media.py): the CPU graph hands display frames over on their own thread, which can lag the
scoring, so a clip can open an alert before the frame it describes is buffered; and a clip still being
scored when the run shuts down must not open an alert that nothing closes, nor may an alert open when its
camera's stream ends (eos, failed) stay open, or its clip unfinished. Also: a second run on the same
output folder is refused (its sinks' spools are locked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.cpu.scheduler import CameraQueueStats, SchedulerStats
from pipeline.outputs.hub import RunOutputs
from plugins.fusion import fit_calibration, save_calibration
from plugins.scorer import StreamScores
from tests.fixtures.hub_outputs import alerting_outputs

CAMERA = "gate"


def _outputs(tmp_path: Path, media: dict[str, object] | None = None) -> RunOutputs:
    rng = np.random.default_rng(0)
    samples = {s: 0.1 + 0.01 * rng.standard_normal(200) for s in ("pixel", "motion")}
    calibration = tmp_path / "calib" / f"{CAMERA}.json"
    save_calibration(fit_calibration(samples, camera=CAMERA), calibration)
    return alerting_outputs(
        tmp_path, CAMERA, media=media if media is not None else {"clips": False}, calibration=str(calibration)
    )


def _hot(index: int) -> StreamScores:
    m = np.full((2, 4), 0.1, np.float32)
    m[1, 3] = 1.0
    maps = {"pixel": m, "motion": m.copy()}
    return StreamScores(
        CAMERA, index, {k: float(v.max()) for k, v in maps.items()}, maps, np.zeros(4, np.float32)
    )


def _frame(i: int) -> np.ndarray:
    """A flat 24 x 32 frame whose red level encodes ``i``."""
    img = np.zeros((24, 32, 3), np.uint8)
    img[..., 0] = 20 * i
    return img


def _alerts(out: RunOutputs) -> list[dict[str, Any]]:
    return out.run_state.alerts(camera=CAMERA, limit=100)


def test_a_clip_scored_before_its_frame_came_gets_the_snapshot_of_that_frame(tmp_path: Path) -> None:
    out = _outputs(tmp_path)
    try:
        out.display_frame(CAMERA, _frame(0), 0.0)  # the display branch has delivered only the first frame
        # A clip from 1.2 s to 2.0 s opens an alert; its maps describe its first frame, at 1.2 s.
        out.clip_scored(CAMERA, 2.0, _hot(0), None, frames=4, frame_t=1.2)
        (opened,) = _alerts(out)
        # The box is in the camera's frame size, known from the frame that did come.
        assert (opened["peak_box"]["width"], opened["peak_box"]["height"]) == (32, 24)
        snapshot = out.out / opened["snapshot"]
        for i in range(1, 6):  # the display branch catches up: 0.4, 0.8, ... 2.0 s
            out.display_frame(CAMERA, _frame(i), 0.4 * i)
    finally:
        out.shutdown()
    # Not the stale frame of 0.0 s that was buffered when the alert opened, nor the clip's end at 2.0 s.
    with Image.open(snapshot) as img:
        red = int(np.asarray(img)[12, 16, 0])
    assert abs(red - int(_frame(3)[0, 0, 0])) <= 6, red
    assert snapshot.with_name(f"{opened['alert_id']}.heatmap.jpg").is_file()


def test_a_clip_scored_after_shutdown_opens_no_alert(tmp_path: Path) -> None:
    out = _outputs(tmp_path)
    out.display_frame(CAMERA, _frame(0), 0.0)
    out.shutdown()
    # A scheduler that did not stop in time delivers one more clip: no alert, no record, no media.
    assert out.clip_scored(CAMERA, 0.8, _hot(0), None, frames=4, frame_t=0.0) is None
    assert _alerts(out) == []
    assert not (out.out / "events" / CAMERA).exists() or not list((out.out / "events" / CAMERA).glob("*.jpg"))


@pytest.mark.parametrize("state", ["eos", "failed", "reconnecting"])
def test_an_alert_open_when_its_camera_ends_is_closed_and_its_clip_finished_once_its_clips_are_scored(
    tmp_path: Path, state: str
) -> None:
    from pipeline.cpu.scheduler import CameraQueueStats, SchedulerStats

    def queue(submitted: int, processed: int) -> SchedulerStats:
        depth = submitted - processed
        return SchedulerStats(
            cameras={CAMERA: CameraQueueStats(depth=depth, submitted=submitted, processed=processed)}
        )

    out = _outputs(tmp_path, media={"pre_s": 1.0, "post_s": 3.0})  # clips on: real GStreamer encoding
    try:
        for i in range(5):
            out.display_frame(CAMERA, _frame(i), 0.4 * i)
        out.clip_scored(CAMERA, 1.6, _hot(0), None, frames=4, frame_t=0.8)
        (opened,) = _alerts(out)
        assert opened["status"] == "open"
        out.display_frame(CAMERA, _frame(5), 2.0)
        # The stream ends with one clip still queued: closing now would let that clip open a new alert.
        out.camera_state(CAMERA, state, "end of file" if state == "eos" else "decoder error")
        out.record_queues(queue(submitted=2, processed=1), clip_len=4)
        assert [a["status"] for a in _alerts(out)] == ["open"]
        out.clip_scored(CAMERA, 2.0, _hot(1), None, frames=4, frame_t=1.2)  # the last clip, still hot
        out.record_queues(queue(submitted=2, processed=2), clip_len=4)
        (closed,) = _alerts(out)
        assert (closed["alert_id"], closed["status"]) == (opened["alert_id"], "closed")
        assert (closed["reason"], closed["end_pts"]) == ("shutdown", 2.0)
        # Its clip is finished now with the frames it has, not when the run ends (no frame will come to
        # end its post-roll).
        assert out.recorders[CAMERA].wait_idle(30)
        clip = out.out / closed["clip"]
        assert clip.is_file()
        assert not list(clip.parent.glob(".*.part"))
    finally:
        out.shutdown()
    assert [a["status"] for a in _alerts(out)] == ["closed"]  # shutdown found nothing more to close


def _queue(submitted: int, processed: int) -> SchedulerStats:
    return SchedulerStats(
        cameras={
            CAMERA: CameraQueueStats(depth=submitted - processed, submitted=submitted, processed=processed)
        }
    )


def test_counts_taken_before_the_end_of_stream_do_not_close_its_alert(tmp_path: Path) -> None:
    out = _outputs(tmp_path)
    try:
        out.display_frame(CAMERA, _frame(0), 0.0)
        out.clip_scored(CAMERA, 1.6, _hot(0), None, frames=4, frame_t=0.8)
        stats = _queue(submitted=1, processed=1)  # a tick's counts, taken before the camera's last clip came
        out.camera_state(
            CAMERA, "eos", "end of file"
        )  # meanwhile the last clip was queued and the file ended
        out.record_queues(stats, clip_len=4)
        assert [a["status"] for a in _alerts(out)] == ["open"]  # the counts do not know of the last clip
        out.record_queues(_queue(submitted=2, processed=1), clip_len=4)
        assert [a["status"] for a in _alerts(out)] == ["open"]
        out.clip_scored(CAMERA, 2.0, _hot(1), None, frames=4, frame_t=1.2)
        out.record_queues(_queue(submitted=2, processed=2), clip_len=4)
        assert [a["status"] for a in _alerts(out)] == ["closed"]
    finally:
        out.shutdown()


def test_frames_still_queued_at_the_end_of_stream_do_not_undo_its_close(tmp_path: Path) -> None:
    out = _outputs(tmp_path)
    try:
        out.display_frame(CAMERA, _frame(0), 0.0)
        out.clip_scored(CAMERA, 1.6, _hot(0), None, frames=4, frame_t=0.8)
        out.camera_state(CAMERA, "eos", "end of file")
        out.camera_state(
            CAMERA, "live", ""
        )  # DeepStream: frames queued before the probe when the mux said so
        for _ in range(2):
            out.record_queues(_queue(submitted=1, processed=1), clip_len=4)
        assert [a["status"] for a in _alerts(out)] == ["closed"]
    finally:
        out.shutdown()


def test_retention_keeps_an_event_whose_snapshot_waits(tmp_path: Path) -> None:
    from core.config import MediaConfig
    from pipeline.outputs.media import EventRecorder

    rec = EventRecorder("cam", tmp_path, MediaConfig(clips=False, max_events_per_camera=1), fps=10.0)
    folder = tmp_path / "events" / "cam"
    rec.open_event("waiting", start_pts=1.0, peak_pts=1.0)  # nothing buffered yet: the snapshot waits
    rec.close_event("waiting", end_pts=1.0)
    (folder / "waiting.npz").write_bytes(b"evidence")  # the hub saves the evidence beside it
    rec.add_frame(_frame(1), 0.9)
    rec.open_event("next", start_pts=0.9, peak_pts=0.9)  # retention runs: one event may stay
    assert rec.wait_idle(10)
    # The waiting event is still being written: retention took the older-looking files of neither.
    assert (folder / "waiting.npz").is_file()
    rec.add_frame(_frame(2), 1.0)
    rec.close(10)
    assert (folder / "waiting.jpg").is_file()


def test_a_second_run_on_the_same_output_folder_is_refused_saying_why(tmp_path: Path) -> None:
    from pipeline.outputs.hub import RunOutputsError

    first = _outputs(tmp_path)
    try:
        with pytest.raises(RunOutputsError, match="in use by another process"):
            _outputs(tmp_path)
    finally:
        first.shutdown()
    _outputs(tmp_path).shutdown()  # once the first has stopped, the folder is free again


def test_the_schedulers_drops_and_failures_reach_the_metrics_once_each(tmp_path: Path) -> None:
    from pipeline.cpu.scheduler import CameraQueueStats, SchedulerStats

    outputs = _outputs(tmp_path)
    try:
        for dropped, failed in ((1, 0), (1, 4), (3, 6)):  # cumulative counts, read every second
            queue = CameraQueueStats(depth=2, dropped=dropped, failed=failed)
            outputs.record_queues(SchedulerStats(cameras={CAMERA: queue}), clip_len=4)
        metrics = outputs.metrics
        assert metrics.frames_dropped.value(camera=CAMERA) == 3 * 4
        assert metrics.clips_failed.value(camera=CAMERA) == 6
        assert metrics.queue_depth.value(camera=CAMERA) == 2
        assert 'zsad_clips_failed_total{camera="gate"} 6' in metrics.render()
    finally:
        outputs.shutdown()


def test_a_removed_camera_leaves_no_metrics_behind(tmp_path: Path) -> None:
    """After a reload removed a camera, /metrics still showed it live with its last queue depth."""
    from pipeline.cpu.scheduler import CameraQueueStats, SchedulerStats

    outputs = _outputs(tmp_path)
    try:
        outputs.camera_state(CAMERA, "live", "")
        outputs.record_queues(
            SchedulerStats(cameras={CAMERA: CameraQueueStats(depth=3, dropped=1)}), clip_len=4
        )
        outputs.clip_scored(CAMERA, 1.6, _hot(0), None, frames=4, frame_t=0.8)
        assert f'zsad_camera_state{{camera="{CAMERA}",state="live"}} 1' in outputs.metrics.render()
        outputs.remove_camera(CAMERA)
        assert f'camera="{CAMERA}"' not in outputs.metrics.render()
    finally:
        outputs.shutdown()


def test_dropped_clips_count_their_frames_whichever_way_they_were_dropped(tmp_path: Path) -> None:
    """A clip refused by the stopping scheduler and one dropped from a full queue are both ``clip_len``
    frames of ``zsad_frames_dropped_total`` (the metric counts frames)."""
    from pipeline.cpu.scheduler import CameraQueueStats, SchedulerStats

    outputs = _outputs(tmp_path)
    try:
        outputs.clips_dropped(CAMERA, 1, clip_len=4)  # refused while stopping
        outputs.record_queues(SchedulerStats(cameras={CAMERA: CameraQueueStats(dropped=2)}), clip_len=4)
        outputs.clips_dropped(CAMERA, 0, clip_len=4)
        assert outputs.metrics.frames_dropped.value(camera=CAMERA) == (1 + 2) * 4
    finally:
        outputs.shutdown()
