"""The alert heatmap image: size, the peak box where the record says, masked cells untouched, the colour
scale, determinism and the JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.outputs.heatmap import LEGEND_MIN_WIDTH, PeakEvidence, heatmap_jpeg, render_heatmap
from plugins.zones import locate_peak


def _scene(height: int = 240, width: int = 320) -> np.ndarray:
    """A textured frame (so untouched pixels are recognisable)."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x * 3) % 200 + 20, (y * 5) % 180 + 30, ((x + y) * 2) % 160 + 40], axis=-1)
    return frame.astype(np.uint8)


def _evidence() -> np.ndarray:
    """6 x 8 cells, normal (0) except a peak at (2, 5) with a weaker neighbour, and two masked cells."""
    e = np.zeros((6, 8))
    e[2, 5] = 6.0
    e[2, 6] = 3.5
    e[5, 0] = e[5, 1] = np.nan
    return e


def test_heatmap_is_the_frame_size_with_the_peak_box_where_the_record_puts_it() -> None:
    frame = _scene()
    e = _evidence()
    location = locate_peak(e)
    assert location is not None
    box = location.pixel_box(320, 240)
    assert box == (200, 80, 280, 120)  # cells (2, 5) and (2, 6): both at least half of the peak
    out = render_heatmap(frame, e, box, legend=False)
    assert out.shape == frame.shape
    assert out.dtype == np.uint8
    x0, y0, x1, y1 = box
    # A white outline on the box's edge pixels (2 wide on a 240-line frame), black on either side of it.
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    for x, y in ((x0, ym), (x0 + 1, ym), (x1 - 1, ym), (xm, y0), (xm, y1 - 1)):
        assert tuple(out[y, x]) == (255, 255, 255), (x, y)
    for x, y in ((x0 - 1, ym), (x0 + 2, ym), (x1, ym), (x1 - 3, ym), (xm, y0 - 1), (xm, y1)):
        assert tuple(out[y, x]) == (0, 0, 0), (x, y)
    # The evidence is coloured inside the box and the frame is untouched far from it.
    assert np.any(out[100, 220] != frame[100, 220])
    np.testing.assert_array_equal(out[:60, :150], frame[:60, :150])


def test_masked_cells_are_never_coloured_and_rendering_is_deterministic() -> None:
    frame = _scene()
    e = np.zeros((6, 8))
    e[4, 1] = 5.0  # the peak right above two masked cells
    e[5, 0] = e[5, 1] = np.nan
    out = render_heatmap(frame, e, None, legend=False)
    np.testing.assert_array_equal(out[200:, :80], frame[200:, :80])  # the masked cells' pixels
    assert np.any(out[180, 60] != frame[180, 60])  # the peak cell's centre is coloured
    again = render_heatmap(frame, e, None, legend=False)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(frame, _scene())  # the input frame is not written to


def test_colour_scale_in_the_corner_of_wide_frames_only() -> None:
    e = _evidence()
    wide = render_heatmap(_scene(), e, None, legend=True)
    plain = render_heatmap(_scene(), e, None, legend=False)
    differs = np.any(wide != plain, axis=2)
    ys, xs = np.nonzero(differs)
    assert ys.min() > 240 * 0.75
    assert xs.min() > 320 * 0.6
    narrow_frame = _scene(90, LEGEND_MIN_WIDTH - 1)
    narrow = render_heatmap(narrow_frame, e, None, legend=True)
    np.testing.assert_array_equal(narrow, render_heatmap(narrow_frame, e, None, legend=False))
    # No evidence above normal: no colours, so no scale either.
    flat = np.zeros((6, 8))
    np.testing.assert_array_equal(render_heatmap(_scene(), flat, None, legend=True), _scene())


def test_heatmap_jpeg_decodes_to_the_frame_size() -> None:
    e = _evidence()
    location = locate_peak(e)
    assert location is not None
    data = heatmap_jpeg(_scene(), PeakEvidence(1.0, e, location), quality=90)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        assert img.size == (320, 240)
        pixels = np.asarray(img.convert("RGB"))
    # The box's white outline survives compression.
    assert pixels[100, 200].min() > 200
