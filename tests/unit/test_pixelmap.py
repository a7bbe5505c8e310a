"""The evidence map on the pixel grid: bilinear upsampling on the zones' cell geometry, NaN cells, levels,
the colour scale and the blend."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.pixelmap import (
    ALPHA_RANGE,
    COLOUR_STOPS,
    PixelMapError,
    blend,
    colourise,
    interpolation_matrix,
    overlay_levels,
    relative_luminance,
    upsample,
)


def test_interpolation_rows_sum_to_one_and_hit_cell_centres() -> None:
    r = interpolation_matrix(4, 12)  # 3 pixels a cell: pixel 1 is cell 0's centre, pixel 4 cell 1's
    assert r.shape == (12, 4)
    np.testing.assert_allclose(r.sum(axis=1), 1.0)
    for cell in range(4):
        assert r[3 * cell + 1, cell] == pytest.approx(1.0)
    # Beyond the outer centres the edge value holds.
    assert r[0, 0] == pytest.approx(1.0)
    assert r[11, 3] == pytest.approx(1.0)
    with pytest.raises(PixelMapError):
        interpolation_matrix(0, 5)


def test_upsample_is_bilinear_between_centres_and_constant_stays_constant() -> None:
    e = np.array([[0.0, 3.0], [6.0, 9.0]])
    up = upsample(e, 4, 4)  # centres at pixel 0.5 (between pixels 0 and 1) and 2.5
    assert up.shape == (4, 4)
    assert up[0, 0] == pytest.approx(0.0)
    assert up[3, 3] == pytest.approx(9.0)
    # Pixel (1, 1) is a quarter of the way from centre (0.5, 0.5) to (2.5, 2.5).
    assert up[1, 1] == pytest.approx(0.25 * 3.0 + 0.25 * 6.0)
    np.testing.assert_allclose(upsample(np.full((3, 5), 2.5), 7, 11), 2.5)
    with pytest.raises(PixelMapError):
        upsample(np.zeros(4), 4, 4)
    with pytest.raises(PixelMapError):
        upsample(np.zeros((2, 2)), 0, 4)


def test_nan_cells_stay_nan_over_their_pixels_and_nothing_leaks_out_of_them() -> None:
    e = np.array([[1.0, 1.0, 1.0], [1.0, np.nan, 1.0], [1.0, 1.0, 5.0]])
    up = upsample(e, 9, 9)  # 3 x 3 pixels a cell
    nan = np.isnan(up)
    expected = np.zeros((9, 9), bool)
    expected[3:6, 3:6] = True
    np.testing.assert_array_equal(nan, expected)
    # Next to the NaN cell only counted cells mix: the top row is all 1.
    np.testing.assert_allclose(up[:3, :], 1.0)


def test_stacks_and_pixel_subsets_match_the_whole_frame() -> None:
    rng = np.random.default_rng(0)
    stack = rng.random((3, 4, 5))
    stack[1, 2, 3] = np.nan
    whole = upsample(stack, 20, 25)
    for k in range(3):
        np.testing.assert_allclose(whole[k], upsample(stack[k], 20, 25), equal_nan=True)
    rows, cols = np.arange(0, 20, 3), np.arange(1, 25, 4)
    part = upsample(stack, 20, 25, rows=rows, cols=cols)
    np.testing.assert_allclose(part, whole[:, rows][:, :, cols], equal_nan=True)


def test_colour_scale_is_our_stops_with_luminance_rising() -> None:
    levels = np.linspace(0.0, 1.0, 101)
    colours = colourise(levels)
    assert colours.dtype == np.uint8
    assert colours.shape == (101, 3)
    assert tuple(colours[0]) == COLOUR_STOPS[0][1]
    assert tuple(colours[-1]) == COLOUR_STOPS[-1][1]
    lum = relative_luminance(colours)
    assert np.all(np.diff(lum) > 0), "the scale must get brighter from the half level to the peak"
    assert tuple(colourise(np.array([np.nan, -1.0, 2.0]))[0]) == COLOUR_STOPS[0][1]


def test_levels_run_from_the_half_level_to_the_peak() -> None:
    e = np.zeros((4, 4))
    e[1, 1] = 8.0  # median 0: half level 4
    up = upsample(e, 12, 12)  # 3 pixels a cell: pixel (4, 4) is the peak cell's centre
    levels, low, high = overlay_levels(e, up)
    assert (low, high) == (4.0, 8.0)
    assert levels[4, 4] == pytest.approx(1.0)
    shown = np.isfinite(levels)
    np.testing.assert_array_equal(shown, up >= 4.0)
    assert np.nanmin(levels) >= 0.0
    flat, lo, hi = overlay_levels(np.ones((2, 2)), np.ones((4, 4)))
    assert not np.isfinite(flat).any()
    assert lo == hi == 1.0
    none, lo, hi = overlay_levels(np.full((2, 2), np.nan), np.full((4, 4), np.nan))
    assert not np.isfinite(none).any()
    assert np.isnan(lo)
    assert np.isnan(hi)


def test_blend_colours_only_the_peak_region_and_leaves_the_rest() -> None:
    frame = np.full((40, 40, 3), 100, np.uint8)
    e = np.zeros((4, 4))
    e[0, 3] = 6.0
    e[3, 0] = np.nan
    out, low, high = blend(frame, e)
    assert out.shape == frame.shape
    assert out.dtype == np.uint8
    assert (low, high) == (3.0, 6.0)
    changed = np.any(out != frame, axis=2)
    assert changed[5, 35]  # the peak cell's centre
    assert not changed[20:, :20].any()  # far from the peak, and the NaN cell
    # At the peak the colour is the top of the scale at the top opacity.
    top = np.array(COLOUR_STOPS[-1][1], float)
    expected = (1 - ALPHA_RANGE[1]) * 100 + ALPHA_RANGE[1] * top
    # Pixel (4, 35) is where the corner cell's centre clamps to.
    np.testing.assert_allclose(out[4, 35], np.rint(expected), atol=1)
    same, _, _ = blend(frame, np.zeros((4, 4)))
    np.testing.assert_array_equal(same, frame)  # nothing above normal: nothing drawn
    with pytest.raises(PixelMapError):
        blend(frame[..., 0], e)
    with pytest.raises(PixelMapError):
        blend(frame, e[None])


@pytest.mark.parametrize("seed", range(6))
def test_blend_windowed_equals_the_whole_frame_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 9)), int(rng.integers(1, 12))
    height, width = int(rng.integers(5, 70)), int(rng.integers(5, 90))
    e = np.maximum(rng.normal(0.0, 1.0, (h, w)), 0.0)
    e[rng.random((h, w)) < 0.15] = np.nan
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out, low, high = blend(frame, e)
    # The reference: every pixel upsampled, levelled and blended.
    levels, ref_low, ref_high = overlay_levels(e, upsample(e, height, width))
    shown = np.isfinite(levels)[..., None]
    alpha = ALPHA_RANGE[0] + (ALPHA_RANGE[1] - ALPHA_RANGE[0]) * np.nan_to_num(levels)[..., None]
    mixed = (1 - alpha) * frame + alpha * colourise(levels)
    expected = np.where(shown, np.rint(mixed), frame).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_equal((low, high), (ref_low, ref_high))  # NaN equals NaN here


def test_upsample_applies_the_interpolation_matrices() -> None:
    rng = np.random.default_rng(3)
    e = rng.random((2, 5, 7))
    up = upsample(e, 23, 31)
    expected = interpolation_matrix(5, 23) @ e @ interpolation_matrix(7, 31).T
    np.testing.assert_allclose(up, expected, rtol=1e-12, atol=1e-12)
