"""The synthetic scene generator: labels, masks, determinism, anomaly kinds, on-disk layout."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.gst import ElementMissingError
from pipeline.cli.main import build_parser
from pipeline.cli.synth import run_synth
from synth import (
    ANOMALY_KINDS,
    CONTEXTS,
    DEFAULT_CONTEXTS,
    PassingTraffic,
    PlannedEvent,
    SynthError,
    SynthInputError,
    WavingFlag,
    clip_seed,
    generate_dataset,
    plan_dataset_events,
    render_clip,
    render_scene,
)
from synth.actors import simulate_pedestrians
from synth.background import build_stage
from synth.dataset import event_window
from synth.scene import build_layout, perspective
from synth.writer import VideoEncodeError, frame_name, video_errors

W, H, N = 160, 120, 70


def mask_centroids(masks: np.ndarray) -> dict[int, tuple[float, float]]:
    out = {}
    for t in np.flatnonzero(masks.any(axis=(1, 2))):
        ys, xs = np.nonzero(masks[t])
        out[int(t)] = (float(xs.mean()), float(ys.mean()))
    return out


def test_normal_clip_shapes_and_no_labels() -> None:
    frames, masks = render_clip("campus", 30, W, H, seed=1)
    assert frames.shape == (30, H, W, 3)
    assert frames.dtype == np.uint8
    assert masks.shape == (30, H, W)
    assert masks.dtype == bool
    assert not masks.any()
    # Sensor noise: consecutive frames are never identical, even on the static background.
    assert np.abs(frames[1].astype(int) - frames[0].astype(int)).mean() > 0.5


@pytest.mark.parametrize("context", DEFAULT_CONTEXTS)
def test_labels_masks_and_events_agree(context: str) -> None:
    scene = render_scene(context, N, W, H, 5, [PlannedEvent("cyclist", 35), PlannedEvent("falling", 40)])
    assert scene.frames.shape[0] == scene.masks.shape[0] == scene.labels.shape[0] == N
    # A frame is abnormal exactly when its mask has pixels.
    assert np.array_equal(scene.labels.astype(bool), scene.masks.any(axis=(1, 2)))
    assert [e.kind for e in scene.events] == ["cyclist", "falling"]
    union = np.zeros(N, dtype=bool)
    for event in scene.events:
        assert 35 <= event.start <= event.end < N
        assert scene.labels[event.start : event.end + 1].all()
        union[event.start : event.end + 1] = True
    assert np.array_equal(union, scene.labels.astype(bool))
    assert not scene.labels[:35].any()


def test_each_event_records_its_own_abnormal_frames_as_runs() -> None:
    # Two events whose spans overlap: each records its own runs, and together they are the labels.
    scene = render_scene("campus", 160, W, H, 5, [PlannedEvent("off_path", 20), PlannedEvent("cyclist", 60)])
    union = np.zeros(160, dtype=bool)
    for event in scene.events:
        assert event.runs, event
        assert (event.runs[0][0], event.runs[-1][1]) == (event.start, event.end)
        for (a, b), (c, _) in itertools.pairwise(event.runs):
            assert a <= b < c - 1  # separate runs, in order, with a normal gap between
        for a, b in event.runs:
            union[a : b + 1] = True
    assert np.array_equal(union, scene.labels.astype(bool))


def test_an_off_path_walker_is_abnormal_only_while_its_feet_are_off_the_path_in_view() -> None:
    """People leave the view across the image border on the walkway's continuation: a walker back on the
    path who walks out of the frame is normal there, not off the path (the generator once counted feet
    outside the image as off the walkable area, a one-frame abnormal blip as each such walker left)."""
    from synth.actors import simulate_events
    from synth.geometry import sample_mask

    stage = build_stage("station", 320, 240)
    walkable = stage.layout.walkable
    rows, cols = walkable.shape
    left_the_view = 0
    for seed in range(6):
        (actor,) = simulate_events(stage, np.random.default_rng(seed), 400, [PlannedEvent("off_path", 20)])
        assert actor.abnormal.any()
        first = int(np.flatnonzero(actor.abnormal)[0])
        for t, pose in enumerate(actor.poses):
            if pose is None:
                continue
            inside = 0 <= round(pose.x) < cols and 0 <= round(pose.y) < rows
            left_the_view += not inside and t > first
            if actor.abnormal[t]:
                assert inside, (seed, t)
                assert not sample_mask(walkable, pose.x, pose.y), (seed, t)
            elif t >= first and inside:
                assert sample_mask(walkable, pose.x, pose.y), (seed, t)  # normal only on the path
    assert left_the_view > 0  # some walker did walk out of the view: the rule above was exercised


def test_same_seed_identical_different_seed_differs() -> None:
    events = [PlannedEvent("vehicle", 30)]
    a = render_scene("parking", 50, W, H, 11, events)
    b = render_scene("parking", 50, W, H, 11, events)
    c = render_scene("parking", 50, W, H, 12, events)
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.masks, b.masks)
    assert a.events == b.events
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.masks, c.masks)


def test_clip_seeds_depend_on_every_part_of_the_clip_identity() -> None:
    base = clip_seed(0, "testing", "campus", 0)
    others = {
        clip_seed(1, "testing", "campus", 0),
        clip_seed(0, "training", "campus", 0),
        clip_seed(0, "testing", "station", 0),
        clip_seed(0, "testing", "campus", 1),
    }
    assert base not in others
    assert len(others) == 4
    assert clip_seed(0, "testing", "campus", 0) == base


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
@pytest.mark.parametrize("context", ["campus", "station"])
def test_each_kind_is_drawn_where_its_mask_is(kind: str, context: str) -> None:
    start = 30
    plain = render_scene(context, N, W, H, 21, [])
    scene = render_scene(context, N, W, H, 21, [PlannedEvent(kind, start)])
    (event,) = scene.events
    assert event.kind == kind
    assert event.start >= start
    # Normal traffic and lighting do not depend on the injected event, so the pixels that change
    # are the anomalous actor's (plus its shadow, or the walker it was before the event).
    diff = np.abs(scene.frames.astype(np.int16) - plain.frames.astype(np.int16)).max(axis=3) > 12
    covered = []
    for t in range(event.start, event.end + 1):
        m = scene.masks[t]
        assert m.any()
        covered.append(diff[t][m].mean())
    assert np.mean(covered) > 0.6
    assert not scene.masks[: event.start].any()


def test_kinds_differ_in_speed_shape_and_place() -> None:
    def event_scene(kind: str, seed: int = 3) -> tuple[np.ndarray, int, int]:
        scene = render_scene("campus", 120, 320, 240, seed, [PlannedEvent(kind, 40)])
        (event,) = scene.events
        return scene.masks, event.start, event.end

    stage = build_stage("campus", 320, 240)

    def median_speed(masks: np.ndarray) -> float:
        """Median step of the mask centroid, in reference px/frame (perspective undone)."""
        steps = []
        cent = mask_centroids(masks)
        for t, (x, y) in cent.items():
            m = masks[t]
            # Skip frames where the actor crosses the border: its centroid jumps there.
            if t + 1 not in cent or m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
                continue
            foot_y = np.nonzero(m)[0].max()
            steps.append(math.dist((x, y), cent[t + 1]) / (stage.layout.unit * perspective(foot_y, 240)))
        return float(np.median(steps))

    assert median_speed(event_scene("cyclist")[0]) > 4.0  # walkers: 1-1.8 reference px/frame
    assert median_speed(event_scene("running")[0]) > 2.8

    vehicle, s, e = event_scene("vehicle")
    runner, s2, e2 = event_scene("running")
    assert np.median(vehicle[s : e + 1].sum(axis=(1, 2))) > 3 * np.median(
        runner[s2 : e2 + 1].sum(axis=(1, 2))
    )

    fallen, s, e = event_scene("falling")
    ys, xs = np.nonzero(fallen[e])
    assert np.ptp(xs) > 1.5 * np.ptp(ys)  # lying down: wider than tall

    bag, s, e = event_scene("abandoned_object")
    assert np.array_equal(bag[s], bag[e])  # left behind: does not move
    assert 0 < bag[e].sum() < 120

    off, s, e = event_scene("off_path")
    walkable = build_layout("campus", 320, 240).walkable
    off_frames = []
    for t in range(s, e + 1):
        ys, xs = np.nonzero(off[t])
        off_frames.append(not walkable[int(ys.max()), int(np.median(xs[ys >= ys.max() - 1]))])
    assert np.mean(off_frames) > 0.8  # the feet (bottom of the mask) are off the paving


def test_normal_people_walk_one_to_two_reference_px_per_frame() -> None:
    for context in DEFAULT_CONTEXTS:
        stage = build_stage(context, 320, 240)
        actors = simulate_pedestrians(stage, np.random.default_rng(4), 200)
        assert len(actors) >= 3
        assert max(sum(a.poses[t] is not None for a in actors) for t in range(200)) >= 2
        for actor in actors:
            assert actor.kind == "person"
            assert actor.event is None
            assert not actor.abnormal.any()
            poses = [p for p in actor.poses if p is not None]
            # Speed in reference px/frame (perspective undone); corners and the last step are shorter.
            speeds = [
                math.dist((p.x, p.y), (q.x, q.y)) / (stage.layout.unit * perspective(p.y, 240))
                for p, q in itertools.pairwise(poses)
            ]
            assert 1.0 <= np.median(speeds) <= 1.8
            assert max(speeds) <= 1.81


def test_event_windows_leave_normal_context_first() -> None:
    for kind in ANOMALY_KINDS:
        first, last = event_window(kind, 200)
        assert first == 40
        assert first <= last <= 180
    plans = plan_dataset_events(list(DEFAULT_CONTEXTS), 2, 200, seed=0)
    assert list(plans) == [f"{c}_{i:03d}" for c in DEFAULT_CONTEXTS for i in range(2)]
    for events in plans.values():
        assert 1 <= len(events) <= 2
        assert len({e.kind for e in events}) == len(events)
        assert all(e.start >= 40 for e in events)


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_default_run_covers_every_kind(seed: int) -> None:
    plans = plan_dataset_events(list(DEFAULT_CONTEXTS), 2, 200, seed)
    assert {e.kind for events in plans.values() for e in events} == set(ANOMALY_KINDS)
    assert plans == plan_dataset_events(list(DEFAULT_CONTEXTS), 2, 200, seed)


def test_bad_inputs_raise_named_errors() -> None:
    with pytest.raises(SynthInputError, match="unknown context 'mall'"):
        render_clip("mall", 10, W, H, 0)
    with pytest.raises(SynthInputError, match="unknown anomaly kind"):
        render_clip("campus", 10, W, H, 0, [PlannedEvent("explosion", 2)])
    with pytest.raises(SynthInputError, match="outside"):
        render_clip("campus", 10, W, H, 0, [PlannedEvent("cyclist", 10)])
    with pytest.raises(SynthInputError, match="never became visible"):
        render_clip("campus", 10, W, H, 0, [PlannedEvent("off_path", 9)])
    with pytest.raises(SynthInputError, match="frame size"):
        render_clip("campus", 10, 20, 10, 0)
    assert issubclass(SynthInputError, SynthError)
    # A GStreamer failure while writing a video reaches the CLI as a SynthError naming what to install.
    missing = pytest.raises(VideoEncodeError, match=r"'x264enc'.*gstreamer1\.0-plugins-ugly")
    with missing as info, video_errors(Path("clip.mp4")):
        raise ElementMissingError("x264enc")
    assert isinstance(info.value.__cause__, ElementMissingError)
    assert issubclass(VideoEncodeError, SynthError)


def test_frame_names_follow_ped2() -> None:
    assert frame_name(0, 200, ".jpg") == "001.jpg"
    assert frame_name(199, 200, ".png") == "200.png"
    assert frame_name(0, 1000, ".jpg") == "0001.jpg"
    assert frame_name(999, 1000, ".jpg") == "1000.jpg"


def test_registry_is_complete() -> None:
    assert set(DEFAULT_CONTEXTS) <= set(CONTEXTS)
    assert len(ANOMALY_KINDS) == 6
    for name, spec in CONTEXTS.items():
        assert spec.name == name
        layout = build_layout(name, W, H)
        assert layout.walkable.shape == (H, W)
        assert 0.05 < layout.walkable.mean() < 0.9


def small_dataset(out: Path, seed: int = 0) -> dict:
    return generate_dataset(
        out,
        train_per_context=1,
        test_per_context=2,
        frames=48,
        width=96,
        height=72,
        seed=seed,
        write_video=False,
    )


def test_dataset_layout_mirrors_ped2(tmp_path: Path) -> None:
    out = tmp_path / "scenes"
    manifest = small_dataset(out)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["frame_size_hw"] == [72, 96]
    assert manifest["fps"] == 25
    assert manifest["seed"] == 0
    assert set(manifest["counts"]["training"]) == {f"{c}_000" for c in DEFAULT_CONTEXTS}
    assert set(manifest["counts"]["testing"]) == {f"{c}_{i:03d}" for c in DEFAULT_CONTEXTS for i in range(2)}
    labels = json.loads((out / "testing" / "labels" / "frame_labels.json").read_text())
    assert set(labels) == set(manifest["counts"]["testing"])
    assert {e["kind"] for evs in manifest["events"].values() for e in evs} == set(ANOMALY_KINDS)
    for split, clips in manifest["counts"].items():
        for clip, n in clips.items():
            assert n == 48
            jpgs = sorted((out / split / "frames" / clip).iterdir())
            assert [p.name for p in jpgs] == [f"{i:03d}.jpg" for i in range(1, 49)]
            assert manifest["contexts"][clip] == clip.rsplit("_", 1)[0]
            with Image.open(jpgs[0]) as im:
                assert im.mode == "RGB"
                assert im.size == (96, 72)
    assert not (out / "training" / "masks").exists()
    assert not (out / "training" / "videos").exists()
    assert manifest["abnormal_test_frames"] == sum(sum(v) for v in labels.values())
    for clip, lab in labels.items():
        assert len(lab) == 48
        assert set(lab) <= {0, 1}
        assert sum(lab) > 0
        pngs = sorted((out / "testing" / "masks" / clip).iterdir())
        assert [p.name for p in pngs] == [f"{i:03d}.png" for i in range(1, 49)]
        for value, png in zip(lab, pngs, strict=True):
            with Image.open(png) as im:
                assert im.mode == "1"
                assert bool(np.asarray(im).any()) == bool(value)
        spans = np.zeros(48, dtype=int)
        for event in manifest["events"][clip]:
            assert event["context"] == manifest["contexts"][clip]
            assert event["start"] >= 48 // 4
            spans[event["start"] : event["end"] + 1] = 1
        assert spans.tolist() == lab


def test_regenerating_replaces_old_output_and_reuse_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "scenes"
    generate_dataset(out, ["campus"], 2, 1, frames=44, width=64, height=48, write_video=False)
    assert (out / "training" / "frames" / "campus_001").is_dir()
    first = (out / "testing" / "frames" / "campus_000" / "010.jpg").read_bytes()
    generate_dataset(out, ["campus"], 1, 1, frames=44, width=64, height=48, write_video=False)
    assert not (out / "training" / "frames" / "campus_001").exists()  # stale clip removed
    assert (out / "testing" / "frames" / "campus_000" / "010.jpg").read_bytes() == first
    marker = out / "testing" / "frames" / "campus_000" / "marker"
    marker.write_text("kept")
    generate_dataset(out, ["campus"], 1, 1, frames=44, width=64, height=48, write_video=False, reuse=True)
    assert marker.exists()
    generate_dataset(
        out, ["campus"], 1, 1, frames=44, width=64, height=48, seed=1, write_video=False, reuse=True
    )
    assert not marker.exists()
    # Arguments it cannot render are refused before the old output is touched.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(SynthInputError, match="frame size 32x24 outside"):
        generate_dataset(out, ["campus"], 1, 1, frames=44, width=32, height=24, write_video=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SynthInputError, match="not empty"):
        generate_dataset(tmp_path, ["campus"], 1, 0, frames=10, width=64, height=48, write_video=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def synth_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["synth", *argv])


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_synth(synth_args("--out", str(tmp_path / "a"), "--contexts", "campus,mall", "--no-video")) == 2
    assert "unknown context 'mall'" in capsys.readouterr().err
    assert run_synth(synth_args("--out", str(tmp_path / "b"), "--frames", "20", "--no-video")) == 2
    assert run_synth(synth_args("--out", str(tmp_path / "c"), "--width", "161", "--height", "120")) == 2
    argv = ["--out", str(tmp_path / "d"), "--contexts", "station", "--train-per-context", "0"]
    argv += ["--test-per-context", "1", "--frames", "44", "--width", "64", "--height", "48", "--no-video"]
    assert run_synth(synth_args(*argv)) == 0
    assert "1 test clips (44 frames" in capsys.readouterr().out
    assert (tmp_path / "d" / "testing" / "labels" / "frame_labels.json").is_file()


def test_props_recur_in_place_and_change_nothing_else() -> None:
    flag = WavingFlag(box=(0.06, 0.62, 0.22, 0.80), period=20, duration=6, first=4, count=2)
    road = PassingTraffic(lane=(0.02, 0.22), period=25, crossing=10, first=2, count=2)
    assert flag.spells(N) == [(4, 9), (24, 29)]
    assert [flag.waving(t) for t in (3, 4, 9, 10, 24, 44)] == [False, True, True, False, True, False]
    assert road.passes(N) == [(2, 11), (27, 36)]
    plain = render_scene("campus", N, W, H, seed=4, events=[PlannedEvent("cyclist", 40)])
    both = render_scene("campus", N, W, H, seed=4, events=[PlannedEvent("cyclist", 40)], props=[flag, road])
    # Props are normal: the labels and masks are those of the clip without them.
    assert np.array_equal(plain.masks, both.masks)
    assert plain.events == both.events
    changed = np.any(plain.frames != both.frames, axis=(0, 3))  # pixels any prop ever touched
    rows, cols = np.nonzero(changed)
    in_flag = (cols < 0.25 * W) & (rows >= 0.62 * H - 1)
    in_road = rows <= 0.22 * H + 1
    assert np.all(in_flag | in_road)
    # Every spell of the flag looks the same (counted from its own start); still, it never moves.
    y0, y1, x0, x1 = int(0.62 * H), int(0.80 * H), int(0.06 * W) + 1, int(0.22 * W)
    cloth = both.frames[:, y0:y1, x0:x1].astype(np.int16)
    assert np.abs(cloth[5] - cloth[25]).mean() < 6  # the same phase of each spell (sensor noise only)
    assert np.abs(cloth[5] - cloth[6]).mean() > 20  # flapping
    assert np.abs(cloth[15] - cloth[16]).mean() < 6  # hanging still between spells
    # Deterministic.
    again = render_scene("campus", N, W, H, seed=4, events=[PlannedEvent("cyclist", 40)], props=[flag, road])
    assert np.array_equal(again.frames, both.frames)
    with pytest.raises(SynthInputError, match="flag box"):
        WavingFlag(box=(0.5, 0.5, 0.4, 0.6), period=10, duration=5)
    with pytest.raises(SynthInputError, match="duration <= period"):
        WavingFlag(box=(0.1, 0.1, 0.2, 0.2), period=5, duration=6)
    with pytest.raises(SynthInputError, match="lane"):
        PassingTraffic(lane=(0.5, 0.4), period=10, crossing=5)
