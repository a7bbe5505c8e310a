"""Tiny-config model tests: shapes, non-square inputs, pretrained loading, gradients, learning,
checkpoints, the streaming scorer, and the semantic stream with a tiny local CLIP."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import ModelConfig
from engines.backbone import BackboneLoadError, TimeSformerEncoder
from engines.dpc import DPCHead
from engines.model import CheckpointError, ZsadModel, load_checkpoint, parse_spec, save_checkpoint
from engines.semantic import StreamGateHead
from plugins.scorer import ClipScorer, ClipTokens
from plugins.streams import STREAMS
from tests.conftest import REPO
from tests.fixtures.tiny_data import moving_square_video
from tests.fixtures.tiny_models import tiny_model
from training.trainer import TrainStep, WindowSampler

# The shared tiny model with a DPC state as wide as its tokens, and the semantic width (512) of the tiny
# CLIP that test_semantic_stream_with_tiny_local_clip makes.
SECTIONS: dict[str, dict[str, object]] = {"dpc": {"hidden_size": 32}, "semantic": {"embed_dim": 512}}


def tiny_spec(**decoder: str) -> ModelConfig:
    return tiny_model(dpc={**SECTIONS["dpc"], **decoder}, semantic=SECTIONS["semantic"])


@pytest.fixture
def model() -> ZsadModel:
    torch.manual_seed(0)
    return ZsadModel(tiny_spec())


def test_backbone_shapes_non_square(model: ZsadModel) -> None:
    clip = torch.randn(3, 2, 3, 32, 48)
    tokens, emb = model.backbone(clip)
    assert tokens.shape == (3, 2, 32, 4, 6)  # (N, T, D, h, w)
    assert emb.shape == (3, 32)
    # Tokens are per position: changing one corner patch of one frame changes mostly that position.
    clip2 = clip.clone()
    clip2[0, 1, :, :8, :8] += 5.0
    t2, _ = model.backbone(clip2)
    delta = (t2 - tokens)[0, 1].abs().mean(dim=0)  # (h, w)
    assert delta[0, 0] == delta.max()


def test_stream_gate_head_rows_follow_the_shared_stream_names(model: ZsadModel) -> None:
    assert isinstance(model.stream_gate, StreamGateHead)
    assert model.stream_gate.streams == list(STREAMS)
    context = torch.zeros(2, model.spec.gate.context_dim)
    weights = model.stream_gate(context, torch.tensor([True, True, True, False]))
    assert weights.shape == (2, len(STREAMS))
    torch.testing.assert_close(weights[:, 3], torch.zeros(2))  # an absent stream gets no weight


def test_dpc_head_outputs_are_spatial_maps(model: ZsadModel) -> None:
    n = 2
    hist = torch.randn(n, 2, 2, 32, 4, 6)
    cur = torch.randn(n, 2, 32, 4, 6)
    last = torch.randn(n, 3, 32, 48)
    fe, pe, mo = model.dpc.score_history(hist, cur, last, last.clone())
    assert fe.shape == pe.shape == mo.shape == (n, 4, 6)
    assert torch.all(mo == 0)  # identical frames: no motion
    # The decoder starts as "copy the last frame", so the pixel error equals the motion energy squared-ish.
    _, pe2, mo2 = model.dpc.score_history(hist, cur, last, last + 1.0)
    assert torch.allclose(pe2, torch.ones_like(pe2), atol=1e-5)
    assert torch.allclose(mo2, torch.ones_like(mo2), atol=1e-5)


def test_pretrained_square_weights_load_into_non_square_input(tmp_path: Path) -> None:
    from transformers import TimesformerConfig, TimesformerModel

    cfg = TimesformerConfig(
        image_size=32,
        patch_size=8,
        num_frames=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    TimesformerModel(cfg).save_pretrained(tmp_path / "tsf")
    enc = TimeSformerEncoder(
        height=24, width=40, num_frames=2, patch_size=8, pretrained=str(tmp_path / "tsf")
    )
    tokens, _ = enc(torch.randn(1, 2, 3, 24, 40))
    assert tokens.shape == (1, 2, 32, 3, 5)
    assert enc.model.embeddings.position_embeddings.shape == (1, 1 + 3 * 5, 32)
    with pytest.raises(BackboneLoadError, match="never downloads"):
        TimeSformerEncoder(
            height=32, width=32, num_frames=2, patch_size=8, pretrained=str(tmp_path / "missing")
        )


def _sampler(n_clips: int = 4) -> WindowSampler:
    videos = {f"v{i}": moving_square_video(40, seed=i) for i in range(2)}
    return WindowSampler(
        videos, n_clips=n_clips, clip_len=2, stride=1, mean=(0.45,) * 3, std=(0.225,) * 3, seed=0
    )


def test_gradients_reach_backbone_and_head(model: ZsadModel) -> None:
    step = TrainStep(model, alpha=0.5, pixel_weight=1.0, temperature=0.1)
    windows, _ = _sampler().sample(2)
    terms = step(windows)
    terms.total.backward()
    for name in (
        "backbone.model.embeddings.patch_embeddings.projection.weight",
        "dpc.gru.gates.weight",
        "dpc.decoder.2.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None, name
        assert grad.abs().sum() > 0, name


def test_loss_decreases_on_a_few_clips(model: ZsadModel) -> None:
    torch.manual_seed(0)
    step = TrainStep(model, alpha=0.5, pixel_weight=1.0, temperature=0.1)
    sampler = _sampler()
    fixed, _ = sampler.sample(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = float(step(fixed).total.detach())
    for _ in range(40):
        opt.zero_grad()
        step(fixed).total.backward()
        opt.step()
    last = float(step(fixed).total.detach())
    assert last < 0.7 * first, (first, last)


def test_checkpoint_round_trip_and_tamper(model: ZsadModel, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"step": 7})
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 7
    x = torch.randn(1, 2, 3, 32, 48)
    model.eval()
    loaded.eval()
    assert torch.equal(model.backbone(x)[0], loaded.backbone(x)[0])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_checkpoint_keeps_the_spec_as_json_and_loads_it_typed(model: ZsadModel, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    stored = json.loads(path.with_suffix(".safetensors.json").read_text())["spec"]
    assert stored == tiny_spec().model_dump(mode="json")
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded.spec, ModelConfig)
    assert loaded.spec == tiny_spec()
    assert meta["spec"] == stored
    # The model holds its own copy: editing the config afterwards changes nothing in it.
    spec = tiny_spec()
    again = ZsadModel(spec)
    spec.preprocess.clip_len = 8
    assert again.clip_len == 2


def test_old_checkpoint_without_later_fields_still_loads(model: ZsadModel, tmp_path: Path) -> None:
    """A checkpoint written before ``dpc.decoder`` existed loads with the residual decoder it was trained
    with (the demo checkpoint shipped until 2026-12-04 was one; the current one names its decoder)."""
    path = save_checkpoint(model, tmp_path / "old.safetensors")
    meta_path = path.with_suffix(".safetensors.json")
    meta = json.loads(meta_path.read_text())
    del meta["spec"]["dpc"]["decoder"]
    meta_path.write_text(json.dumps(meta))
    loaded, _ = load_checkpoint(path)
    assert loaded.spec.dpc.decoder == "residual"
    assert loaded.spec == tiny_spec()
    demo = json.loads((REPO / "models" / "demo" / "model.safetensors.json").read_text())["spec"]
    demo_model, _ = load_checkpoint(REPO / "models" / "demo" / "model.safetensors")
    assert demo_model.spec.dpc.decoder == demo["dpc"]["decoder"] == "extrapolate"
    assert demo_model.spec.backbone.image_height == demo["backbone"]["image_height"]


def test_a_spec_missing_a_field_nobody_knows_the_old_value_of_is_refused() -> None:
    stored = tiny_spec().model_dump(mode="json")
    del stored["dpc"]["pred_steps"]
    with pytest.raises(CheckpointError, match=r"lacks dpc\.pred_steps"):
        parse_spec(stored)
    stored = tiny_spec().model_dump(mode="json")
    stored["dpc"]["layers"] = 3
    with pytest.raises(CheckpointError, match=r"dpc\.layers: Extra inputs are not permitted"):
        parse_spec(stored)
    with pytest.raises(CheckpointError, match="JSON object"):
        parse_spec(["not", "a", "spec"])


def _fake_head(seen: list[list[float]] | None = None, feeds_seen: list[dict] | None = None) -> Callable:
    """A DPC head in numpy with the engine's I/O: a clip's projection is its first token value + 1 (never 0,
    so the all-zero history of a clip that fills its camera's history is told apart). ``seen`` gets the
    history of each scored clip, as token values; ``feeds_seen`` every call's feeds."""

    def dpc(feeds: dict) -> dict:
        if feeds_seen is not None:
            feeds_seen.append(dict(feeds))
        if seen is not None:
            history = feeds["history_proj"][:, :, 0, 0, 0]
            seen.extend((row - 1.0).tolist() for row in history if np.all(row != 0))
        n = feeds["current"].shape[0]
        maps = {k: np.zeros((n, 1, 1), np.float32) for k in ("feature_error", "pixel_error", "motion")}
        return {**maps, "current_proj": feeds["current"][:, 0, :1] + 1.0}

    dpc.projection_channels = 1  # type: ignore[attr-defined]
    return dpc


def test_scorer_history_spacing() -> None:
    """With history_step 2, clip k is scored against clips k-2*C .. k-2 (every second one)."""
    seen: list[list[float]] = []
    scorer = ClipScorer(_fake_head(seen), context_clips=2, history_step=2)
    frame = np.zeros((3, 2, 2), np.float32)
    results = []
    for k in range(6):
        tokens = np.full((1, 1, 1, 1), float(k), np.float32)
        results += scorer.score([ClipTokens("cam", k, tokens, np.zeros(1, np.float32), frame, frame)])
    assert [r is None for r in results] == [True] * 4 + [False] * 2
    assert seen == [[0.0, 2.0], [1.0, 3.0]]


def test_scorer_runs_a_clip_after_the_clips_of_its_history_in_the_same_call() -> None:
    """Six clips of one camera in one call, history_step 2: clips 4 and 5 need the projections of clips 0-3,
    which this call makes. The first engine call takes all six (their projections), a second clips 4 and 5
    again with their history; the scores are those of one clip a call."""
    seen: list[list[float]] = []
    feeds_seen: list[dict] = []
    scorer = ClipScorer(_fake_head(seen, feeds_seen), context_clips=2, history_step=2)
    results = scorer.score([_clip("cam", k) for k in range(6)])
    assert [r is None for r in results] == [True] * 4 + [False] * 2
    assert seen == [[0.0, 2.0], [1.0, 3.0]]
    assert [f["current"][:, 0, 0, 0, 0].tolist() for f in feeds_seen] == [[0, 1, 2, 3, 4, 5], [4, 5]]
    assert not feeds_seen[0]["history_proj"].any()  # in the first call, no history for anyone


def test_a_failed_engine_call_takes_its_clips_out_of_the_history() -> None:
    """A clip lost with a failed call never got its projection: it leaves the history, which the next clip
    fills again (the clip it had pushed out is gone), and the one after is scored across the gap, as after a
    clip dropped by a full queue."""
    seen: list[list[float]] = []
    head = _fake_head(seen)
    fail = {"now": False}

    def flaky(feeds: dict) -> dict:
        if fail["now"]:
            raise RuntimeError("engine failed")
        return head(feeds)

    scorer = ClipScorer(flaky, context_clips=2, projection_channels=1)
    scorer.score([_clip("cam", k) for k in range(3)])
    fail["now"] = True
    with pytest.raises(RuntimeError, match="engine failed"):
        scorer.score([_clip("cam", 3)])
    fail["now"] = False
    assert scorer.score([_clip("cam", 4)]) == [None]
    assert scorer.score([_clip("cam", 5)])[0] is not None
    assert seen == [[0.0, 1.0], [2.0, 4.0]]


def test_streaming_head_equals_the_head_that_encodes_its_history_again() -> None:
    """The engine's streaming form (each past clip's projection from the call where it was current) gives
    the maps of the form that encodes every past clip again on every call."""
    torch.manual_seed(0)
    head = DPCHead(in_dim=32, hidden=16, context_clips=3, pred_steps=2, patch_size=8, decoder="extrapolate")
    torch.nn.init.normal_(head.decoder[-1].weight, std=0.05)  # a trained-looking residual
    tokens = torch.randn(6, 2, 2, 32, 4, 6)  # (N, clips, T, D, h, w)
    frames = torch.randn(6, 3, 32, 48)
    no_history = torch.zeros(6, 3, 48, 4, 6)
    with torch.no_grad():
        # Each clip as the current one (the history and frames do not change its projection).
        projections = torch.stack(
            [head(no_history, tokens[:, 0, -1], tokens[:, k], frames, frames, frames)[3] for k in range(2)],
            dim=1,
        )
        history = torch.cat([tokens, tokens[:, :1]], dim=1)  # three past clips: 0, 1, 0 again
        streamed = head(
            torch.cat([projections, projections[:, :1]], dim=1),
            history[:, -1, -1],
            tokens[:, 1],
            frames,
            frames + 1,
            frames - 1,
        )
        again = head.score_history(history, tokens[:, 1], frames, frames + 1, frames - 1)
    assert streamed[3].shape == (6, 48, 4, 6)
    for a, b in zip(streamed[:3], again, strict=True):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    # And the cell's split kernels are its kernels: a step from a projection is the plain step.
    x, h = torch.randn(2, 16, 4, 6), torch.randn(2, 16, 4, 6)
    z, r = torch.sigmoid(head.gru.gates(torch.cat([x, h], 1))).chunk(2, 1)
    c = torch.tanh(head.gru.cand(torch.cat([x, r * h], 1)))
    assert torch.allclose(head.gru(x, h), (1 - z) * h + z * c, atol=1e-6)
    # The first step, without a state, is the plain step from a zero state (its bias slices included).
    torch.nn.init.normal_(head.gru.gates.bias, std=0.5)
    torch.nn.init.normal_(head.gru.cand.bias, std=0.5)
    zeros = torch.zeros_like(x)
    z0, _ = torch.sigmoid(head.gru.gates(torch.cat([x, zeros], 1))).chunk(2, 1)
    c0 = torch.tanh(head.gru.cand(torch.cat([x, zeros], 1)))
    assert torch.allclose(head.gru.first(x), z0 * c0, atol=1e-6)
    assert torch.allclose(head.gru.first(x), head.gru(x, zeros), atol=1e-6)


def test_clip_scorer_gives_the_maps_of_the_head_that_encodes_its_history_again() -> None:
    """Two cameras interleaved, several clips of a camera in one call, history_step 2: every scored clip's
    maps are those of the head given its history's tokens (DPCHead.score_history), and ``extra_maps`` is
    called once a call, with the scored clips' positions in order."""
    from training.evaluate import dpc_runner

    torch.manual_seed(0)
    model = ZsadModel(tiny_model(dpc={"decoder": "extrapolate"})).eval()
    torch.nn.init.normal_(model.dpc.decoder[-1].weight, std=0.05)  # a residual that reads last_tokens
    rng = np.random.default_rng(5)

    def clip(camera: str, index: int) -> ClipTokens:
        tokens = rng.standard_normal((2, 32, 4, 6)).astype(np.float32)
        frames = rng.standard_normal((3, 3, 32, 48)).astype(np.float32)
        return ClipTokens(camera, index, tokens, np.zeros(32, np.float32), frames[0], frames[1], frames[2])

    clips = {cam: [clip(cam, k) for k in range(9)] for cam in ("a", "b")}
    a, b = clips["a"], clips["b"]
    batches = [
        [a[0], b[0], a[1]],
        [a[2], a[3], b[1], b[2], a[4], a[5], b[3], b[4]],
        [b[5], a[6], a[7], b[6], b[7], a[8], b[8]],
    ]
    scorer = ClipScorer(
        dpc_runner(model),
        context_clips=2,
        history_step=2,
        prev_frame=True,
        projection_channels=model.dpc.gru.projection_channels,
    )
    extra_calls: list[list[int]] = []

    def extra(indices: Sequence[int], grid: tuple[int, int]) -> list[dict[str, np.ndarray]]:
        extra_calls.append(list(indices))
        return [{} for _ in indices]

    results = {}
    for batch in batches:
        before = len(extra_calls)
        out = scorer.score(batch, extra_maps=extra)
        scored = [i for i, r in enumerate(out) if r is not None]
        assert extra_calls[before:] == ([scored] if scored else [])
        results.update({(c.camera, c.index): r for c, r in zip(batch, out, strict=True)})
    for cam, seq in clips.items():
        for k, current in enumerate(seq):
            got = results[(cam, k)]
            if k < 4:  # C * history_step clips fill the history
                assert got is None
                continue
            assert got is not None
            hist = seq[k - 4 : k : 2]
            with torch.no_grad():
                want = model.dpc.score_history(
                    torch.from_numpy(np.stack([h.tokens for h in hist]))[None],
                    torch.from_numpy(current.tokens)[None],
                    torch.from_numpy(hist[-1].last_frame)[None],
                    torch.from_numpy(current.first_frame)[None],
                    torch.from_numpy(hist[-1].prev_last_frame)[None],  # type: ignore[arg-type]
                )
            for name, ref in zip(("predictive", "pixel", "motion"), want, strict=True):
                np.testing.assert_allclose(
                    got.maps[name], ref[0].numpy(), atol=1e-5, err_msg=f"{cam} {k} {name}"
                )


def test_a_failure_in_the_second_engine_call_keeps_the_first_calls_projections() -> None:
    """Clips 2 and 3 need clips of their own call: the first engine call gives all four their projections,
    the second (their maps) fails. Nothing leaves the history: the next clip is scored against 2 and 3."""
    seen: list[list[float]] = []
    head = _fake_head(seen)
    calls = {"n": 0}

    def second_fails(feeds: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("second call failed")
        return head(feeds)

    scorer = ClipScorer(second_fails, context_clips=2, projection_channels=1)
    with pytest.raises(RuntimeError, match="second call failed"):
        scorer.score([_clip("cam", k) for k in range(4)])
    assert scorer.score([_clip("cam", 4)])[0] is not None
    assert seen == [[2.0, 3.0]]


def _history_recorder(seen: list[list[float]]) -> ClipScorer:
    """A scorer (C=2, every clip) whose DPC head records each scored clip's history as token values."""
    return ClipScorer(_fake_head(seen), context_clips=2)


def _clip(camera: str, index: int) -> ClipTokens:
    """Clip ``index`` of ``camera``, its tokens all equal to its index (what the recorder reads back)."""
    frame = np.zeros((3, 2, 2), np.float32)
    tokens = np.full((1, 1, 1, 1), float(index), np.float32)
    return ClipTokens(camera, index, tokens, np.zeros(1, np.float32), frame, frame)


def test_a_gap_in_a_cameras_clip_indices_keeps_its_history() -> None:
    """Clip 10 dropped (a full queue, a failed batch): clip 11 is scored against [8, 9], the history it has,
    rather than the camera going without scores until its history refills (the trade-off ClipScorer
    states)."""
    seen: list[list[float]] = []
    scorer = _history_recorder(seen)
    scored = [r is not None for r in scorer.score([_clip("cam", k) for k in range(7, 10)])]
    assert scored == [False, False, True]
    after = [r is not None for r in scorer.score([_clip("cam", k) for k in (11, 12)])]
    assert after == [True, True]
    assert seen == [[7.0, 8.0], [8.0, 9.0], [9.0, 11.0]]


def test_consecutive_clips_keep_their_history_across_calls_and_cameras() -> None:
    seen: list[list[float]] = []
    scorer = _history_recorder(seen)
    scorer.score([_clip("a", 0), _clip("b", 5), _clip("a", 1), _clip("b", 6)])
    results = scorer.score([_clip("b", 7), _clip("a", 2)])  # another camera's clip between them
    assert [r is not None for r in results] == [True, True]
    assert seen == [[5.0, 6.0], [0.0, 1.0]]


def test_score_video_with_a_hop_above_one_keeps_its_history(model: ZsadModel) -> None:
    """Offline evaluation with clips two frames apart: the history fills once, and every later clip
    counts."""
    from training.evaluate import score_video

    model.eval()
    targets, _, _ = score_video(model, moving_square_video(30), hop=2)
    span = 2  # T*stride of the tiny model
    first = 2 * span  # C=2 clips of history
    assert targets.tolist() == list(range(first, 30 - 1, 2))


def test_semantic_stream_with_tiny_local_clip(tmp_path: Path, model: ZsadModel) -> None:
    from engines.semantic import TextEncoder
    from tests.fixtures.tiny_models import make_tiny_clip

    clip_dir = make_tiny_clip(tmp_path / "clip", projection_dim=512)
    enc = TextEncoder(str(clip_dir))
    bank = enc.encode(["people walking", "a person running", "a car on the path"])
    assert bank.shape == (3, 512)
    step = TrainStep(model, alpha=0.5, pixel_weight=1.0, temperature=0.1)
    step.text_bank = bank
    windows, _ = _sampler().sample(2)
    terms = step(windows, torch.tensor([0, 0]))
    assert float(terms.infonce.detach()) > 0
    terms.total.backward()
    assert model.projection.out[0].weight.grad is not None


def test_missing_clip_weights_are_reported_once(caplog: pytest.LogCaptureFixture, model: ZsadModel) -> None:
    from core.config import parse_config
    from training.trainer import _attach_text_bank

    cfg = parse_config("model:\n  semantic:\n    clip_text_model: /nonexistent/clip\n")
    step = TrainStep(model, alpha=0.5, pixel_weight=1.0, temperature=0.1)
    with caplog.at_level(logging.WARNING):
        _attach_text_bank(step, cfg, {"v": "generic"})
    assert step.text_bank is None
    assert sum("semantic stream" in r.message for r in caplog.records) == 1


def test_reflected_history_scores_every_frame_from_the_first(model: ZsadModel) -> None:
    from training.evaluate import score_video

    model.eval()
    frames = moving_square_video(30)
    targets, scores, emb = score_video(model, frames, hop=1, reflect_history=True)
    assert targets[0] == 0
    assert targets[-1] == len(frames) - 2  # the last clip (T=2) starts one frame before the end
    assert len(targets) == len(scores["pixel"]) == len(emb)
    plain, _, _ = score_video(model, frames, hop=1)
    assert plain[0] == 2 * 2  # C=2 clips of T*stride=2 frames of history


def test_warp_decoder_starts_as_copy_and_moves_pixels() -> None:
    from engines.dpc import DPCHead

    torch.manual_seed(0)
    head = DPCHead(in_dim=32, hidden=16, context_clips=2, pred_steps=1, patch_size=8, decoder="warp")
    last = torch.randn(2, 3, 32, 48)
    pred1, tokens = torch.randn(2, 16, 4, 6), torch.randn(2, 32, 4, 6)
    assert torch.allclose(head.decode_frame(pred1, tokens, last), last, atol=1e-5)  # zero flow, zero residual
    flow = torch.zeros(2, 2, 4, 6)
    flow[:, 0] = 1.0  # one pixel to the right
    moved = head.warp_frame(last, flow)
    assert torch.allclose(moved[..., 1:-1], last[..., :-2], atol=1e-4)
    # The displacement head learns: its output layer gets a gradient through grid_sample.
    head.flow[-1].bias.data.fill_(0.1)
    head.decode_frame(pred1, tokens, last).pow(2).mean().backward()
    assert head.flow[-1].weight.grad is not None
    assert head.flow[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="decoder"):
        DPCHead(in_dim=32, hidden=16, decoder="nope")


def test_extrapolate_decoder_scores_speed_changes_not_steady_motion() -> None:
    from engines.dpc import DPCHead

    torch.manual_seed(0)
    head = DPCHead(in_dim=32, hidden=16, context_clips=2, pred_steps=1, patch_size=8, decoder="extrapolate")
    history, current = torch.randn(1, 2, 2, 32, 4, 6), torch.randn(1, 2, 32, 4, 6)
    x = torch.arange(48, dtype=torch.float32) / 48

    def ramp(shift: float) -> torch.Tensor:  # a brightness ramp moved ``shift`` pixels to the right
        return (x - shift / 48).expand(1, 3, 32, 48).contiguous()

    # Steady motion (one pixel a frame): the constant-velocity prior predicts it exactly.
    _, steady, motion = head.score_history(history, current, ramp(2), ramp(3), ramp(1))
    assert motion.min() > 0.015  # it does move: copying the last frame would be wrong everywhere
    assert steady.abs().max() < 1e-5
    # The same object suddenly four times as fast: the prediction misses by the change of speed.
    _, sped_up, _ = head.score_history(history, current, ramp(2), ramp(6), ramp(1))
    assert sped_up.min() > 2.5 / 48
    # At initialisation the predicted frame is exactly the extrapolation; the residual then learns.
    pred1 = torch.randn(1, 16, 4, 6)
    assert torch.equal(head.decode_frame(pred1, current[:, -1], ramp(2), ramp(1)), 2 * ramp(2) - ramp(1))
    with pytest.raises(ValueError, match="needs prev_frame"):
        head.decode_frame(pred1, current[:, -1], ramp(2))


def test_scorer_feeds_prev_frame_to_an_extrapolating_head() -> None:
    feeds_seen: list[dict] = []
    scorer = ClipScorer(_fake_head(feeds_seen=feeds_seen), context_clips=1, prev_frame=True)
    tok, emb = np.zeros((2, 1, 1, 1), np.float32), np.zeros(1, np.float32)
    frame = np.zeros((3, 4, 4), np.float32)
    prev = np.full((3, 4, 4), 7.0, np.float32)
    assert scorer.score([ClipTokens("cam", 0, tok, emb, frame, frame, prev)]) == [None]
    assert scorer.score([ClipTokens("cam", 1, tok, emb, frame, frame, prev)])[0] is not None
    assert [set(f) for f in feeds_seen] == [
        {"history_proj", "last_tokens", "current", "last_frame", "current_frame", "prev_frame"}
    ] * 2
    assert np.array_equal(feeds_seen[1]["prev_frame"][0], prev)  # the history clip's, for the scored clip
    scorer.score([ClipTokens("gate", 0, tok, emb, frame, frame)])
    with pytest.raises(ValueError, match="camera gate: clip 0 has no prev_last_frame"):
        scorer.score([ClipTokens("gate", 1, tok, emb, frame, frame)])


def test_reflected_history_never_shows_an_extrapolating_head_a_turnaround() -> None:
    from training.evaluate import score_video

    torch.manual_seed(0)
    model = ZsadModel(tiny_spec(decoder="extrapolate")).eval()
    x = np.arange(48)
    wave = [128 + 60 * np.sin(2 * np.pi * (x - 1.5 * t) / 24) for t in range(30)]  # steady, 1.5 px/frame
    frames = np.stack([np.broadcast_to(w[None, :, None], (32, 48, 3)) for w in wave]).astype(np.uint8)
    targets, scores, _ = score_video(model, frames, hop=1, reflect_history=True)
    assert 0 in targets
    assert 2 in targets
    assert 1 not in targets  # its prev frame is mirrored: the motion would seem to reverse
    pixel = scores["pixel"]
    assert pixel.max() < 1.5 * np.median(pixel)  # steady motion scores steadily, no spike at the start


def _reference_forecast(head: DPCHead, feats: torch.Tensor) -> torch.Tensor:
    """The plain DPC recurrence: a zero state through every context clip, then every prediction step."""
    n, c, _, h, w = feats.shape
    state = feats.new_zeros(n, head.hidden, h, w)
    for i in range(c):
        state = head.gru(feats[:, i], state)
    preds = []
    for _ in range(head.pred_steps):
        p = head.predict_net(state)
        preds.append(p)
        state = head.gru(torch.relu(p), state)
    return torch.stack(preds, dim=1)


@pytest.mark.parametrize("pred_steps", [1, 3])
def test_forecast_shortcuts_match_the_plain_recurrence(pred_steps: int) -> None:
    """The zero-state first step and the stop after the last needed prediction change no number."""
    torch.manual_seed(0)
    head = DPCHead(in_dim=8, hidden=8, context_clips=3, pred_steps=pred_steps, patch_size=4).eval()
    for p in head.parameters():  # non-zero everywhere, so a dropped kernel half would show
        torch.nn.init.normal_(p, std=0.3)
    feats = torch.randn(2, 3, 8, 3, 5)
    with torch.no_grad():
        ref = _reference_forecast(head, feats)
        full = head.forecast(feats)
        first = head.forecast(feats, steps=1)
    assert full.shape == ref.shape
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first[:, 0], ref[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        head.forecast(feats, steps=0)
