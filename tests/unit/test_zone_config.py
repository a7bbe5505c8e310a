"""Zones, masks and alert zones in the config, and the per-camera overrides file: validation with file, line
and field, merging over the site config, atomic writes (core/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import (
    ConfigError,
    ZoneSettings,
    load_config,
    load_zone_overrides,
    parse_config,
    validate_zone_settings,
    write_zone_overrides,
    zone_overrides_path,
)

SITE = """\
version: 1
cameras:
  - id: yard
    uri: file:///videos/yard.mp4
    zones:
      - name: road            # beyond the fence
        points: [[0, 0], [1, 0], [1, 0.25], [0, 0.25]]
      - name: tv
        points: [[0.6, 0.6], [0.8, 0.6], [0.8, 0.8]]
        alert: false
    mask:
      - [[0.9, 0.9], [1, 0.9], [1, 1]]
    alert_zones: [road]
"""


def _problems(text: str, path: str = "site.yaml") -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return info.value.problems


def test_zones_mask_and_alert_zones_reach_the_camera_settings() -> None:
    cam = parse_config(SITE).camera_settings("yard")
    z = cam.zoning
    assert [zone.name for zone in z.zones] == ["road", "tv"]
    assert z.zones[1].alert is False
    assert z.zones[0].points[2] == (1.0, 0.25)
    assert z.mask == [[(0.9, 0.9), (1.0, 0.9), (1.0, 1.0)]]
    assert z.alert_zones == ["road"]
    bare = parse_config("cameras: [{id: b, uri: 'file:///b.mp4'}]").camera_settings("b")
    assert bare.zoning == ZoneSettings()
    assert bare.zoning.empty


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "needle"),
    [
        (
            "[1, 0.25], [0, 0.25]]",
            "[1, 1.25], [0, 0.25]]",
            7,
            "cameras[0].zones[0].points[2][1]",
            "less than",
        ),
        ("[1, 0.25], [0, 0.25]]", "[-0.1, 0.25]]", 7, "cameras[0].zones[0].points[2][0]", "greater than"),
        ("[[0, 0], [1, 0], [1, 0.25], [0, 0.25]]", "[[0, 0], [1, 0]]", 7, "zones[0].points", "at least 3"),
        ("[[0, 0], [1, 0], [1, 0.25], [0, 0.25]]", "[[0, 0], [0.5, 0.5], [1, 1]]", 7, "points", "no area"),
        ("[[0, 0], [1, 0], [1, 0.25], [0, 0.25]]", "[[0, 0], [1, 1], [1, 0], [0, 1]]", 7, "points", "cross"),
        ("name: tv", "name: road", 5, "cameras[0].zones", "'road' appears more than once"),
        ("name: tv", "name: none", 8, "cameras[0].zones[1].name", "reserved"),
        ("name: tv", "name: 'a b'", 8, "cameras[0].zones[1].name", "must match"),
        ("name: tv", 'name: "tv\\n"', 8, "cameras[0].zones[1].name", "must match"),  # $ took a final newline
        ("alert: false", "alert: false\n        colour: red", 11, "zones[1].colour", "unknown key"),
        ("alert_zones: [road]", "alert_zones: [gate]", 13, "cameras[0].alert_zones", "unknown zone 'gate'"),
        ("alert_zones: [road]", "alert_zones: [tv]", 13, "cameras[0].alert_zones", "has alert: false"),
        ("alert_zones: [road]", "alert_zones: [road, road]", 13, "alert_zones", "more than once"),
        ("[[0.9, 0.9], [1, 0.9], [1, 1]]", "[[0.9, 0.9], [1, 0.9]]", 12, "cameras[0].mask[0]", "at least 3"),
    ],
)
def test_bad_zones_name_file_line_field(old: str, new: str, line: int, field: str, needle: str) -> None:
    assert old in SITE
    problems = _problems(SITE.replace(old, new, 1))
    assert any(ln == line and field in f and needle in msg for ln, f, msg in problems), problems


def test_alert_zones_without_zones_and_a_broken_zone_list_report_once() -> None:
    text = "cameras: [{id: a, uri: 'file:///a.mp4', alert_zones: [x]}]"
    assert [(f, "unknown zone 'x'" in m) for _, f, m in _problems(text)] == [("cameras[0].alert_zones", True)]
    # With the zones themselves invalid, alert_zones is not also reported as naming unknown zones.
    broken = SITE.replace("[1, 0.25], [0, 0.25]]", "[1, 2], [0, 0.25]]", 1)
    assert not any("alert_zones" in f for _, f, _ in _problems(broken))


def test_mqtt_topic_placeholders() -> None:
    ok = parse_config("sinks: [{kind: mqtt, topic: 'zsad/{camera}/{zone}/alert'}]")
    assert ok.sinks[0].topic == "zsad/{camera}/{zone}/alert"  # type: ignore[union-attr]
    for topic, needle in (
        ("zsad/+/x", "wildcards"),
        ("zsad/#", "wildcards"),
        ("zsad/{site}", "placeholders"),
    ):
        problems = _problems(f"sinks: [{{kind: mqtt, topic: '{topic}'}}]")
        assert any(f == "sinks[0].topic" and needle in m for _, f, m in problems), problems


# -- the overrides file ----------------------------------------------------------------------------------


def _base() -> ZoneSettings:
    return parse_config(SITE).camera_settings("yard").zoning


def test_overrides_path_is_per_camera_under_the_output_folder(tmp_path: Path) -> None:
    assert zone_overrides_path(tmp_path, "yard") == tmp_path / "overrides" / "yard.yaml"
    with pytest.raises(ValueError, match="camera id"):
        zone_overrides_path(tmp_path, "../etc")


def test_missing_overrides_file_means_none(tmp_path: Path) -> None:
    assert load_zone_overrides(tmp_path / "nope.yaml", _base()) is None


def test_keys_in_the_overrides_replace_the_configs(tmp_path: Path) -> None:
    path = tmp_path / "yard.yaml"
    path.write_text("# edited on the page\nmask:\n  - [[0, 0], [0.5, 0], [0.5, 0.5]]\nalert_zones: null\n")
    loaded = load_zone_overrides(path, _base())
    assert loaded is not None
    merged, keys = loaded
    assert keys == ["mask", "alert_zones"]
    assert [z.name for z in merged.zones] == ["road", "tv"]  # not in the file: the config's
    assert merged.mask == [[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5)]]
    assert merged.alert_zones is None  # present (null) in the file: replaces the config's restriction


def test_invalid_overrides_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "yard.yaml"
    path.write_text("zones:\n  - name: road\n    points: [[0, 0], [1, 0], [1, 7]]\n")
    with pytest.raises(ConfigError) as info:
        load_zone_overrides(path, _base())
    assert f"{path}:3: zones[0].points[2][1]" in str(info.value)
    # alert_zones of the config must still name a zone once the file replaces the zones.
    path.write_text("zones:\n  - name: gate\n    points: [[0, 0], [1, 0], [1, 1]]\n")
    with pytest.raises(ConfigError, match="unknown zone 'road'"):
        load_zone_overrides(path, _base())
    path.write_text("zones: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_zone_overrides(path, _base())
    path.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_zone_overrides(path, _base())
    path.write_text("masks: []\n")
    with pytest.raises(ConfigError, match="masks: unknown key"):
        load_zone_overrides(path, _base())


def test_validate_a_request_body_over_the_config() -> None:
    merged = validate_zone_settings({"alert_zones": None}, _base(), "body")
    assert merged.alert_zones is None
    assert len(merged.zones) == 2
    with pytest.raises(ConfigError) as info:
        validate_zone_settings({"zones": [{"name": "x", "points": [[0, 0]]}]}, _base(), "request body")
    assert str(info.value).startswith("request body")
    assert [f for _, f, _ in info.value.problems] == ["zones[0].points"]
    with pytest.raises(ConfigError, match="must be a mapping"):
        validate_zone_settings(["zones"], _base())


def test_written_overrides_read_back_and_the_site_yaml_is_untouched(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    cfg = load_config(site)
    new = validate_zone_settings(
        {"mask": [[[0, 0], [0.3, 0], [0.3, 0.3]]]}, cfg.camera_settings("yard").zoning
    )
    path = zone_overrides_path(tmp_path / "out", "yard")
    write_zone_overrides(path, {"mask": new.model_dump(mode="json")["mask"]}, "yard")
    text = path.read_text()
    assert text.startswith("# Zones and mask of camera yard")
    assert yaml.safe_load(text) == {"mask": [[[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]]]}
    assert load_zone_overrides(path, cfg.camera_settings("yard").zoning) == (new, ["mask"])
    assert site.read_text() == SITE  # comments and all
    assert [p.name for p in path.parent.iterdir()] == ["yard.yaml"]  # no temporary file left
    with pytest.raises(ValueError, match="not zone settings"):
        write_zone_overrides(path, {"masks": []}, "yard")
