"""Feedback learning: an alert's evidence, its footprint and levels, and the versioned store
(plugins/learned.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plugins.learned import (
    LEARN_MARGIN,
    EventEvidence,
    LearnedError,
    LearnedStore,
    combine_levels,
    footprint,
    levels_from_evidence,
)
from plugins.zones import CellFilter

STATS = {"motion": (0.2, 0.05), "pixel": (0.2, 0.05)}
WEIGHTS = {"motion": 0.5, "pixel": 0.5}


def _evidence(alert_id: str = "a1", hot: tuple[int, int] = (1, 1), value: float = 1.0) -> EventEvidence:
    """A 4 x 5 grid at the normal level 0.1 with one hot cell (a flag) during the alert."""
    maxima = np.full((4, 5), 0.1, np.float32)
    maxima[hot] = value
    maps = {"motion": maxima, "pixel": maxima.copy()}
    return EventEvidence(
        camera="cam",
        alert_id=alert_id,
        peak_time=12.5,
        peak={k: v * 0.9 for k, v in maps.items()},
        maxima=maps,
        weights=WEIGHTS,
        stats=STATS,
        clips=5,
    )


def test_evidence_round_trips_through_npz(tmp_path: Path) -> None:
    ev = _evidence()
    ev.maxima["motion"][0, 0] = np.nan  # a masked cell
    ev.save(tmp_path / "a1.npz")
    back = EventEvidence.load(tmp_path / "a1.npz")
    assert (back.camera, back.alert_id, back.peak_time, back.clips) == ("cam", "a1", 12.5, 5)
    assert back.weights == WEIGHTS
    assert back.stats == STATS
    np.testing.assert_array_equal(back.maxima["motion"], ev.maxima["motion"])
    np.testing.assert_array_equal(back.peak["pixel"], ev.peak["pixel"])
    assert back.rule == "mean"
    uncal = EventEvidence("cam", "a2", 0.0, {}, {"motion": np.ones((2, 2), np.float32)}, stats=None)
    uncal.save(tmp_path / "a2.npz")
    assert EventEvidence.load(tmp_path / "a2.npz").stats is None
    ev.rule = "max"
    ev.save(tmp_path / "a3.npz")
    assert EventEvidence.load(tmp_path / "a3.npz").rule == "max"


def test_unreadable_evidence_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(LearnedError, match=r"bad\.npz"):
        EventEvidence.load(bad)
    np.savez(tmp_path / "nometa.npz", x=np.zeros(1))
    with pytest.raises(LearnedError, match="malformed evidence"):
        EventEvidence.load(tmp_path / "nometa.npz")


def test_footprint_is_the_hot_region_grown_by_one_cell() -> None:
    cells = footprint(_evidence(hot=(1, 1)))
    assert cells is not None
    assert np.argwhere(cells).tolist() == [[r, c] for r in range(3) for c in range(3)]
    corner = footprint(_evidence(hot=(3, 4)), grow=0)
    assert corner is not None
    assert np.argwhere(corner).tolist() == [[3, 4]]
    quiet = _evidence(value=0.1)  # nothing above normal anywhere: nothing to learn
    assert footprint(quiet) is None
    with pytest.raises(LearnedError, match="no usable map"):
        levels_from_evidence(quiet)


def test_levels_are_the_event_plus_a_margin_on_its_footprint_only() -> None:
    levels = levels_from_evidence(_evidence(hot=(1, 1), value=1.0))
    assert set(levels) == {"motion", "pixel"}
    m = levels["motion"]
    assert m[1, 1] == pytest.approx(1.0 * (1 + LEARN_MARGIN))
    assert m[0, 0] == pytest.approx(0.1 * (1 + LEARN_MARGIN))  # grown cell: its own level there
    assert np.isneginf(m[3, 4])  # far away: nothing learned
    # The same magnitude at the same place is now normal; stronger there, or anything elsewhere, is not.
    f = CellFilter(levels=levels, floors={"motion": 0.2, "pixel": 0.2})
    again = np.full((4, 5), 0.1, np.float32)
    again[1, 1] = 1.1
    elsewhere = again.copy()
    elsewhere[3, 4] = 1.0
    stronger = again.copy()
    stronger[1, 1] = 2.0
    for maps, top in ((again, 0.2), (elsewhere, 1.0), (stronger, 2.0)):
        out = f.apply({"motion": maps})
        assert out is not None
        assert float(np.nanmax(out["motion"])) == pytest.approx(top)


def test_combining_is_a_per_cell_maximum_in_any_order() -> None:
    a = {"motion": np.array([[1.0, -np.inf]], np.float32)}
    b = {"motion": np.array([[0.5, 2.0]], np.float32), "pixel": np.array([[3.0, 3.0]], np.float32)}
    ab, ba = combine_levels([a, b]), combine_levels([b, a])
    assert ab is not None
    assert ba is not None
    for name in ("motion", "pixel"):
        np.testing.assert_array_equal(ab[name], ba[name])
    assert ab["motion"].tolist() == [[1.0, 2.0]]
    assert combine_levels([]) is None
    # After an engine change the newest grid counts and the old grid's levels are left out, whichever
    # grid came first.
    other_grid = {"motion": np.zeros((3, 3), np.float32)}
    assert combine_levels([a, other_grid])["motion"].shape == (3, 3)  # type: ignore[index]
    assert combine_levels([other_grid, a])["motion"].shape == (1, 2)  # type: ignore[index]


def test_store_versions_every_change_and_forgetting_restores(tmp_path: Path) -> None:
    store = LearnedStore(tmp_path / "gate-1.learned", "cam")
    empty = store.state()
    assert (empty.version, empty.levels, empty.alerts) == (0, None, ())
    one = store.learn("a1", levels_from_evidence(_evidence("a1", hot=(1, 1))))
    two = store.learn("a2", levels_from_evidence(_evidence("a2", hot=(3, 4), value=2.0)))
    assert (one.version, two.version) == (1, 2)
    assert two.alerts == ("a1", "a2")
    assert two.levels is not None
    assert two.levels["motion"][3, 4] == pytest.approx(2.5)
    # Forgetting the last alert gives back exactly the version before it, as a new version.
    back = store.forget("a2")
    assert back is not None
    assert back.version == 3
    assert back.alerts == ("a1",)
    assert one.levels is not None
    assert back.levels is not None
    for name in one.levels:
        np.testing.assert_array_equal(back.levels[name], one.levels[name])
    assert store.forget("a2") is None  # not learned (any more): nothing changes
    # Forgetting the first keeps the second; forgetting all leaves no level at all.
    store.learn("a2", levels_from_evidence(_evidence("a2", hot=(3, 4), value=2.0)))
    only2 = store.forget("a1")
    assert only2 is not None
    assert only2.alerts == ("a2",)
    assert only2.levels is not None
    assert np.isneginf(only2.levels["motion"][1, 1])
    none = store.forget("a2")
    assert none is not None
    assert none.alerts == ()
    assert none.levels is None
    # Every version is a file, listed in the index with what changed.
    history = store.history()
    assert [(v["version"], v["action"], v["alert_id"]) for v in history] == [
        (1, "learn", "a1"),
        (2, "learn", "a2"),
        (3, "forget", "a2"),
        (4, "learn", "a2"),
        (5, "forget", "a1"),
        (6, "forget", "a2"),
    ]
    assert all((store.directory / v["file"]).is_file() for v in history)
    assert not list(store.directory.glob(".*"))  # no temporary file left behind
    # A fresh store object reads the same state from disk.
    assert LearnedStore(store.directory, "cam").state().version == 6


def test_store_refuses_a_bad_index_and_another_cameras_folder(tmp_path: Path) -> None:
    store = LearnedStore(tmp_path / "x.learned", "cam")
    store.learn("a1", levels_from_evidence(_evidence()))
    with pytest.raises(LearnedError, match="holds camera 'cam'"):
        LearnedStore(store.directory, "other").state()
    store.index_path.write_text("{not json")
    with pytest.raises(LearnedError, match=r"index\.json: cannot read"):
        store.state()
    store.index_path.write_text(json.dumps({"format": 1, "camera": "cam", "current": 9, "versions": []}))
    with pytest.raises(LearnedError, match="current version 9 is not listed"):
        store.state()
    with pytest.raises(LearnedError, match="not a plain id"):
        LearnedStore(tmp_path / "y", "cam").learn("../escape", {})
    with pytest.raises(LearnedError, match="not a plain id"):  # $ took a final newline: a file "a1\n.npz"
        LearnedStore(tmp_path / "y", "cam").learn("a1\n", {})
