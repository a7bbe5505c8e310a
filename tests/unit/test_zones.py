"""Zones and masks on the error-map grid: rasterisation, the ignore mask before reduction, the learned-level
cap, the evidence map, the peak, its box and its zone (plugins/zones.py, plugins/scorer.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.config import ZoneSettings
from plugins.fusion import Calibration, CameraFusion, StreamStats
from plugins.scorer import ClipScorer, ClipTokens, StreamScores, filter_scores, reduce_map
from plugins.zones import (
    CellFilter,
    CellFilters,
    PeakLocation,
    ViewZones,
    Zone,
    ZoneError,
    dilate,
    evidence_map,
    half_level,
    locate_peak,
    points_in_polygon,
    rasterise,
    rasterise_polygon,
)

SQUARE = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]


def rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# -- rasterisation ---------------------------------------------------------------------------------------


def test_points_in_polygon_even_odd_and_concave() -> None:
    ell = [(0, 0), (1, 0), (1, 0.5), (0.5, 0.5), (0.5, 1), (0, 1)]  # an L: the top-right quarter is out
    xs = np.array([0.25, 0.75, 0.75, 0.25])
    ys = np.array([0.25, 0.25, 0.75, 0.75])
    assert points_in_polygon(xs, ys, ell).tolist() == [True, True, False, True]


def test_a_cell_is_covered_when_its_centre_is_inside() -> None:
    # Left half of a 2 x 4 grid: the centres of columns 0 and 1 (x = 0.125, 0.375) are inside.
    cells = rasterise_polygon(rect(0.0, 0.0, 0.5, 1.0), (2, 4))
    assert cells.tolist() == [[True, True, False, False], [True, True, False, False]]
    # A polygon to x = 0.4 still holds column 1's centre (x = 0.375) ...
    assert rasterise_polygon(rect(0.0, 0.0, 0.4, 1.0), (2, 4))[0].tolist() == [True, True, False, False]
    # ... one to x = 0.27 covers 8 % of column 1 and not its centre: out.
    assert rasterise_polygon(rect(0.0, 0.0, 0.27, 1.0), (2, 4))[0].tolist() == [True, False, False, False]


def test_a_quarter_of_a_cell_covers_it_without_its_centre() -> None:
    # x 0.5..0.5625 is the left quarter of column 2 on a 4-wide grid (cell 0.5..0.75): exactly MIN_COVER.
    cells = rasterise_polygon(rect(0.5, 0.0, 0.5625, 1.0), (1, 4))
    assert cells.tolist() == [[False, False, True, False]]


def test_a_polygon_smaller_than_a_cell_still_covers_one() -> None:
    tiny = rect(0.61, 0.11, 0.63, 0.13)  # far under a quarter of any cell of a 4 x 4 grid
    cells = rasterise_polygon(tiny, (4, 4))
    assert cells.sum() == 1
    assert cells[0, 2]  # the cell it lies in
    # A sliver thinner than the sample spacing still lands on the cell under it.
    sliver = [(0.30, 0.70), (0.302, 0.70), (0.301, 0.705)]
    assert np.argwhere(rasterise_polygon(sliver, (4, 4))).tolist() == [[2, 1]]


def test_a_small_polygon_across_a_cell_border_takes_the_cell_it_covers_most() -> None:
    # Spans the border x = 0.5 on a 1 x 2 grid, 2/3 of it right of it.
    cells = rasterise_polygon(rect(0.45, 0.4, 0.60, 0.5), (1, 2))
    assert cells.tolist() == [[False, True]]


def test_union_of_polygons_and_bad_shapes() -> None:
    cells = rasterise([rect(0, 0, 0.25, 0.25), rect(0.75, 0.75, 1, 1)], (4, 4))
    assert np.argwhere(cells).tolist() == [[0, 0], [3, 3]]
    assert not rasterise([], (3, 3)).any()
    with pytest.raises(ZoneError):
        rasterise_polygon(SQUARE, (0, 4))
    with pytest.raises(ZoneError):
        rasterise_polygon([(0, 0), (1, 1)], (2, 2))


def test_dilate_grows_in_eight_directions() -> None:
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert dilate(one, 1).sum() == 9
    assert dilate(one, 2).sum() == 25
    assert dilate(one, 0).sum() == 1


# -- a camera's zones ------------------------------------------------------------------------------------


def _zones(alert_zones: list[str] | None = None) -> ViewZones:
    return ViewZones(
        zones=[
            Zone("left", tuple(rect(0, 0, 0.5, 1))),
            Zone("top", tuple(rect(0, 0, 1, 0.5))),
            Zone("screen", tuple(rect(0.5, 0.5, 1, 1)), alert=False),
        ],
        mask=[rect(0.75, 0.0, 1.0, 0.5)],
        alert_zones=alert_zones,
    )


def test_zones_at_a_cell_and_which_one_an_alert_reports() -> None:
    zones = _zones()
    assert zones.zones_at((0, 0), (2, 4)) == ("left", "top")
    assert zones.zones_at((1, 3), (2, 4)) == ("screen",)
    assert zones.primary_zone(("left", "top")) == "left"
    assert zones.primary_zone(()) is None
    # Outside every zone alerts; only inside alert: false zones does not.
    assert zones.allows_alert(())
    assert zones.allows_alert(("left",))
    assert not zones.allows_alert(("screen",))
    restricted = _zones(alert_zones=["top"])
    assert restricted.allows_alert(("left", "top"))
    assert restricted.primary_zone(("left", "top")) == "top"
    assert not restricted.allows_alert(("left",))
    assert not restricted.allows_alert(())


def test_view_zones_refuse_inconsistent_input() -> None:
    with pytest.raises(ZoneError, match="repeat"):
        ViewZones([Zone("a", tuple(SQUARE)), Zone("a", tuple(SQUARE))])
    with pytest.raises(ZoneError, match="not one of the zones"):
        ViewZones([Zone("a", tuple(SQUARE))], alert_zones=["b"])
    with pytest.raises(ZoneError, match=r"outside 0\.\.1"):
        ViewZones(mask=[[(0, 0), (1.5, 0), (1, 1)]])


def test_view_zones_from_config_settings() -> None:
    settings = ZoneSettings.model_validate(
        {
            "zones": [{"name": "road", "points": [[0, 0], [1, 0], [1, 0.25], [0, 0.25]]}],
            "mask": [[[0, 0.75], [1, 0.75], [1, 1], [0, 1]]],
            "alert_zones": ["road"],
        }
    )
    zones = ViewZones.from_settings(settings)
    assert [z.name for z in zones.zones] == ["road"]
    assert zones.alert_zones == ("road",)
    assert np.argwhere(zones.mask_cells((4, 4))[:, 0]).ravel().tolist() == [3]
    assert zones.mask_cells((4, 4))[3].all()
    assert zones.mask_cells((4, 4)).flags.writeable is False


# -- masking and learned levels before reduction ---------------------------------------------------------


def test_reduce_map_skips_nan_cells() -> None:
    m = np.array([[1.0, 5.0], [2.0, np.nan]], np.float32)
    assert reduce_map(m) == 5.0
    assert math.isnan(reduce_map(np.full((2, 2), np.nan, np.float32)))
    assert reduce_map(np.array([[0.5, 0.25]], np.float32)) == 0.5


def test_mask_removes_cells_from_every_stream() -> None:
    zones = ViewZones(mask=[rect(0.5, 0.0, 1.0, 1.0)])
    f = CellFilter(zones, version=3)
    maps = {"pixel": np.array([[1.0, 9.0]], np.float32), "motion": np.array([[2.0, 8.0]], np.float32)}
    out = f.apply(maps)
    assert out is not None
    assert out["pixel"][0, 0] == 1.0
    assert np.isnan(out["pixel"][0, 1])
    assert np.isnan(out["motion"][0, 1])
    assert maps["pixel"][0, 1] == 9.0  # the engine's maps are not touched
    assert CellFilter(ViewZones()).apply(maps) is None  # nothing to remove


def test_learned_levels_cap_normal_cells_at_the_floor_or_remove_them() -> None:
    level = np.array([[-np.inf, 5.0, 5.0]], np.float32)
    maps = {"motion": np.array([[1.0, 4.0, 6.0]], np.float32)}
    capped = CellFilter(levels={"motion": level}, floors={"motion": 0.5}).apply(maps)
    assert capped is not None
    # cell 0: nothing learned; cell 1: at most its level, capped to the floor; cell 2: above it, kept.
    assert capped["motion"].tolist() == [[1.0, 0.5, 6.0]]
    removed = CellFilter(levels={"motion": level}).apply(maps)  # uncalibrated: no floor
    assert removed is not None
    assert np.isnan(removed["motion"][0, 1])
    assert removed["motion"][0, 2] == 6.0
    # A value already below the floor stays as it is.
    low = CellFilter(levels={"motion": level}, floors={"motion": 2.0}).apply(
        {"motion": np.array([[1.0, 1.5, 9.0]], np.float32)}
    )
    assert low is not None
    assert low["motion"].tolist() == [[1.0, 1.5, 9.0]]


def test_learned_levels_of_another_grid_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    f = CellFilter(levels={"motion": np.zeros((2, 2), np.float32)}, camera="cam-x")
    out = f.apply({"motion": np.ones((3, 3), np.float32)})
    assert out is not None
    assert np.all(out["motion"] == 1.0)
    assert "learned normal levels of stream motion are (2, 2)" in caplog.text


def test_filters_are_versioned_per_camera() -> None:
    filters = CellFilters()
    a = filters.set("a", ViewZones(mask=[SQUARE]), None)
    b = filters.set("a", None, None)
    assert b.version > a.version
    assert filters.get("a") is b
    filters.remove("a")
    assert filters.get("a") is None


def _scores(maps: dict[str, np.ndarray]) -> StreamScores:
    return StreamScores("cam", 0, {"semantic": 0.7}, maps, np.zeros(1, np.float32))


def test_filter_scores_reduces_the_map_streams_again() -> None:
    maps = {"pixel": np.array([[1.0, 9.0]], np.float32), "motion": np.array([[2.0, 8.0]], np.float32)}
    s = filter_scores(_scores(maps), None)
    assert s.scores == {"semantic": 0.7, "pixel": 9.0, "motion": 8.0}
    assert s.counted is None
    assert s.filter_version == 0
    f = CellFilter(ViewZones(mask=[rect(0.5, 0, 1, 1)]), version=7)
    filter_scores(s, f)
    assert s.scores == {"semantic": 0.7, "pixel": 1.0, "motion": 2.0}
    assert s.filter_version == 7
    assert s.scored_maps is s.counted
    # Everything masked: the map streams have no score (NaN), fusion leaves them out.
    filter_scores(s, CellFilter(ViewZones(mask=[SQUARE]), version=8))
    assert math.isnan(s.scores["pixel"])
    assert s.scores["semantic"] == 0.7


def test_clip_scorer_masks_before_reduction_per_camera() -> None:
    """A hot cell at the right (a flickering screen) wins the max; masked on camera 'a' only, it is gone."""

    def dpc(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(feeds["current"])
        m = np.tile(np.array([[0.2, 0.3, 0.4, 5.0]], np.float32), (n, 2, 1))  # (n, 2, 4)
        return {
            "feature_error": m,
            "pixel_error": m,
            "motion": m,
            "current_proj": np.ones((n, 1, 1, 1), np.float32),
        }

    filters = CellFilters()
    filters.set("a", ViewZones(mask=[rect(0.75, 0, 1, 1)]), None)
    scorer = ClipScorer(dpc, context_clips=1, filters=filters, projection_channels=1)
    tok, emb, frame = (
        np.zeros((2, 1, 1, 1), np.float32),
        np.zeros(1, np.float32),
        np.zeros((3, 2, 2), np.float32),
    )
    for cam in ("a", "b"):
        scorer.score([ClipTokens(cam, 0, tok, emb, frame, frame)])
    a, b = scorer.score(
        [ClipTokens("a", 1, tok, emb, frame, frame), ClipTokens("b", 1, tok, emb, frame, frame)]
    )
    assert a is not None
    assert b is not None
    assert a.scores == pytest.approx({"predictive": 0.4, "pixel": 0.4, "motion": 0.4})
    assert a.filter_version == filters.get("a").version  # type: ignore[union-attr]
    assert b.scores == pytest.approx({"predictive": 5.0, "pixel": 5.0, "motion": 5.0})
    assert b.counted is None
    assert b.filter_version == 0
    assert a.maps["motion"][0, 3] == 5.0  # the engine's map is kept as it was


# -- evidence, peak, box, zone ---------------------------------------------------------------------------


def test_evidence_counts_only_what_is_above_normal() -> None:
    stats = {"pixel": (1.0, 0.5), "predictive": (2.0, 0.01)}
    weights = {"pixel": 0.5, "predictive": 0.5, "semantic": 0.0}
    maps = {
        "pixel": np.array([[1.0, 3.0]], np.float32),  # z 0, 4
        "predictive": np.array([[2.0, 1.5]], np.float32),  # z 0, -50: far below its normal max
    }
    e = evidence_map(maps, weights, stats)
    assert e is not None
    np.testing.assert_allclose(e, [[0.0, 2.0]], atol=1e-9)
    whole = evidence_map(maps, weights, stats, positive=False)
    assert whole is not None
    np.testing.assert_allclose(whole, [[0.0, -23.0]], atol=1e-6)
    # Uncalibrated: z is the raw value.
    raw = evidence_map({"pixel": np.array([[2.0]], np.float32)}, {"pixel": 1.0}, None)
    assert raw is not None
    assert raw.tolist() == [[2.0]]
    assert evidence_map(maps, {}, stats) is None
    nan = evidence_map({"pixel": np.array([[np.nan, 2.0]], np.float32)}, {"pixel": 1.0}, None)
    assert nan is not None
    assert np.isnan(nan[0, 0])


def test_evidence_max_rule_follows_the_fused_score() -> None:
    """Under the max rule a cell's evidence is its strongest weighted stream, as the fused score is the
    strongest weighted stream: a stream that is quiet everywhere cannot pull the peak, and one that is hot in
    one cell is not halved by the others."""
    stats = {"pixel": (0.0, 1.0), "motion": (0.0, 1.0), "predictive": (0.0, 1.0)}
    maps = {
        "pixel": np.array([[9.0, 0.0, 0.0]], np.float32),  # a strong stream, hot on the left
        "motion": np.array([[0.0, 2.0, 1.0]], np.float32),
        "predictive": np.array([[0.0, 2.0, 1.0]], np.float32),
    }
    ones = {"pixel": 1.0, "motion": 1.0, "predictive": 1.0}
    e = evidence_map(maps, ones, stats, rule="max")
    assert e is not None
    np.testing.assert_allclose(e, [[9.0, 2.0, 1.0]])
    peak = locate_peak(e)
    assert peak is not None
    assert peak.cell == (0, 0)
    assert peak.evidence == 9.0  # the fused max score of this clip, at its place
    # A weighed-down stream needs a larger excursion to lead: pixel at 0.1 no longer wins the cell.
    down = evidence_map(maps, {**ones, "pixel": 0.1}, stats, rule="max")
    assert down is not None
    np.testing.assert_allclose(down, [[0.9, 2.0, 1.0]])
    # The mean (weights summing to 1) adds the streams instead: 3, 4/3, 2/3.
    mean = evidence_map(maps, {k: 1 / 3 for k in ones}, stats)
    assert mean is not None
    np.testing.assert_allclose(mean, [[3.0, 4 / 3, 2 / 3]])
    whole = evidence_map(maps, ones, stats, positive=False, rule="max")
    assert whole is not None
    np.testing.assert_allclose(whole, [[9.0, 2.0, 1.0]])
    nan = evidence_map({"pixel": np.array([[np.nan, 2.0]], np.float32)}, {"pixel": 1.0}, None, rule="max")
    assert nan is not None
    assert np.isnan(nan[0, 0])
    with pytest.raises(ValueError, match="unknown fusion rule"):
        evidence_map(maps, ones, stats, rule="sum")


def test_max_rule_peak_is_where_the_fused_score_comes_from() -> None:
    """Every map stream's score is its map's maximum, so under the max rule the evidence map's peak is the
    cell that set the clip's fused score: its evidence equals ``raw_fused`` and it is the leading stream's
    own peak cell. Hence nothing done to the other streams' cells (a margin to the winner, weights by their
    share of the score, the winner's map alone) can move the peak: only which stream leads, that is the
    reliability weights and the gate, decides where it is."""
    rng = np.random.default_rng(3)
    located = 0
    for trial in range(50):
        names = ("predictive", "pixel", "motion")
        maps = {s: rng.gamma(2.0, 1.0, (6, 8)).astype(np.float32) for s in names}
        maps["pixel"][rng.integers(6), rng.integers(8)] = np.nan  # a masked cell
        cal = Calibration(
            streams={
                s: StreamStats(
                    float(rng.uniform(1, 4)), float(rng.uniform(0.2, 2)), 40, float(rng.uniform(0.05, 1))
                )
                for s in names
            },
            rule="max",
        )
        fusion = CameraFusion(f"cam-{trial}", cal, None, smoothing=1)
        raw = {s: reduce_map(m) for s, m in maps.items()}
        fused = fusion.update(raw, None, float(trial))
        e = evidence_map(maps, fused.weights, fusion.cell_stats(), rule=fused.rule)
        assert e is not None
        peak = locate_peak(e)
        assert peak is not None
        if fused.raw_fused <= 0:
            continue  # nothing above normal: the tie-break places the peak
        leader = max(fused.contributions, key=fused.contributions.__getitem__)
        assert peak.evidence == pytest.approx(fused.raw_fused)
        assert peak.cell == np.unravel_index(np.nanargmax(maps[leader]), maps[leader].shape)
        located += 1
    assert located > 25  # most trials have a stream above normal


def test_peak_box_and_zone() -> None:
    e = np.zeros((4, 4))
    e[1, 2], e[1, 3], e[2, 2] = 8.0, 5.0, 4.5  # a region of three cells around the peak at (1, 2)
    e[3, 0] = 4.5  # high too, but not connected to the peak: not in its box
    zones = ViewZones([Zone("right", tuple(rect(0.5, 0, 1, 0.5)))])
    loc = locate_peak(e, zones)
    assert loc is not None
    assert loc.cell == (1, 2)
    assert loc.grid == (4, 4)
    assert loc.box == (0.5, 0.25, 1.0, 0.75)
    assert loc.zones == ("right",)
    assert loc.zone == "right"
    assert loc.evidence == 8.0
    assert loc.pixel_box(320, 240) == (160, 60, 320, 180)
    assert half_level(e) == pytest.approx(4.0)


def test_peak_ties_go_to_the_tiebreak_then_row_order() -> None:
    flat = np.zeros((2, 2))
    tb = np.array([[-3.0, -1.0], [-2.0, -5.0]])
    loc = locate_peak(flat, None, tb)
    assert loc is not None
    assert loc.cell == (0, 1)
    assert locate_peak(flat).cell == (0, 0)  # type: ignore[union-attr]
    assert locate_peak(np.full((2, 2), np.nan)) is None
    # A NaN (masked) cell is never the peak.
    masked = np.array([[np.nan, 1.0]])
    assert locate_peak(masked).cell == (0, 1)  # type: ignore[union-attr]


def test_pixel_box_is_never_empty_and_stays_in_the_frame() -> None:
    loc = PeakLocation(cell=(0, 0), grid=(3, 3), box=(1 / 3, 1 / 3, 2 / 3, 2 / 3))
    assert loc.pixel_box(240, 240) == (80, 80, 160, 160)
    thin = PeakLocation(cell=(0, 0), grid=(1, 1), box=(0.999, 0.999, 1.0, 1.0))
    x0, y0, x1, y1 = thin.pixel_box(10, 10)
    assert 0 <= x0 < x1 <= 10
    assert 0 <= y0 < y1 <= 10
