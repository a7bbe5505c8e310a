"""The pyds adapter, the DeepStream probes and the clip path, driven by the pyds TEST DOUBLE
(tests/fixtures/pyds_test_double.py) and real torch models.

The parity test feeds the same frames to the CPU graph's clip path (ClipAssembler -> ClipInference ->
CameraFusion, one batch per tick) and to the DeepStream one (RGBA surfaces with a row pitch in the batch meta
-> the score probe -> ClipPath: the same ClipAssembler, the BatchScheduler on its own thread, the same
ClipInference -> CameraFusion), and requires the same clips, times, prompts and scores."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from core.config import SchedulerConfig
from pipeline.clip_path import ClipPath
from pipeline.clips import Clip, ClipAssembler
from pipeline.deepstream.meta import MetaError, add_display_text, frame_refs, frame_rgb, iter_meta_list
from pipeline.deepstream.probe import (
    ClipScoringProbe,
    FrameSampler,
    OsdScoreBoard,
    StreamClock,
    format_osd_text,
    jump_limit,
)
from pipeline.inference import ClipInference, ClipResult, EngineSet
from plugins.fusion import CameraFusion, StreamGate
from plugins.scorer import BACKBONE_INPUTS, BACKBONE_OUTPUTS, DPC_INPUTS, DPC_OUTPUTS, PROJECTION_OUTPUT
from plugins.semantic import PromptBank
from tests.fixtures.pyds_test_double import (
    PITCH_PADDING_BYTE,
    FrameSpec,
    PydsTestDouble,
    attach,
    build_batch,
    display_metas,
    glist,
    pitched,
    pointee,
    rgba,
    unmapped,
)
from tests.fixtures.tiny_models import tiny_model

torch = pytest.importorskip("torch")

OK = "probe-ok"
SPEC = tiny_model(preprocess={"frame_stride": 2})  # T = 2 frames 2 apart, a clip every 2 frames
H, W = SPEC.backbone.image_height, SPEC.backbone.image_width
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
PROMPTS = ("a street", "people walking", "a fight", "a fire", "a crash")
CONTEXT_CLIPS = 2
HISTORY_STEP = SPEC.preprocess.clip_len * SPEC.preprocess.frame_stride // SPEC.preprocess.clip_hop
RING = CONTEXT_CLIPS * HISTORY_STEP  # clips a camera needs before its first score


class TorchRunner:
    """An engine's PyTorch module as a backend-like runner: named numpy arrays in and out, ``input_names``."""

    def __init__(self, module: Any, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        self.module, self.input_names, self.outputs = module, list(inputs), tuple(outputs)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert sorted(feeds) == sorted(self.input_names)
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(self.outputs, out, strict=True)}

    def close(self) -> None:
        pass


def engines_for(decoder: str = "residual") -> EngineSet:
    """The tiny model's backbone, DPC head and semantic head as an :class:`EngineSet` (seeded weights)."""
    from engines.model import ZsadModel

    torch.manual_seed(0)
    model = ZsadModel(tiny_model(preprocess={"frame_stride": 2}, dpc={"decoder": decoder})).eval()
    dpc_inputs = (*DPC_INPUTS, "prev_frame") if decoder == "extrapolate" else DPC_INPUTS
    if decoder == "extrapolate":  # an untrained extrapolating decoder outputs zeros: give it weights
        torch.nn.init.normal_(model.dpc.decoder[-1].weight, std=0.05)
    texts = (
        np.random.default_rng(3).standard_normal((len(PROMPTS), SPEC.semantic.embed_dim)).astype(np.float32)
    )
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    dpc = TorchRunner(model.dpc, dpc_inputs, (*DPC_OUTPUTS, PROJECTION_OUTPUT))
    dpc.projection_channels = model.dpc.gru.projection_channels  # type: ignore[attr-defined]
    return EngineSet(
        backbone=TorchRunner(model.backbone, BACKBONE_INPUTS, BACKBONE_OUTPUTS),  # type: ignore[arg-type]
        dpc=dpc,  # type: ignore[arg-type]
        frame_size=(W, H),
        mean=MEAN,
        std=STD,
        model_id="test",
        semantic=TorchRunner(model.projection, ("embedding",), ("video",)),  # type: ignore[arg-type]
        texts={"generic": PromptBank(texts, 2, PROMPTS)},
    )


def clip_inference(engines: EngineSet, cameras: Sequence[str]) -> ClipInference:
    return ClipInference(
        engines,
        context_clips=CONTEXT_CLIPS,
        history_step=HISTORY_STEP,
        contexts=dict.fromkeys(cameras, "generic"),
    )


def assembler() -> ClipAssembler:
    return ClipAssembler.from_config(SPEC.preprocess)


def batch_of(pyds: PydsTestDouble, frames: Sequence[FrameSpec]) -> Any:
    """A stand-in buffer carrying a batch of ``frames``, their surfaces with a row pitch as pyds maps them."""
    specs = [FrameSpec(f.source_id, f.frame_num, f.pts_ns, pitched(f.rgba)) for f in frames]
    return attach(pyds, object(), build_batch(specs))


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


def test_iter_meta_list_walks_every_node() -> None:
    assert list(iter_meta_list(glist([1, 2, 3]), pointee)) == [1, 2, 3]
    assert list(iter_meta_list(glist([1, 2]), lambda p: pointee(p) * 10)) == [10, 20]
    assert list(iter_meta_list(None)) == []


def test_the_pitched_surface_is_laid_out_as_pyds_maps_one() -> None:
    """Harness check: rows really are ``pitch`` bytes apart in one buffer (strides ``(pitch, 4, 1)``, as
    bindfunctions.cpp builds the array), the padding is not zeros, and the view owns nothing."""
    frame = rgba(np.random.default_rng(2).integers(0, 255, (3, 5, 3), dtype=np.uint8))
    surface = pitched(frame, pitch=32)
    assert (surface.shape, surface.strides, surface.dtype) == ((3, 5, 4), (32, 4, 1), np.uint8)
    assert not surface.flags.owndata
    np.testing.assert_array_equal(surface, frame)
    rows = np.lib.stride_tricks.as_strided(surface, shape=(3, 32), strides=(32, 1))
    assert (rows[:, 20:] == PITCH_PADDING_BYTE).all()  # what a reader ignoring the pitch would get
    assert pitched(frame).strides[0] > 5 * 4  # the default always pads
    with pytest.raises(ValueError, match="row size 20"):
        pitched(frame, pitch=16)
    with pytest.raises(ValueError, match=r"\(H, W, 4\)"):
        pitched(frame[:, :, :3].copy())
    with pytest.raises(TypeError, match="uint8"):
        pitched(frame.astype(np.float32))


def test_frame_refs_and_rgb_copy_of_a_pitched_surface() -> None:
    pyds = PydsTestDouble()
    rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    surface = pitched(rgba(rgb))
    assert not surface.flags.c_contiguous  # rows are further apart than W * 4 bytes
    assert surface.strides[0] > W * 4
    batch = build_batch([FrameSpec(2, 5, (1 << 64) - 1, surface)])
    buffer = attach(pyds, object(), batch)
    (ref,) = frame_refs(pyds, batch.meta)
    assert (ref.source_id, ref.batch_id, ref.frame_num) == (2, 0, 5)
    assert np.isnan(ref.pts_s)  # GST_CLOCK_TIME_NONE
    got = frame_rgb(pyds, buffer, 0, unmap=True)
    np.testing.assert_array_equal(got, rgb)
    assert got.flags.c_contiguous
    assert got.flags.owndata
    surface[...] = 0  # the pool reuses the surface once it is unmapped: the copy must not change
    np.testing.assert_array_equal(got, rgb)
    assert unmapped(pyds) == [(hash(buffer), 0)]
    batch.surfaces[0] = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(MetaError, match="RGBA"):
        frame_rgb(pyds, buffer, 0)
    assert unmapped(pyds) == [(hash(buffer), 0)]  # unmap only where asked (Jetson)


def test_add_display_text() -> None:
    pyds = PydsTestDouble()
    batch = build_batch([FrameSpec(0, 0, 0, rgba(np.zeros((4, 4, 3), np.uint8)))]).meta
    (ref,) = frame_refs(pyds, batch)
    add_display_text(pyds, batch, ref.meta, "cam-1  2.50")
    (display,) = display_metas(ref.meta)
    assert display.num_labels == 1
    params = display.text_params[0]
    assert params.display_text == "cam-1  2.50"
    assert params.set_bg_clr == 1
    assert (params.text_bg_clr.red, params.text_bg_clr.alpha) == (0.0, 0.6)
    assert (params.font_params.font_name, params.font_params.font_size) == ("Serif", 14)
    assert batch.display_meta_pool.num_full_elements == 1


def test_format_osd_text() -> None:
    assert format_osd_text("cam-1", 2.345) == "cam-1  2.35"
    assert format_osd_text("cam-1", None) == "cam-1  --"
    assert format_osd_text("cam-1", float("nan")) == "cam-1  --"
    assert format_osd_text("cam-1", 1.0, "a fire") == "cam-1  1.00  a fire"


# --------------------------------------------------------------------------------------------------
# Stream time and restarts
# --------------------------------------------------------------------------------------------------


def test_stream_clock_notices_restarts_and_keeps_time_increasing() -> None:
    clock = StreamClock(clock=lambda: 1000.0)
    assert clock.observe(0, 0, 5.0) == (5.0, False)
    assert clock.observe(0, 1, 5.1) == (5.1, False)
    assert clock.observe(1, 0, 0.0) == (0.0, False)  # another source: its own stream
    # The frame number goes back (a file loop, a reconnect): a restart, one frame interval later.
    t, restarted = clock.observe(0, 0, 0.0)
    assert restarted
    assert t == pytest.approx(5.2)
    t, restarted = clock.observe(0, 1, 0.1)
    assert not restarted
    assert t == pytest.approx(5.3)
    # The PTS goes back while the frame number goes on.
    t, restarted = clock.observe(0, 2, 0.05)
    assert restarted
    assert t == pytest.approx(5.4)
    # The bus reported the source's end of stream: its next frame starts a new stream whatever its numbers.
    clock.restart(0)
    t, restarted = clock.observe(0, 3, 0.15)
    assert restarted
    assert t == pytest.approx(5.5)
    # A frame without a PTS takes the clock, still after the last time handed out.
    t, restarted = clock.observe(1, 1, float("nan"))
    assert (t, restarted) == (1000.0, False)


def test_stream_clock_takes_a_long_forward_jump_for_a_restart_and_keeps_the_gap() -> None:
    """nvurisrcbin keeps the PTS increasing across its reconnects and file loops: a gap shows as a jump."""
    assert jump_limit(0.0) == math.inf  # the interval is not known yet
    assert jump_limit(0.04) == 1.0
    assert jump_limit(2.0) == 10.0
    clock = StreamClock()
    for n in range(5):  # 25 fps
        assert clock.observe(0, n, n * 0.04) == (pytest.approx(n * 0.04), False)
    # Half a second without frames: a hiccup within the stream, not a restart.
    assert clock.observe(0, 5, 0.66) == (pytest.approx(0.66), False)
    # Three seconds without frames (an outage; the counters went on): a restart, and the time keeps the gap.
    assert clock.observe(0, 6, 3.7) == (pytest.approx(3.7), True)
    assert clock.observe(0, 7, 3.74) == (pytest.approx(3.74), False)
    # A slow camera (a frame every 2 s): its frames are not restarts, a 12 s gap is.
    for n in range(4):
        assert clock.observe(1, n, n * 2.0)[1] is False
    assert clock.observe(1, 4, 18.0) == (pytest.approx(18.0), True)
    # A camera that slows down (a dynamic frame rate on a still scene: 25 fps, then a frame every 2 s)
    # restarts once, at the first long interval, and its new interval is then learnt: not one a frame.
    for n in range(5):
        clock.observe(2, n, n * 0.04)
    assert [clock.observe(2, 5 + n, 2.16 + 2.0 * n)[1] for n in range(6)] == [True] + [False] * 5


def kept_times(sampler: FrameSampler, pts_ns: Sequence[int]) -> list[float]:
    return [n / 1e9 for n in pts_ns if sampler.keep(n / 1e9)]


def test_frame_sampler_keeps_the_frame_nearest_each_instant() -> None:
    # 25 fps sampled at 10: two frames of every five, 0.1 s apart on average, each the nearest to its instant.
    kept = kept_times(FrameSampler(10), [n * 40_000_000 for n in range(250)])  # 10 s
    assert kept[:7] == pytest.approx([0.0, 0.08, 0.2, 0.28, 0.4, 0.48, 0.6])
    assert len(kept) == 100
    # 30 fps whose PTS are whole nanoseconds (33333333 ns apart): every third frame, none early or late.
    kept = kept_times(FrameSampler(10), [n * 33_333_333 for n in range(300)])
    assert kept == pytest.approx([n * 0.099999999 for n in range(100)])
    # A camera at the sampling rate keeps every frame, PTS jitter or not.
    jitter = [0, 99_000_000, 201_000_000, 298_000_000, 402_000_000, 500_000_000]
    assert len(kept_times(FrameSampler(10), jitter)) == len(jitter)
    # A slower camera keeps every frame (never duplicated).
    assert len(kept_times(FrameSampler(10), [n * 200_000_000 for n in range(10)])) == 10
    # A pause in the stream: the first frame after it is kept, then the frame nearest each instant again.
    sampler = FrameSampler(10)
    assert kept_times(sampler, [0, 40_000_000, 80_000_000]) == pytest.approx([0.0, 0.08])
    assert kept_times(sampler, [730_000_000, 770_000_000, 810_000_000, 850_000_000]) == pytest.approx(
        [0.73, 0.81]
    )
    with pytest.raises(ValueError, match="fps"):
        FrameSampler(0)


def test_frame_sampler_starts_again_after_a_reset_or_time_going_back() -> None:
    sampler = FrameSampler(10)
    assert kept_times(sampler, [0, 40_000_000, 80_000_000]) == pytest.approx([0.0, 0.08])
    sampler.reset()  # a restarted stream: its first frame is kept whatever the old instants
    assert kept_times(sampler, [120_000_000, 160_000_000, 200_000_000, 240_000_000]) == pytest.approx(
        [0.12, 0.2]
    )
    assert sampler.keep(0.01)  # time went back: a new stream too


def test_probe_keeps_each_cameras_frames_at_its_sampling_fps() -> None:
    """25 fps cameras, one sampled at 10 and one at 25: only the kept frames are mapped and handed on."""
    pyds = PydsTestDouble()
    handed: dict[str, list[float]] = {"cam-a": [], "cam-b": []}
    probe = ClipScoringProbe(
        pyds,
        ["cam-a", "cam-b"],
        on_frame=lambda camera, t, rgb: handed[camera].append(t),
        sampling_fps={"cam-a": 10.0, "cam-b": 25.0},
        unmap_surfaces=True,
        ok=OK,
    )
    frame = rgba(np.zeros((H, W, 3), np.uint8))
    for n in range(50):  # 2 s
        probe.process(
            batch_of(pyds, [FrameSpec(0, n, n * 40_000_000, frame), FrameSpec(1, n, n * 40_000_000, frame)])
        )
    assert len(handed["cam-a"]) == 20
    assert handed["cam-a"][:3] == pytest.approx([0.0, 0.08, 0.2])
    assert len(handed["cam-b"]) == 50
    assert (probe.frames, probe.sampled_out) == (70, 30)
    assert len(unmapped(pyds)) == 70  # a frame not kept is never mapped
    # The stream restarts (frame numbers and PTS from 0): its first frame is kept, the instants start again.
    probe.process(batch_of(pyds, [FrameSpec(0, 0, 0, frame)]))
    probe.process(batch_of(pyds, [FrameSpec(0, 1, 40_000_000, frame)]))
    assert probe.restarts == 1
    assert len(handed["cam-a"]) == 21


class RecordingInference:
    """Stands in for ClipInference where the test is about the order of calls, not the scores."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.threads: set[str] = set()  # the threads that called it

    def __call__(self, clips: Sequence[Clip]) -> list[ClipResult]:
        self.threads.add(threading.current_thread().name)
        self.calls.append(("infer", [(c.camera_id, c.index) for c in clips]))
        return [ClipResult(None) for _ in clips]

    def reset(self, camera: str) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append(("reset", camera))


def recording_path(inference: RecordingInference, scheduler: SchedulerConfig) -> ClipPath:
    """An unstarted clip path over ``inference`` that drops what it scores."""
    return ClipPath(
        inference,  # type: ignore[arg-type]
        assembler(),
        lambda clip, result: None,
        scheduler=scheduler,
        block=False,
    )


def started_path(inference: RecordingInference) -> ClipPath:
    """A started clip path with a long wait and a big batch: every clip is still queued when it stops."""
    path = recording_path(inference, SchedulerConfig(max_batch=8, max_wait_ms=10_000, queue_size=8))
    path.start()
    return path


def test_clip_path_resets_the_history_between_the_old_and_the_new_streams_clips() -> None:
    inference = RecordingInference()
    path = started_path(inference)  # one batch holds clips of both streams
    frame = np.zeros((H, W, 3), np.uint8)
    for n in range(5):  # clips 0 and 1 (frames 0..2, 2..4)
        path.push("cam-a", n * 0.1, frame)
    path.push("cam-b", 0.0, frame)
    path.restart("cam-a")
    for n in range(3):  # clip 2: the new stream's first
        path.push("cam-a", 1.0 + n * 0.1, frame)
    path.stop(drain=True)
    assert inference.calls == [
        ("infer", [("cam-a", 0), ("cam-a", 1)]),
        ("reset", "cam-a"),
        ("infer", [("cam-a", 2)]),
    ]
    assert inference.threads == {"zsad-scheduler"}


def test_clip_path_forgets_a_removed_camera_before_the_next_batch_on_the_scheduler_thread() -> None:
    inference = RecordingInference()
    path = started_path(inference)
    frame = np.zeros((H, W, 3), np.uint8)
    for n in range(5):  # cam-a clips 0 and 1, queued
        path.push("cam-a", n * 0.1, frame)
    for n in range(3):  # cam-b clip 0
        path.push("cam-b", n * 0.1, frame)
    path.push("cam-a", 0.5, frame)  # buffered, no clip yet
    path.forget("cam-a")  # removed on the main thread (a config reload)
    # Nothing of it ran on this thread, and its queued clips and buffered frame are gone.
    assert inference.calls == []
    assert path.scheduler.depths() == {"cam-b": 1}
    for n in range(3):  # added again: a new camera, its clips counted from 0
        path.push("cam-a", 10.0 + n * 0.1, frame)
    path.stop(drain=True)
    # The removed camera's history goes before the next batch, and once more before the first clip of the
    # camera added again (the batch is split there).
    assert inference.calls == [
        ("reset", "cam-a"),
        ("infer", [("cam-b", 0)]),
        ("reset", "cam-a"),
        ("infer", [("cam-a", 0)]),
    ]
    assert inference.threads == {"zsad-scheduler"}


def test_a_camera_added_again_starts_anew_though_a_batch_taken_before_removal_held_old_clips() -> None:
    """The scheduler took a batch with the camera's old clips; the removal lands before the batch is scored
    (the old clips then put history back): the first clip of the camera added again still starts anew."""
    inference = RecordingInference()
    path = recording_path(inference, SchedulerConfig(max_batch=1, max_wait_ms=0, queue_size=8))
    taken, go = threading.Event(), threading.Event()
    score = path.scheduler._infer

    def held(batch: Sequence[Clip]) -> list[ClipResult]:
        if not taken.is_set():
            taken.set()
            go.wait(30)  # the scheduler holds the batch it took until the test has removed the camera
        return list(score(batch))

    path.scheduler._infer = held
    path.start()
    try:
        frame = np.zeros((H, W, 3), np.uint8)
        for n in range(3):  # old clip 0 of cam-a: taken by the scheduler, held
            path.push("cam-a", n * 0.1, frame)
        assert taken.wait(30)
        path.forget("cam-a")
        for n in range(3):  # cam-a added again: its clip 0, queued behind the held batch
            path.push("cam-a", 10.0 + n * 0.1, frame)
        go.set()
    finally:
        go.set()
        path.stop(drain=True)
    assert inference.calls == [
        ("reset", "cam-a"),  # the removal, before the held batch
        ("infer", [("cam-a", 0)]),  # the old clip: history back
        ("reset", "cam-a"),  # the camera added again starts anew
        ("infer", [("cam-a", 0)]),
    ]


# --------------------------------------------------------------------------------------------------
# The probe and the clip path against the CPU graph's path
# --------------------------------------------------------------------------------------------------

Row = tuple[dict[str, float], str | None, float, float]


def compare(cpu: dict[tuple[str, int], Row], ds: dict[tuple[str, int], Row]) -> None:
    """Same clips, times and prompts; the same scores up to float32 rounding (the two paths batch the
    clips differently, and a batched matmul may round a row differently at another batch size)."""
    assert ds.keys() == cpu.keys()
    for key, (scores, prompt, fused, t) in cpu.items():
        ds_scores, ds_prompt, ds_fused, ds_t = ds[key]
        assert (ds_prompt, ds_t, set(ds_scores)) == (prompt, t, set(scores)), key
        for stream, value in scores.items():
            assert ds_scores[stream] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, stream)
        assert ds_fused == pytest.approx(fused, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("decoder", ["residual", "extrapolate"])
def test_probe_scores_match_the_cpu_path(decoder: str) -> None:
    rng = np.random.default_rng(7)
    cameras = ["cam-a", "cam-b", "cam-c"]
    start_tick = {"cam-a": 0, "cam-b": 0, "cam-c": 1}  # cam-c starts a frame late: mixed batches
    ticks = 26
    frames = {c: rng.integers(0, 256, (ticks, H, W, 3), dtype=np.uint8) for c in cameras}

    # CPU graph: ClipAssembler -> ClipInference (one batch per tick) -> CameraFusion.
    inference = clip_inference(engines_for(decoder), cameras)
    cpu_clips = assembler()
    cpu_fusion = {c: CameraFusion(c, gate=StreamGate.uniform(), smoothing=3) for c in cameras}
    cpu: dict[tuple[str, int], Row] = {}
    for tick in range(ticks):
        clips = []
        for camera in cameras:
            n = tick - start_tick[camera]
            if n >= 0:
                clip = cpu_clips.push(camera, n * 100_000_000 / 1e9, frames[camera][n])
                if clip is not None:
                    clips.append(clip)
        if not clips:
            continue
        for clip, result in zip(clips, inference(clips), strict=True):
            if result.scores is not None:
                fused = cpu_fusion[clip.camera_id].update(
                    result.scores.scores, result.scores.embedding, clip.end_pts
                )
                cpu[clip.camera_id, clip.index] = (
                    dict(result.scores.scores),
                    result.prompt,
                    fused.score,
                    clip.end_pts,
                )

    # DeepStream graph: mux batches with RGBA surfaces -> the score probe -> ClipPath (scheduler thread).
    pyds = PydsTestDouble()
    ds_fusion = {c: CameraFusion(c, gate=StreamGate.uniform(), smoothing=3) for c in cameras}
    ds: dict[tuple[str, int], Row] = {}
    threads: set[str] = set()

    def on_result(clip: Clip, result: ClipResult) -> None:
        threads.add(threading.current_thread().name)
        if result.scores is not None:
            fused = ds_fusion[clip.camera_id].update(
                result.scores.scores, result.scores.embedding, clip.end_pts
            )
            ds[clip.camera_id, clip.index] = (
                dict(result.scores.scores),
                result.prompt,
                fused.score,
                clip.end_pts,
            )

    path = ClipPath(
        clip_inference(engines_for(decoder), cameras),
        assembler(),
        on_result,
        scheduler=SchedulerConfig(max_batch=4, max_wait_ms=5, queue_size=2),
        block=True,
    )
    probe = ClipScoringProbe(
        pyds, cameras, on_frame=path.push, on_restart=path.restart, frame_size=(W, H), ok=OK
    )
    path.start()
    for tick in range(ticks):
        specs = []
        for source, camera in enumerate(cameras):
            n = tick - start_tick[camera]
            if n >= 0:
                specs.append(FrameSpec(source, n, n * 100_000_000, rgba(frames[camera][n])))
        assert probe.process(batch_of(pyds, specs)) == len(specs)
    path.stop(drain=True)

    assert len(cpu) >= 3 * 5
    compare(cpu, ds)
    assert all(set(row[0]) == {"predictive", "pixel", "motion", "semantic"} for row in ds.values())
    assert threads == {"zsad-scheduler"}  # inference ran off the streaming thread
    stats = path.stats()
    assert stats.batches >= 1
    assert sum(q.dropped + q.failed for q in stats.cameras.values()) == 0
    assert probe.restarts == 0
    assert probe.frames == sum(ticks - s for s in start_tick.values())


def test_a_camera_whose_frame_numbers_restart_keeps_producing_clips() -> None:
    """Unlike nvdspreprocess's sequence library (which skips frames until the count passes the old value), a
    restarted camera gets clips again after one clip span, and its DPC history starts again."""
    pyds = PydsTestDouble()
    results: list[tuple[int, bool, float]] = []

    def on_result(clip: Clip, result: ClipResult) -> None:
        results.append((clip.index, result.scores is not None, clip.end_pts))

    path = ClipPath(
        clip_inference(engines_for(), ["cam-a"]),
        assembler(),
        on_result,
        scheduler=SchedulerConfig(max_batch=8, max_wait_ms=1, queue_size=4),
        block=True,
    )
    probe = ClipScoringProbe(pyds, ["cam-a"], on_frame=path.push, on_restart=path.restart, ok=OK)
    rng = np.random.default_rng(0)
    path.start()
    for _ in range(2):  # the second time the source's frame numbers and PTS start again at 0
        for n in range(16):
            frame = rgba(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
            probe.process(batch_of(pyds, [FrameSpec(0, n, n * 100_000_000, frame)]))
    path.stop(drain=True)

    assert probe.restarts == 1
    per_stream = 7  # clips end at frames 2, 4, ..., 14 of each 16-frame stream
    assert [index for index, _, _ in results] == list(range(2 * per_stream))
    scored = [s for _, s, _ in results]
    # Each stream's first RING clips only fill the DPC history: the old stream's history was not reused.
    assert scored == ([False] * RING + [True] * (per_stream - RING)) * 2
    times = [t for _, _, t in results]
    assert times == sorted(times)
    assert len(set(times)) == len(times)  # stream time keeps increasing across the restart


def test_an_end_of_stream_on_the_bus_restarts_the_camera(caplog: pytest.LogCaptureFixture) -> None:
    pyds = PydsTestDouble()
    restarts: list[str] = []
    frames: list[tuple[str, float]] = []
    probe = ClipScoringProbe(
        pyds,
        ["cam-a", "cam-b"],
        on_frame=lambda camera, t, rgb: frames.append((camera, t)),
        on_restart=restarts.append,
        ok=OK,
    )
    frame = rgba(np.zeros((H, W, 3), np.uint8))
    probe.process(batch_of(pyds, [FrameSpec(0, 0, 0, frame), FrameSpec(1, 0, 0, frame)]))
    probe.restart("cam-b")  # the mux's stream-eos for source 1 (from the bus thread)
    probe.restart("nobody")  # an unknown camera changes nothing
    with caplog.at_level(logging.INFO):
        probe.process(
            batch_of(pyds, [FrameSpec(0, 1, 100_000_000, frame), FrameSpec(1, 1, 100_000_000, frame)])
        )
    assert restarts == ["cam-b"]
    assert "camera cam-b: stream restarted" in caplog.text


def test_probe_reports_a_camera_live_once_per_stream() -> None:
    pyds = PydsTestDouble()
    live: list[str] = []
    probe = ClipScoringProbe(
        pyds, ["cam-a", "cam-b"], on_frame=lambda camera, t, rgb: None, on_live=live.append, ok=OK
    )
    frame = rgba(np.zeros((H, W, 3), np.uint8))
    for n in range(3):
        probe.process(batch_of(pyds, [FrameSpec(0, n, n * 100_000_000, frame)]))
    assert live == ["cam-a"]  # its first frame, not every frame
    probe.process(batch_of(pyds, [FrameSpec(1, 0, 0, frame), FrameSpec(0, 3, 300_000_000, frame)]))
    assert live == ["cam-a", "cam-b"]
    probe.restart("cam-a")  # a source error or end of stream on the bus: the camera is failed or ended
    probe.process(batch_of(pyds, [FrameSpec(0, 4, 400_000_000, frame)]))  # ... and its frames came back
    probe.process(batch_of(pyds, [FrameSpec(0, 5, 500_000_000, frame)]))
    assert live == ["cam-a", "cam-b", "cam-a"]
    probe.process(batch_of(pyds, [FrameSpec(1, 0, 0, frame)]))  # a restart the probe sees itself
    assert live == ["cam-a", "cam-b", "cam-a", "cam-b"]


class Info:
    """The pad probe info a probe gets: ``get_buffer()``."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def get_buffer(self) -> Any:
        return self.buffer


def test_probe_boundary_logs_and_returns_ok(caplog: pytest.LogCaptureFixture) -> None:
    pyds = PydsTestDouble()
    handed: list[str] = []
    probe = ClipScoringProbe(
        pyds, ["cam-a"], on_frame=lambda camera, t, rgb: handed.append(camera), frame_size=(W, H), ok=OK
    )
    frame = rgba(np.zeros((H, W, 3), np.uint8))
    bad = attach(pyds, object(), build_batch([FrameSpec(5, 0, 0, frame)]))  # no camera has source id 5
    small = attach(pyds, object(), build_batch([FrameSpec(0, 0, 0, rgba(np.zeros((8, 8, 3), np.uint8)))]))
    with caplog.at_level(logging.WARNING):
        assert probe(None, Info(bad)) == OK
        assert probe(None, Info(small)) == OK
        assert probe(None, Info(object())) == OK  # a buffer without batch meta: nothing to do
    # Frames that cannot be read are dropped one by one, not their batches.
    assert (probe.failed_frames, probe.dropped_batches) == (2, 0)
    assert "source 5: frame 0 dropped" in caplog.text
    assert "source id 5 has no camera" in caplog.text
    assert f"frame is 8x8, the backbone takes {W}x{H}" in caplog.text
    assert handed == []

    # Anything else is the batch's fault: logged and counted at the boundary, and the probe still says OK.
    def faulty(camera: str, t: float, rgb: np.ndarray) -> None:
        raise LookupError("not a frame's fault")

    broken = ClipScoringProbe(pyds, ["cam-a"], on_frame=faulty, ok=OK)
    with caplog.at_level(logging.ERROR):
        assert broken(None, Info(batch_of(pyds, [FrameSpec(0, 0, 0, frame)]))) == OK
    assert broken.dropped_batches == 1
    assert "score probe: batch dropped (1 so far)" in caplog.text


def test_a_bad_frame_costs_its_camera_that_frame_alone(caplog: pytest.LogCaptureFixture) -> None:
    """A surface pyds cannot map in the middle of a batch: the other cameras' frames of the batch go on,
    and the camera's clip assembly is told of the gap, so none of its clips spans the frame it lost."""
    pyds = PydsTestDouble()
    cameras = ["cam-a", "cam-b", "cam-c"]
    clips = assembler()  # T = 2 frames 2 apart, a clip every 2 frames
    made: list[Clip] = []

    def on_frame(camera: str, t: float, rgb: np.ndarray) -> None:
        clip = clips.push(camera, t, rgb)
        if clip is not None:
            made.append(clip)

    gaps: list[tuple[str, float]] = []

    def on_gap(camera: str, t: float) -> None:
        gaps.append((camera, t))
        clips.push(camera, t, None)

    restarts: list[str] = []
    probe = ClipScoringProbe(
        pyds, cameras, on_frame=on_frame, on_gap=on_gap, on_restart=restarts.append, frame_size=(W, H), ok=OK
    )
    frame = pitched(rgba(np.zeros((H, W, 3), np.uint8)))
    with caplog.at_level(logging.WARNING):
        for n in range(9):
            batch = build_batch([FrameSpec(s, n, n * 100_000_000, frame) for s in range(3)])
            if n in (2, 3, 4):
                del batch.surfaces[1]  # cam-b's surface cannot be mapped (pyds raises RuntimeError)
            assert probe(None, Info(attach(pyds, object(), batch))) == OK
    assert probe.dropped_batches == 0
    assert probe.failed_frames == 3
    assert probe.frames == 3 * 9 - 3  # cam-c, after cam-b in each batch, lost nothing
    assert gaps == [
        ("cam-b", pytest.approx(0.2)),
        ("cam-b", pytest.approx(0.3)),
        ("cam-b", pytest.approx(0.4)),
    ]
    assert restarts == []  # a gap, not a new stream: the DPC history goes on
    assert caplog.text.count("camera cam-b: frame") == 1  # one line for the first, not one a frame
    assert "RuntimeError" in caplog.text
    spans = {c: [tuple(np.round(clip.pts, 3)) for clip in made if clip.camera_id == c] for c in cameras}
    assert spans["cam-a"] == spans["cam-c"] == [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8)]
    assert spans["cam-b"] == [(0.5, 0.7)]  # none spans 0.2 to 0.4; its clips start again after the gap


def test_without_on_gap_a_bad_frame_restarts_its_cameras_stream() -> None:
    pyds = PydsTestDouble()
    restarts: list[str] = []
    handed: list[str] = []
    probe = ClipScoringProbe(
        pyds,
        ["cam-a", "cam-b"],
        on_frame=lambda camera, t, rgb: handed.append(camera),
        on_restart=restarts.append,
        ok=OK,
    )
    frame = pitched(rgba(np.zeros((H, W, 3), np.uint8)))
    for n in range(3):
        batch = build_batch([FrameSpec(s, n, n * 100_000_000, frame) for s in (0, 1)])
        if n == 1:
            del batch.surfaces[0]
        probe.process(attach(pyds, object(), batch))
    assert restarts == ["cam-a"]  # at its next frame, before that frame is handed on
    assert handed == ["cam-a", "cam-b", "cam-b", "cam-a", "cam-b"]


def test_osd_scoreboard_draws_each_cameras_text() -> None:
    pyds = PydsTestDouble()
    board = OsdScoreBoard(pyds, ["cam-a", "cam-b"], ok=OK)
    board.set_text("cam-b", "cam-b  3.10")
    frame = rgba(np.zeros((4, 4, 3), np.uint8))
    batch = build_batch([FrameSpec(0, 0, 0, frame), FrameSpec(1, 0, 0, frame)])
    buffer = attach(pyds, object(), batch)
    assert board.process(buffer) == 2
    a, b = frame_refs(pyds, batch.meta)
    assert display_metas(a.meta)[0].text_params[0].display_text == "cam-a  --"
    assert display_metas(b.meta)[0].text_params[0].display_text == "cam-b  3.10"
    unknown = object()
    assert board.process(unknown) == 0  # a buffer without batch meta
