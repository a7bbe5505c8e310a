"""The stationary stream (plugins/stationary.py) on tiny synthetic scenes: an object that appears and stays is
found at its cell, one that passes is not, a global light change is not foreground, the model file round
trips and a damaged or mismatched one is refused by name, and bad input gets a named error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import StationaryConfig
from plugins.stationary import (
    DEFAULT_WINDOW,
    FrameSpacer,
    StationaryError,
    StationaryModel,
    StationaryModelError,
    StationaryModels,
    StationaryState,
    cell_values,
    difference_map,
    fit_model,
    frame_step,
    load_model,
    model_path,
    save_model,
)

H, W = 32, 48
GRID = (4, 6)  # 8 x 8 pixel cells
WINDOW = 6


def scene(n: int, seed: int = 0) -> np.ndarray:
    """``n`` frames of one textured empty scene, with sensor noise drawn from ``seed``."""
    base = np.random.default_rng(0).integers(60, 120, size=(H, W, 3))
    rng = np.random.default_rng(seed)
    noise = rng.integers(-3, 4, size=(n, H, W, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def with_box(frame: np.ndarray, y: int, x: int, size: int = 4, value: int = 250) -> np.ndarray:
    out = frame.copy()
    out[y : y + size, x : x + size] = value
    return out


@pytest.fixture(scope="module")
def model() -> StationaryModel:
    return fit_model(scene(60), GRID, window=WINDOW, min_pixels=4, floor=10.0, camera="cam")


def final_map(model: StationaryModel, frames: list[np.ndarray]) -> np.ndarray:
    state = model.new_state()
    for f in frames:
        state.push(f)
    return model.score_map(state)


def test_an_object_that_appears_and_stays_is_found_at_its_cell(model: StationaryModel) -> None:
    frames = scene(3 * WINDOW, seed=1)
    # Dropped at frame WINDOW, in cell (2, 3) (rows 16-23, columns 24-31), and left there.
    seq = [with_box(f, 18, 26) if i >= WINDOW else f for i, f in enumerate(frames)]
    z = final_map(model, seq)
    assert z.shape == GRID
    assert np.unravel_index(int(z.argmax()), z.shape) == (2, 3)
    assert z[2, 3] > 5.0
    others = np.delete(z.ravel(), 2 * GRID[1] + 3)
    assert others.max() < 2.0


def test_an_object_that_passes_is_not_stationary(model: StationaryModel) -> None:
    frames = scene(2 * WINDOW, seed=2)
    # One frame in each position along a row: no pixel is covered in more than one frame of the window.
    seq = [with_box(f, 10, 4 * i % (W - 4)) for i, f in enumerate(frames)]
    assert final_map(model, seq).max() < 2.0


def test_a_light_that_saturates_the_white_is_not_foreground() -> None:
    # A white car or a painted line under brighter light reads 255, not 255 x the gain: the background
    # carried to the new light must saturate too, or the white would stand out as long as the light stays.
    base = np.random.default_rng(0).integers(60, 120, size=(H, W, 3))
    base[8:24, 16:32] = np.random.default_rng(1).integers(225, 245, size=(16, 16, 3))

    def frames(n: int, seed: int, gain: float = 1.0) -> np.ndarray:
        noise = np.random.default_rng(seed).integers(-3, 4, size=(n, H, W, 3))
        return np.clip((base[None] + noise) * gain, 0, 255).astype(np.uint8)

    white = fit_model(frames(60, 0), GRID, window=WINDOW, min_pixels=4, floor=10.0, camera="cam")
    brighter = frames(2 * WINDOW, 3, gain=1.3)
    assert (brighter[:, 8:24, 16:32] == 255).all()  # saturated
    assert final_map(white, list(brighter)).max() < 2.0


def test_a_global_light_change_is_not_foreground(model: StationaryModel) -> None:
    brighter = np.clip(scene(2 * WINDOW, seed=3).astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
    assert final_map(model, list(brighter)).max() < 2.0


def test_nothing_is_scored_before_the_window_is_full(model: StationaryModel) -> None:
    state = model.new_state()
    for f in [with_box(f, 18, 26) for f in scene(WINDOW - 1, seed=4)]:
        state.push(f)
    assert not state.ready
    assert not model.score_map(state).any()


def test_cell_values_take_the_kth_largest_pixel_per_cell() -> None:
    d = np.zeros((4, 6), np.float32)
    d[0, 0], d[0, 1], d[1, 0] = 9.0, 8.0, 7.0  # three pixels of cell (0, 0)
    v = cell_values(d, (2, 3), min_pixels=3)
    assert v.shape == (2, 3)
    assert v[0, 0] == 7.0
    assert cell_values(d, (2, 3), min_pixels=4)[0, 0] == 0.0


def test_difference_map_is_zero_for_a_scaled_copy() -> None:
    bg = scene(1)[0]
    assert difference_map(bg.astype(np.float32) * 0.8, bg).max() < 1.0


def test_the_model_file_round_trips(model: StationaryModel, tmp_path: Path) -> None:
    path = model_path(tmp_path / "gate-1.json")
    assert path.name == "gate-1.stationary.npz"
    save_model(model, path)
    back = load_model(path, frame_size=(H, W), grid=GRID)
    assert (back.camera, back.window, back.min_pixels) == ("cam", WINDOW, 4)
    np.testing.assert_array_equal(back.background, model.background)
    np.testing.assert_array_equal(back.std, model.std)


def test_a_model_for_another_grid_or_frame_size_is_refused(model: StationaryModel, tmp_path: Path) -> None:
    path = tmp_path / "cam.stationary.npz"
    save_model(model, path)
    with pytest.raises(StationaryModelError, match=r"cam\.stationary\.npz.*grid"):
        load_model(path, grid=(2, 3))
    with pytest.raises(StationaryModelError, match="frame size"):
        load_model(path, frame_size=(64, 96))


def test_a_damaged_or_missing_file_is_refused(model: StationaryModel, tmp_path: Path) -> None:
    path = tmp_path / "cam.stationary.npz"
    save_model(model, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StationaryModelError, match="truncated or corrupt"):
        load_model(path)
    with pytest.raises(StationaryModelError, match="no such file"):
        load_model(tmp_path / "none.stationary.npz")


def test_a_model_whose_arrays_were_changed_is_refused(model: StationaryModel, tmp_path: Path) -> None:
    path = tmp_path / "cam.stationary.npz"
    save_model(model, path)
    with np.load(path) as data:
        parts = {k: data[k] for k in data.files}
    parts["mean"] = parts["mean"] + 1.0
    np.savez(path, **parts)
    with pytest.raises(StationaryModelError, match="sha256"):
        load_model(path)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: StationaryState(window=1), "window"),
        (lambda: StationaryState().push(np.zeros((8, 8, 3), np.float32)), "uint8"),
        (lambda: StationaryState().push(np.zeros((8, 8), np.uint8)), "uint8"),
        (lambda: StationaryState().short_background(), "no frame"),
        (lambda: cell_values(np.zeros((10, 10)), (3, 3)), "whole cells"),
        (lambda: cell_values(np.zeros((9, 9)), (3, 3), min_pixels=10), "min_pixels"),
        (lambda: fit_model(scene(5), GRID, window=WINDOW), "at least"),
        (lambda: fit_model(scene(40), (5, 6), window=WINDOW), "whole cells"),
        (lambda: difference_map(np.zeros((4, 4, 3)), np.zeros((4, 5, 3))), "both"),
    ],
)
def test_bad_input_gets_a_named_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StationaryError, match=message):
        call()


def test_frames_of_another_size_than_the_window_are_refused() -> None:
    state = StationaryState(window=3)
    state.push(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(StationaryError, match="earlier frames"):
        state.push(np.zeros((8, 16, 3), np.uint8))


# -- the spacing a run's window takes its frames at ----------------------------------------------------


def test_the_spacer_takes_frames_that_arrive_exactly_the_spacing_apart() -> None:
    spacer = FrameSpacer(0.4)
    times = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
    assert [t for t in times if spacer.take(t, gap=0.2)] == [0.0, 0.4, 0.8, 1.2]


def test_the_spacer_rounds_a_spacing_between_frames_up_and_forgives_jitter() -> None:
    spacer = FrameSpacer(0.3)
    assert [t for t in (0.0, 0.2, 0.4, 0.6, 0.8) if spacer.take(t, gap=0.2)] == [0.0, 0.4, 0.8]
    jittery = FrameSpacer(0.4)
    assert [t for t in (0.0, 0.39, 0.81, 1.19) if jittery.take(t, gap=0.2)] == [0.0, 0.39, 0.81, 1.19]


def test_the_spacer_selects_within_clips_across_their_boundaries_and_resets() -> None:
    spacer = FrameSpacer(0.4)
    # Clips of 4 frames 0.2 s apart, one every 0.8 s: every second frame is taken, across the clips.
    assert spacer.select([0.0, 0.2, 0.4, 0.6]) == [0, 2]
    assert spacer.select([0.8, 1.0, 1.2, 1.4]) == [0, 2]
    assert spacer.select([5.0, 5.2]) == [0]  # after a gap: the first frame again
    spacer.reset()
    assert spacer.select([0.0, 0.2]) == [0]


@pytest.mark.parametrize(
    ("spacing", "fps", "layout", "step"),
    [
        (0.4, 10, (4, 2, 8), 4),  # the synthetic demo: clips hold every 2nd frame, 0.4 s = 4 frames
        (0.3, 10, (4, 2, 8), 4),  # 3 frames is not in any clip: rounded up
        (0.3, 10, (4, 1, 4), 3),
        (0.4, 25, (4, 2, 8), 10),
        (0.3, 25, (4, 2, 8), 8),
    ],
)
def test_frame_step_is_the_step_the_run_gets(spacing: float, fps: float, layout: tuple, step: int) -> None:
    assert frame_step(spacing, fps, *layout) == step


def test_the_spacing_is_recorded_and_a_model_fitted_at_another_is_refused(tmp_path: Path) -> None:
    fitted = fit_model(scene(40), GRID, window=WINDOW, camera="cam", spacing_s=0.4)
    path = tmp_path / "cam.stationary.npz"
    save_model(fitted, path)
    assert load_model(path, spacing_s=0.4).spacing_s == pytest.approx(0.4)
    with pytest.raises(StationaryModelError, match=r"0\.4 s apart.*spacing_s is 0\.3"):
        load_model(path, spacing_s=0.3)


def test_the_models_of_a_run_are_set_read_and_removed_by_camera(model: StationaryModel) -> None:
    models = StationaryModels()
    models.set("b", model)
    models.set("a", model)
    assert models.cameras() == ["a", "b"]
    assert len(models) == 2
    assert models.get("a") is model
    assert models.get("c") is None
    models.remove("a")
    assert models.cameras() == ["b"]


# --------------------------------------------------------------------------------------------------
# The fast path (ring buffer, selection network, counted channel medians) gives the formula's values
# --------------------------------------------------------------------------------------------------


def reference_difference(short: np.ndarray, background: np.ndarray) -> np.ndarray:
    s, b = short.astype(np.float32), background.astype(np.float32)
    gain = np.median(s.reshape(-1, 3), axis=0) / np.maximum(np.median(b.reshape(-1, 3), axis=0), 1.0)
    return np.abs(s - np.minimum(gain * b, 255.0)).max(axis=-1)  # the lit background saturates as a camera


def reference_inner_range(window_frames: np.ndarray) -> np.ndarray:
    """The window's inner range by sorting: per pixel and channel, the ``n // 4``-th largest less the
    ``n // 4``-th smallest of the ``n`` frames, then the largest channel."""
    n = len(window_frames)
    srt = np.sort(window_frames.astype(np.float32), axis=0)
    return (srt[n - 1 - n // 4] - srt[n // 4]).max(axis=-1)


def reference_score_map(model: StationaryModel, window_frames: np.ndarray) -> np.ndarray:
    """The stream's formula as first written (commit 3d57c90), with nothing cached or counted: the float64
    median of the stacked frames, the channels' medians by ``np.median``, the maximum over the channel
    axis; less the inner range by sorting, at least 0 (the steady difference, model version 2)."""
    s = np.median(window_frames, axis=0).astype(np.float32)
    steady = np.maximum(reference_difference(s, model.background) - reference_inner_range(window_frames), 0)
    values = cell_values(steady, model.grid, model.min_pixels)
    return ((values - model.mean) / (model.std + model.floor)).astype(np.float32)


@pytest.mark.parametrize("window", [2, 3, 4, 5, 7, 8, 9, 10, 16, 17, 33])
def test_the_short_background_is_the_median_of_the_last_window_frames(window: int) -> None:
    rng = np.random.default_rng(window)
    frames = rng.integers(0, 256, size=(2 * window + 3, 5, 7, 3), dtype=np.uint8)
    state = StationaryState(window)
    for t, f in enumerate(frames):
        state.push(f)
        expected = np.median(frames[max(0, t + 1 - window) : t + 1], axis=0).astype(np.float32)
        got = state.short_background()
        assert got.dtype == np.float32
        assert got.shape == f.shape
        assert np.array_equal(got, expected), t  # bit for bit, a partial window too
        medians = np.median(expected.reshape(-1, 3), axis=0)
        assert np.array_equal(state.channel_medians(), medians), t
        window_frames = frames[max(0, t + 1 - window) : t + 1]
        assert np.array_equal(state.inner_range(), reference_inner_range(window_frames)), t


@pytest.mark.parametrize("window", range(2, 15))
def test_the_median_is_right_for_every_order_of_zeros_and_ones(window: int) -> None:
    # A network of minima and maxima that selects right on every 0/1 input selects right on every input
    # (the 0-1 principle): each pixel of this frame stack is one of the 2**window 0/1 sequences.
    codes = np.arange(2**window)
    bits = ((codes[None, :] >> np.arange(window)[:, None]) & 1).astype(np.uint8) * 255
    frames = np.repeat(bits[:, None, :, None], 3, axis=3)  # (window, 1, 2**window, 3)
    state = StationaryState(window)
    for f in frames:
        state.push(f)
    assert np.array_equal(state.short_background(), np.median(frames, axis=0).astype(np.float32))
    assert np.array_equal(state.inner_range(), reference_inner_range(frames))


def test_what_stays_still_keeps_its_difference_and_what_sways_loses_it() -> None:
    # A bag that lies still and a person who stands on the same spot but sways: in both, the window's median
    # differs from the background by the same amount. Only the still one is stationary foreground.
    h, w, window = 24, 32, 8
    background = np.full((h, w, 3), 100, np.uint8)
    grid = (2, 2)
    zeros = np.zeros(grid)
    model = StationaryModel(background, zeros, zeros, window=window, min_pixels=4, floor=10.0)
    still, swaying = model.new_state(), model.new_state()
    swayed = []
    for t in range(window):
        f = background.copy()
        f[2:10, 2:10] = 200  # the bag: top-left cell, the same in every frame
        still.push(f)
        g = background.copy()
        # the person covers these pixels on five frames of eight: the median is the person, the inner range
        # (ranks 2 and 5) spans person and background
        g[2:10, 2:10] = 100 if t in (0, 3, 6) else 200
        swaying.push(g)
        swayed.append(g)
    assert np.median(np.stack(swayed), axis=0)[5, 5, 0] == 200
    z_still, z_sway = model.score_map(still), model.score_map(swaying)
    assert z_still[0, 0] == pytest.approx(10.0)  # (200 - 100) / floor
    assert z_sway[0, 0] < 0.5 * z_still[0, 0]
    assert np.all(z_still[1:, :] == 0)
    assert np.all(z_still[:, 1:] == 0)


@pytest.mark.parametrize(("window", "size"), [(8, (36, 48)), (6, (30, 48)), (5, (18, 30)), (10, (12, 12))])
def test_the_score_map_equals_the_formula_bit_for_bit(window: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    h, w = size
    base = rng.integers(0, 256, size=(h, w, 3))
    frames = np.clip(base + rng.integers(-60, 60, size=(3 * window, h, w, 3)), 0, 255).astype(np.uint8)
    frames[window:, 2:9, 3:10] = 250  # something that stays
    grid = (h // 6, w // 6)
    model = StationaryModel(
        rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8),
        rng.random(grid),
        rng.random(grid),
        window=window,
        min_pixels=3,
    )
    state = model.new_state()
    for t, f in enumerate(frames):
        state.push(f)
        if state.ready:
            expected = reference_score_map(model, frames[t + 1 - window : t + 1])
            assert np.array_equal(model.score_map(state), expected), t
            short = state.short_background()
            assert np.array_equal(
                difference_map(short, model.background), reference_difference(short, model.background)
            )


def test_the_model_keeps_its_own_read_only_background() -> None:
    # Scoring uses values derived from the background once; a caller changing its array afterwards must not
    # leave the model scoring against a background it no longer shows.
    rng = np.random.default_rng(3)
    bg = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    model = StationaryModel(bg, rng.random((2, 2)), rng.random((2, 2)), window=3, min_pixels=2)
    frames = rng.integers(0, 256, size=(3, 12, 12, 3), dtype=np.uint8)
    state = model.new_state()
    for f in frames:
        state.push(f)
    before = model.score_map(state)
    bg[:] = 0
    assert not np.shares_memory(model.background, bg)
    assert np.array_equal(model.score_map(state), before)
    with pytest.raises(ValueError):
        model.background[0, 0, 0] = 1


def test_the_short_background_is_kept_until_a_push_and_a_reset_empties_the_window() -> None:
    frames = scene(8, seed=4)
    state = StationaryState(3)
    for f in frames[:3]:
        state.push(f)
    first = state.short_background()
    assert state.short_background() is first  # computed once per push
    assert not first.flags.writeable  # so no caller can spoil the kept copy
    state.push(with_box(frames[3], 0, 0, size=8))
    state.push(with_box(frames[4], 0, 0, size=8))
    second = state.short_background()
    assert second is not first
    assert np.array_equal(state.channel_medians(), np.median(second.reshape(-1, 3), axis=0))
    assert (second[:8, :8] == 250).all()
    assert not (first[:8, :8] == 250).any()
    state.reset()
    assert not state.ready
    assert state.frame_shape is None
    with pytest.raises(StationaryError, match="no frame"):
        state.short_background()
    # After a reset the window starts again, at any frame size.
    small = np.full((4, 6, 3), 9, np.uint8)
    for _ in range(3):
        state.push(small)
    assert state.ready
    assert np.array_equal(state.short_background(), small.astype(np.float32))
    assert np.array_equal(state.channel_medians(), np.full(3, 9, np.float32))


def test_the_module_default_window_is_the_configs() -> None:
    # A caller that leaves the window out (a script, a test) must get what the product runs with.
    assert StationaryConfig().window == DEFAULT_WINDOW
