"""The alert heatmap: the snapshot with its peak's evidence over it, the peak box and a colour scale.

Every alert whose peak has an evidence map (:func:`plugins.zones.evidence_map`, the map the peak box comes
from) gets ``events/<camera>/<alert_id>.heatmap.jpg`` beside its snapshot ``<alert_id>.jpg``; the record's
``heatmap`` field names it. ``pipeline.outputs.events.CameraAlerts`` keeps the evidence of the alert's
peak clip (:class:`PeakEvidence`) and ``pipeline.outputs.media.EventRecorder`` renders it on its I/O thread
from the same pixels as the snapshot, so the scoring thread pays nothing for it.

What it shows (:func:`render_heatmap`):

* the evidence, upsampled bilinearly from its cells to the frame (:func:`plugins.pixelmap.upsample`),
  coloured and blended only where it is at or above the map's half level, the level that also bounds the
  peak box (:func:`plugins.pixelmap.blend`); masked cells (NaN) are never coloured;
* the peak box (the record's ``peak_box``: :meth:`plugins.zones.PeakLocation.pixel_box` on this frame),
  outlined in white on black;
* a colour scale in the bottom-right corner from the half level to the peak, with both values (calibrated
  units: summed, weighted normal deviations), when the frame is at least :data:`LEGEND_MIN_WIDTH` wide.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from plugins.pixelmap import blend, colourise
from plugins.zones import PeakLocation

__all__ = [
    "HEATMAP_SUFFIX",
    "LEGEND_MIN_WIDTH",
    "PeakEvidence",
    "draw_box",
    "heatmap_jpeg",
    "render_heatmap",
]

#: The heatmap's file name ends so: ``<alert_id>.heatmap.jpg`` beside the snapshot ``<alert_id>.jpg``.
HEATMAP_SUFFIX = ".heatmap.jpg"
#: Frames narrower than this get no colour scale (it would cover the scene).
LEGEND_MIN_WIDTH = 160


@dataclass(frozen=True)
class PeakEvidence:
    """The evidence map of a clip and where it peaks: what an alert's heatmap and peak box are made of.
    ``evidence`` ``(h, w)`` float (NaN: not counted), never modified once made; ``location`` its
    :func:`plugins.zones.locate_peak`; ``time`` the clip's stream time."""

    time: float
    evidence: np.ndarray
    location: PeakLocation


def draw_box(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], width: int) -> None:
    """Outline pixel box ``(x0, y0, x1, y1)`` (``x1``, ``y1`` exclusive) in white with a black edge on
    each side, so it shows on any scene and any heatmap colour."""
    x0, y0, x1, y1 = box
    for grow, colour, line in ((1, (0, 0, 0), width + 2), (0, (255, 255, 255), width)):
        draw.rectangle(
            [x0 - grow, y0 - grow, x1 - 1 + grow, y1 - 1 + grow], outline=colour, width=max(1, line)
        )


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0 (pyproject allows >= 10): the fixed-size bitmap font only
        return ImageFont.load_default()


def _legend(image: Image.Image, low: float, high: float) -> None:
    """A colour bar from ``low`` (the half level) to ``high`` (the peak) in the bottom-right corner."""
    width, height = image.size
    bar_w = max(48, width // 4)
    bar_h = max(6, height // 40)
    size = max(9, min(16, height // 24))
    pad = max(3, size // 3)
    font = _font(size)
    draw = ImageDraw.Draw(image)
    lo_text, hi_text = f"{low:.1f}", f"{high:.1f}"
    title = "evidence"
    text_h = math.ceil(draw.textbbox((0, 0), title + lo_text, font=font)[3])
    panel_w = bar_w + 2 * pad
    panel_h = bar_h + text_h + 3 * pad
    px0, py0 = width - panel_w - pad, height - panel_h - pad
    draw.rectangle([px0, py0, px0 + panel_w - 1, py0 + panel_h - 1], fill=(0, 0, 0))
    bar = colourise(np.linspace(0.0, 1.0, bar_w))  # (bar_w, 3)
    strip = Image.fromarray(np.repeat(bar[None, :, :], bar_h, axis=0))
    bx, by = px0 + pad, py0 + panel_h - pad - bar_h
    image.paste(strip, (bx, by))
    ty = py0 + pad
    draw.text((bx, ty), lo_text, fill=(255, 255, 255), font=font)
    hi_w = draw.textlength(hi_text, font=font)
    draw.text((bx + bar_w - hi_w, ty), hi_text, fill=(255, 255, 255), font=font)
    title_w = draw.textlength(title, font=font)
    lo_w = draw.textlength(lo_text, font=font)
    if lo_w + title_w + hi_w + 2 * pad <= bar_w:
        draw.text((bx + (bar_w - title_w) / 2, ty), title, fill=(200, 200, 200), font=font)


def render_heatmap(
    frame: np.ndarray,
    evidence: np.ndarray,
    box: tuple[int, int, int, int] | None = None,
    *,
    legend: bool = True,
) -> np.ndarray:
    """``frame`` ``(H, W, 3)`` uint8 RGB with ``evidence`` ``(h, w)`` over it (see the module), the pixel
    ``box`` ``(x0, y0, x1, y1)`` outlined (None: no box) and, with ``legend``, the colour scale. Returns a
    new ``(H, W, 3)`` uint8 array; the same inputs always give the same pixels."""
    mixed, low, high = blend(frame, evidence)
    image = Image.fromarray(mixed)
    height, width = mixed.shape[:2]
    if box is not None:
        draw_box(ImageDraw.Draw(image), box, width=max(1, round(min(width, height) / 160)))
    if legend and width >= LEGEND_MIN_WIDTH and math.isfinite(low) and high > low:
        _legend(image, low, high)
    return np.asarray(image)


def heatmap_jpeg(frame: np.ndarray, peak: PeakEvidence, quality: int = 85) -> bytes:
    """The heatmap of ``peak`` over ``frame`` as JPEG bytes, its box in this frame's pixels (the alert
    record's ``peak_box`` when ``frame`` is the snapshot's)."""
    height, width = frame.shape[:2]
    image = render_heatmap(frame, peak.evidence, peak.location.pixel_box(width, height))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
