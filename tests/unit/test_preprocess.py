"""The one normalisation (plugins.preprocess): the direct formula bit for bit, any leading dims, the
clip-batch layouts, and the CPU graph's clip path and the DeepStream probe's frame path agreeing."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from pipeline.clips import Clip, to_model_input
from pipeline.inference import ClipInference, EngineSet
from plugins.preprocess import LAYOUTS, Normaliser, PreprocessError, normalise_frames, to_layout

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


def direct(frames: np.ndarray) -> np.ndarray:
    """``(x / 255 - mean) / std`` written out in float32, channels moved before H, W."""
    x = frames.astype(np.float32) / np.float32(255.0)
    y = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.moveaxis(y, -1, -3)


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_normalisation_is_the_direct_formula_bit_for_bit(lead: tuple[int, ...]) -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(*lead, 5, 7, 3), dtype=np.uint8)
    x = normalise_frames(frames, MEAN, STD)
    assert x.shape == (*lead, 3, 5, 7)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    np.testing.assert_array_equal(x, direct(frames))
    # ...and within float32 rounding of the exact value.
    exact = np.moveaxis((frames.astype(np.float64) / 255 - MEAN) / STD, -1, -3)
    np.testing.assert_allclose(x, exact, rtol=1e-6, atol=1e-6)


def test_every_uint8_value_and_a_mirrored_view() -> None:
    frames = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    np.testing.assert_array_equal(normalise_frames(frames, MEAN, STD), direct(frames))
    mirrored = frames[:, ::-1]  # training's horizontal flip: a view with a negative stride
    np.testing.assert_array_equal(
        normalise_frames(mirrored, MEAN, STD), normalise_frames(mirrored.copy(), MEAN, STD)
    )


def test_out_is_filled_and_checked() -> None:
    frames = np.full((2, 4, 4, 3), 255, np.uint8)
    out = np.zeros((3, 2, 3, 4, 4), np.float32)  # fill one slice of a bigger batch
    assert Normaliser(MEAN, STD)(frames, out=out[1]) is not None
    np.testing.assert_array_equal(out[1], direct(frames))
    assert not out[0].any()
    assert not out[2].any()
    with pytest.raises(PreprocessError, match="out must be"):
        Normaliser(MEAN, STD)(frames, out=np.zeros((2, 3, 4, 4), np.float64))
    with pytest.raises(PreprocessError, match="out must be"):
        Normaliser(MEAN, STD)(frames, out=np.zeros((2, 4, 4, 3), np.float32))


def test_bad_frames_and_constants_are_refused() -> None:
    norm = Normaliser(MEAN, STD)
    with pytest.raises(PreprocessError, match="uint8"):
        norm(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(PreprocessError, match="uint8"):
        norm(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(PreprocessError, match="uint8"):
        norm(np.zeros((4, 3), np.uint8))
    with pytest.raises(PreprocessError, match="3 values"):
        Normaliser((0.5, 0.5), STD)
    with pytest.raises(PreprocessError, match="std"):
        Normaliser(MEAN, (0.2, 0.0, 0.3))
    with pytest.raises(PreprocessError, match="finite"):
        Normaliser((0.5, float("nan"), 0.5), STD)
    assert norm.mean == pytest.approx(MEAN)
    assert norm.std == pytest.approx(STD)
    assert issubclass(PreprocessError, ValueError)


def test_layouts() -> None:
    batch = np.random.default_rng(1).standard_normal((2, 4, 3, 5, 6)).astype(np.float32)
    assert LAYOUTS == ("NTCHW", "NCTHW")
    assert to_layout(batch, "NTCHW") is batch
    ncthw = to_layout(batch, "NCTHW")
    assert ncthw.shape == (2, 3, 4, 5, 6)
    assert ncthw.flags.c_contiguous
    # Clip n, frame t, channel c sits at [n, c, t].
    np.testing.assert_array_equal(ncthw[1, 2, 3], batch[1, 3, 2])
    with pytest.raises(PreprocessError, match="layout"):
        to_layout(batch, "NHWC")
    with pytest.raises(PreprocessError, match="N, T, 3, H, W"):
        to_layout(batch[0], "NCTHW")


def test_clip_batches_and_single_frames_get_the_same_bits() -> None:
    """The CPU graph normalises whole clips, the DeepStream probe single frames: same pixels, same bits."""
    rng = np.random.default_rng(2)
    clips = [
        Clip("cam", i, rng.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8), np.arange(3.0), 0)
        for i in range(2)
    ]
    batch = to_model_input(clips, MEAN, STD)
    norm = Normaliser(MEAN, STD)
    for i, clip in enumerate(clips):
        for t in range(3):
            np.testing.assert_array_equal(batch[i, t], norm(clip.frames[t]))


class LayoutCheckingBackbone:
    """A backbone that takes NCTHW clips: tokens are the clip's per-frame channel means (numpy)."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        clip = feeds["clip"]
        self.seen.append(clip)
        n, c = clip.shape[:2]
        assert c == 3
        tokens = clip.mean(axis=(3, 4)).transpose(0, 2, 1)[..., None, None]  # (N, T, 3, 1, 1)
        return {"tokens": np.ascontiguousarray(tokens), "embedding": tokens.reshape(n, -1)}

    def close(self) -> None:
        pass


def fake_dpc(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A DPC head in numpy: feature error = |current - last history clip| (a clip's projection is its
    tokens summed), pixel/motion from the frames."""
    proj = feeds["current"].sum(axis=(1, 2))[:, None]  # (N, 1, h, w)
    diff = np.abs(proj - feeds["history_proj"][:, -1])[:, 0]  # (N, h, w)
    moved = np.abs(feeds["current_frame"] - feeds["last_frame"]).mean(axis=(1, 2, 3))
    return {
        "feature_error": diff,
        "pixel_error": np.broadcast_to(moved[:, None, None], diff.shape).copy(),
        "motion": np.broadcast_to(moved[:, None, None], diff.shape).copy(),
        "current_proj": proj,
    }


fake_dpc.projection_channels = 1  # type: ignore[attr-defined]


def test_cpu_graph_feeds_an_ncthw_backbone_and_scores_ntchw_frames() -> None:
    backbone = LayoutCheckingBackbone()
    engines = EngineSet(
        backbone=backbone,
        dpc=fake_dpc,
        frame_size=(10, 8),
        mean=MEAN,
        std=STD,
        model_id="test",
        input_layout="NCTHW",
    )
    inference = ClipInference(engines, context_clips=1, history_step=1, contexts={})
    rng = np.random.default_rng(3)
    clips = [
        Clip("cam", i, rng.integers(0, 256, (2, 8, 10, 3), dtype=np.uint8), np.arange(2.0), 0)
        for i in range(2)
    ]
    first = inference([clips[0]])
    second = inference([clips[1]])
    assert first[0].scores is None  # the DPC history fills
    scores = second[0].scores
    assert scores is not None
    assert backbone.seen[1].shape == (1, 3, 2, 8, 10)
    norm = Normaliser(MEAN, STD)
    np.testing.assert_array_equal(backbone.seen[1][0], np.moveaxis(norm(clips[1].frames), 0, 1))
    # The DPC head got (3, H, W) frames: the new clip's first frame and the previous clip's last.
    want = float(np.abs(norm(clips[1].frames[0]) - norm(clips[0].frames[-1])).mean())
    assert scores.scores["pixel"] == pytest.approx(want, rel=1e-6)
    assert set(scores.scores) == {"predictive", "pixel", "motion"}
