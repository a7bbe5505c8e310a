"""The pyds metadata adapter and the DeepStream probes, driven by the pyds TEST DOUBLE
(tests/fixtures/pyds_test_double.py). The parity test feeds the same backbone outputs and frames through the
CPU graph's ClipInference and through the DeepStream probe and requires identical scores, prompts and
fused scores."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from pipeline.clips import ClipAssembler
from pipeline.deepstream.meta import (
    MetaError,
    add_display_text,
    frame_refs,
    frame_rgb,
    frame_tensors,
    iter_meta_list,
    layer_array,
)
from pipeline.deepstream.probe import ClipScoringProbe, FrameHistory, OsdScoreBoard, format_osd_text
from pipeline.deepstream.render import sequence_params
from pipeline.inference import ClipInference, EngineSet, semantic_scorer
from plugins.fusion import CameraFusion, StreamGate
from plugins.preprocess import Normaliser
from plugins.scorer import DPC_INPUTS, DPC_OUTPUTS, ClipScorer, StreamScores
from plugins.semantic import PromptBank
from tests.fixtures.pyds_test_double import (
    FrameSpec,
    PydsTestDouble,
    attach,
    buffer_array,
    build_batch,
    display_metas,
    glist,
    layer,
    other_user_meta,
    pointee,
    rgba,
    tensor_user_meta,
    unmapped,
)
from tests.fixtures.tiny_models import tiny_model

torch = pytest.importorskip("torch")

OK = "probe-ok"
# pyds 1.2.0 binds no NVDS_PREPROCESS_BATCH_META / GstNvDsPreProcessBatchMeta, so the probe's current
# nvdspreprocess path cannot work (frame_tensors raises MetaError on every batch). The redesign of issue 15
# assembles clips from the mapped frames; until it lands these tests cannot pass with the strict pyds double.
PREPROCESS_META_GONE = pytest.mark.skip(
    reason="needs nvdspreprocess batch meta, which pyds 1.2.0 does not bind: "
    "pending the DeepStream probe redesign (issue 15)"
)
SPEC = tiny_model(preprocess={"frame_stride": 2})
T, D, H, W, P = 2, 32, 32, 48, 8
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def torch_runner(module: Any, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Any:
    """The PyTorch module of an engine as a runner (named numpy arrays in and out)."""

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in inputs))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(outputs, out, strict=True)}

    return run


@pytest.fixture(scope="module")
def runners() -> tuple[Any, Any]:
    from engines.model import ZsadModel

    torch.manual_seed(0)
    model = ZsadModel(SPEC).eval()
    dpc = torch_runner(model.dpc, DPC_INPUTS, DPC_OUTPUTS)
    semantic = torch_runner(model.projection, ("embedding",), ("video",))
    return dpc, semantic


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


def test_iter_meta_list_walks_every_node() -> None:
    assert list(iter_meta_list(glist([1, 2, 3]), pointee)) == [1, 2, 3]
    assert list(iter_meta_list(glist([1, 2]), lambda p: pointee(p) * 10)) == [10, 20]
    assert list(iter_meta_list(None)) == []


def test_layer_array_copies_and_converts() -> None:
    pyds = PydsTestDouble()
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    info = layer("tokens", data.copy())
    out = layer_array(pyds, info)
    np.testing.assert_array_equal(out, data)
    buffer_array(info)[...] = -1  # the pool reuses the buffer: our copy must not change
    np.testing.assert_array_equal(out, data)
    half = layer("h", np.array([0.5, -2.0, 1e-3], np.float16))
    got = layer_array(pyds, half)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([0.5, -2.0, 1e-3], np.float16).astype(np.float32))
    ints = layer("i", np.array([[1, -7]], np.int32))
    np.testing.assert_array_equal(layer_array(pyds, ints), [[1, -7]])
    # A data type the 1.2.0 enum lacks (a newer DeepStream header could hand one over).
    with pytest.raises(MetaError, match="unsupported NvDsInferDataType"):
        layer_array(pyds, layer("tokens", data, data_type=99))


@PREPROCESS_META_GONE
def test_frame_tensors_from_preprocess_rois_and_frames() -> None:
    pyds = PydsTestDouble()
    tok = np.random.default_rng(0).standard_normal((T, D, 4, 6)).astype(np.float32)
    emb = np.ones(D, np.float32)
    frames = [
        FrameSpec(0, 10, 1_000_000_000, rgba(np.zeros((H, W, 3), np.uint8))),
        # A full-frame nvinfer puts the tensors on the frame itself, after some other user meta.
        FrameSpec(
            3,
            11,
            2_500_000_000,
            rgba(np.zeros((H, W, 3), np.uint8)),
            [other_user_meta(), tensor_user_meta({"tokens": tok + 1, "embedding": emb})],
        ),
    ]
    batch = build_batch(frames, [(0, {"tokens": tok, "embedding": emb, "extra": emb})]).meta
    found = frame_tensors(pyds, batch, unique_id=1, names=("tokens", "embedding"))
    assert [(f.source_id, f.frame_num, f.pts_s) for f in found] == [(0, 10, 1.0), (3, 11, 2.5)]
    np.testing.assert_array_equal(found[0].tensors["tokens"], tok)
    np.testing.assert_array_equal(found[1].tensors["tokens"], tok + 1)
    assert set(found[0].tensors) == {"tokens", "embedding"}
    assert frame_tensors(pyds, batch, unique_id=2) == []  # another nvinfer's tensors are ignored
    with pytest.raises(MetaError, match=r"lacks layers \['pixels'\]"):
        frame_tensors(pyds, batch, names=("tokens", "pixels"))


def test_frame_refs_and_rgb_copy() -> None:
    pyds = PydsTestDouble()
    rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    batch = build_batch([FrameSpec(2, 5, (1 << 64) - 1, rgba(rgb))])
    buffer = attach(pyds, object(), batch)
    (ref,) = frame_refs(pyds, batch.meta)
    assert (ref.source_id, ref.batch_id, ref.frame_num) == (2, 0, 5)
    assert np.isnan(ref.pts_s)  # GST_CLOCK_TIME_NONE
    got = frame_rgb(pyds, buffer, 0, unmap=True)
    np.testing.assert_array_equal(got, rgb)
    assert got.flags.c_contiguous
    batch.surfaces[0][...] = 0
    np.testing.assert_array_equal(got, rgb)
    assert unmapped(pyds) == [(hash(buffer), 0)]
    batch.surfaces[0] = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(MetaError, match="RGBA"):
        frame_rgb(pyds, buffer, 0)


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


def test_frame_history_keeps_one_span() -> None:
    history = FrameHistory(3)
    for n in range(5):
        history.push(0, n, np.full((1,), n))
    assert history.get(0, 1) is None
    got = history.get(0, 2)
    assert got is not None
    assert int(got[0]) == 2
    assert history.last_frame_num(0) == 4
    history.reset(0)
    assert history.last_frame_num(0) is None


def test_format_osd_text() -> None:
    assert format_osd_text("cam-1", 2.345) == "cam-1  2.35"
    assert format_osd_text("cam-1", None) == "cam-1  --"
    assert format_osd_text("cam-1", float("nan")) == "cam-1  --"
    assert format_osd_text("cam-1", 1.0, "a fire") == "cam-1  1.00  a fire"


# --------------------------------------------------------------------------------------------------
# Parity with the CPU graph
# --------------------------------------------------------------------------------------------------


class BackboneStandIn:
    """Plays nvinfer's part for ClipInference: returns the tokens/embeddings the test decided for the clips
    of the next call (the DeepStream path reads the very same arrays from the tensor meta)."""

    def __init__(self) -> None:
        self.next: dict[str, np.ndarray] = {}

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert feeds["clip"].shape[0] == self.next["tokens"].shape[0]
        return self.next

    def close(self) -> None:
        pass


class NamedRunner:
    """A runner that, like a backend, says which inputs it takes (ClipInference reads ``input_names``)."""

    def __init__(self, run: Any, input_names: tuple[str, ...]) -> None:
        self.run, self.input_names = run, list(input_names)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert sorted(feeds) == sorted(self.input_names)
        return self.run(feeds)


def extrapolating_dpc() -> NamedRunner:
    from engines.model import ZsadModel

    torch.manual_seed(1)
    model = ZsadModel(tiny_model(preprocess={"frame_stride": 2}, dpc={"decoder": "extrapolate"})).eval()
    torch.nn.init.normal_(model.dpc.decoder[-1].weight, std=0.05)
    inputs = (*DPC_INPUTS, "prev_frame")
    return NamedRunner(torch_runner(model.dpc, inputs, DPC_OUTPUTS), inputs)


@PREPROCESS_META_GONE
@pytest.mark.parametrize("decoder", ["residual", "extrapolate"])
def test_probe_scores_match_the_cpu_path_exactly(runners: tuple[Any, Any], decoder: str) -> None:
    dpc, semantic_runner = runners
    extrapolate = decoder == "extrapolate"
    if extrapolate:
        dpc = extrapolating_dpc()
    rng = np.random.default_rng(7)
    cameras = ["cam-a", "cam-b", "cam-c"]
    start_tick = {"cam-a": 0, "cam-b": 0, "cam-c": 1}  # cam-c starts a frame late: mixed batches
    pre = SPEC.preprocess
    span = (pre.clip_len - 1) * pre.frame_stride
    stride, subsample = sequence_params(pre.frame_stride, pre.clip_hop)
    ticks = 26
    frames = {c: rng.integers(0, 256, (ticks, H, W, 3), dtype=np.uint8) for c in cameras}
    outputs: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    texts = rng.standard_normal((5, 16)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    prompt_names = ["a street", "people walking", "a fight", "a fire", "a crash"]

    def clip_outputs(camera: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        if (camera, index) not in outputs:
            tokens = rng.standard_normal((T, D, H // P, W // P)).astype(np.float32)
            outputs[camera, index] = (tokens, rng.standard_normal(D).astype(np.float32))
        return outputs[camera, index]

    def engines() -> EngineSet:
        return EngineSet(
            backbone=BackboneStandIn(),
            dpc=dpc,
            frame_size=(W, H),
            mean=MEAN,
            std=STD,
            model_id="test",
            semantic=semantic_runner,
            texts={"generic": PromptBank(texts, 2, tuple(prompt_names))},
        )

    contexts = dict.fromkeys(cameras, "generic")
    history_step = pre.clip_len * pre.frame_stride // pre.clip_hop

    # CPU graph: ClipAssembler -> ClipInference (backbone = the stand-in) -> CameraFusion.
    cpu_engines = engines()
    inference = ClipInference(cpu_engines, context_clips=2, history_step=history_step, contexts=contexts)
    assembler = ClipAssembler(pre.clip_len, pre.frame_stride, pre.clip_hop)
    cpu_fusion = {c: CameraFusion(c, gate=StreamGate.uniform(), smoothing=3) for c in cameras}
    cpu: dict[tuple[str, int], tuple[dict[str, float], str | None, float, float]] = {}
    for tick in range(ticks):
        clips = []
        for camera in cameras:
            n = tick - start_tick[camera]
            if n >= 0:
                clip = assembler.push(camera, n * 100_000_000 / 1e9, frames[camera][n])
                if clip is not None:
                    clips.append(clip)
        if not clips:
            continue
        outs = [clip_outputs(c.camera_id, c.index) for c in clips]
        cpu_engines.backbone.next = {
            "tokens": np.stack([o[0] for o in outs]),
            "embedding": np.stack([o[1] for o in outs]),
        }
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

    # DeepStream graph: batches as nvstreammux/nvdspreprocess/nvinfer would attach them -> the probe.
    pyds = PydsTestDouble()
    ds_engines = engines()
    ds_fusion = {c: CameraFusion(c, gate=StreamGate.uniform(), smoothing=3) for c in cameras}
    ds: dict[tuple[str, int], tuple[dict[str, float], str | None, float, float]] = {}
    osd: dict[str, str] = {}

    def on_scores(camera: str, t: float, scores: StreamScores, prompt: str | None) -> float:
        fused = ds_fusion[camera].update(scores.scores, scores.embedding, t)
        ds[camera, scores.index] = (dict(scores.scores), prompt, fused.score, t)
        return fused.score

    probe = ClipScoringProbe(
        pyds,
        ClipScorer(dpc, context_clips=2, history_step=history_step, prev_frame=extrapolate),
        cameras,
        clip_len=pre.clip_len,
        frame_stride=pre.frame_stride,
        normalise=Normaliser(MEAN, STD),
        on_scores=on_scores,
        osd_text=osd.__setitem__,
        semantic=semantic_scorer(ds_engines, contexts),
        ok=OK,
    )
    next_ready = dict.fromkeys(cameras, span)
    index = dict.fromkeys(cameras, 0)
    for tick in range(ticks):
        specs, clips_at = [], []
        for source, camera in enumerate(cameras):
            n = tick - start_tick[camera]
            if n < 0:
                continue
            specs.append(FrameSpec(source, n, n * 100_000_000, rgba(frames[camera][n])))
            if n == next_ready[camera]:  # the sequence library's rule, see test_deepstream_render
                tokens, embedding = clip_outputs(camera, index[camera])
                clips_at.append((len(specs) - 1, {"tokens": tokens, "embedding": embedding}))
                next_ready[camera] = n + stride * (subsample + 1)
                index[camera] += 1
        buffer = attach(pyds, object(), build_batch(specs, clips_at))
        probe.process(buffer)

    assert len(cpu) >= 3 * 6
    assert ds.keys() == cpu.keys()
    for key, (scores, prompt, fused, t) in cpu.items():
        assert ds[key] == (scores, prompt, fused, t), key
        assert set(scores) == {"predictive", "pixel", "motion", "semantic"}
    assert probe.clips == sum(index.values())
    assert probe.missing_frames == 0
    # The OSD shows each camera's latest fused score and prompt.
    for camera in cameras:
        scores, prompt, fused, _t = ds[max(k for k in ds if k[0] == camera)]
        assert osd[camera] == format_osd_text(camera, fused, prompt)


@PREPROCESS_META_GONE
def test_probe_resets_a_camera_whose_frame_numbers_restart(runners: tuple[Any, Any]) -> None:
    dpc, _ = runners
    pyds = PydsTestDouble()
    scorer = ClipScorer(dpc, context_clips=2, history_step=2)
    probe = ClipScoringProbe(
        pyds,
        scorer,
        ["cam-a"],
        clip_len=2,
        frame_stride=2,
        normalise=Normaliser(MEAN, STD),
        on_scores=lambda *_: None,
        ok=OK,
    )
    frame = rgba(np.zeros((H, W, 3), np.uint8))
    tensors = {"tokens": np.zeros((T, D, 4, 6), np.float32), "embedding": np.zeros(D, np.float32)}
    for n in range(4):
        probe.process(
            attach(pyds, object(), build_batch([FrameSpec(0, n, n, frame)], [(0, tensors)] if n >= 2 else []))
        )
    assert scorer._rings["cam-a"]
    # frame_num restarts at 0 (a looping file, a reconnect): the DPC history must not span the gap...
    probe.process(attach(pyds, object(), build_batch([FrameSpec(0, 0, 0, frame)])))
    assert "cam-a" not in scorer._rings
    # ...and a clip whose first frame predates the restart is skipped, not scored with a wrong frame.
    probe.process(attach(pyds, object(), build_batch([FrameSpec(0, 1, 1, frame)], [(0, tensors)])))
    assert probe.missing_frames == 1


def test_probe_boundary_logs_and_returns_ok(
    runners: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    dpc, _ = runners
    pyds = PydsTestDouble()
    probe = ClipScoringProbe(
        pyds,
        ClipScorer(dpc, context_clips=2),
        ["cam-a"],
        clip_len=2,
        frame_stride=2,
        normalise=Normaliser(MEAN, STD),
        on_scores=lambda *a: None,
        ok=OK,
    )
    frame = rgba(np.zeros((H, W, 3), np.uint8))
    bad = attach(pyds, object(), build_batch([FrameSpec(5, 0, 0, frame)]))  # no camera has source id 5

    class Info:
        def get_buffer(self) -> Any:
            return bad

    with caplog.at_level(logging.ERROR):
        assert probe(None, Info()) == OK
    assert probe.dropped_batches == 1
    assert "source id 5 has no camera" in caplog.text


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
