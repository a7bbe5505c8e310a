"""The generated DeepStream config file (the new nvstreammux's): GLib key-file syntax, documented key names,
snapshots for 1, 4 and 16 cameras, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, ZsadConfig, parse_config
from pipeline.deepstream.render import KeyFile, RenderError, render_all, render_mux
from tests.fixtures.deepstream_fixtures import site_config
from tests.fixtures.snapshots import assert_snapshot

GLib = pytest.importorskip("gi.repository.GLib")

# The new nvstreammux's config keys (see shared/docs/deepstream-tensorrt.md section 1.3).
MUX_KEYS = {
    "algorithm-type", "batch-size", "overall-max-fps-n", "overall-max-fps-d", "overall-min-fps-n",
    "overall-min-fps-d", "max-same-source-frames", "adaptive-batching", "max-fps-control",
}  # fmt: skip


def parse_keyfile(path: Path) -> GLib.KeyFile:
    keyfile = GLib.KeyFile.new()
    keyfile.load_from_file(str(path), GLib.KeyFileFlags.NONE)
    return keyfile


def check_syntax(path: Path, allowed: dict[str, set[str]]) -> dict[str, dict[str, str]]:
    """Parse with GLib, check groups/keys against the documented names and values for comment text."""
    text = path.read_text()
    assert "#" not in text, f"{path.name} contains '#'"
    keyfile = parse_keyfile(path)
    groups = list(keyfile.get_groups()[0])
    assert set(groups) <= set(allowed), f"unexpected groups {set(groups) - set(allowed)}"
    values: dict[str, dict[str, str]] = {}
    for group in groups:
        keys = list(keyfile.get_keys(group)[0])
        unknown = set(keys) - allowed[group]
        assert not unknown, f"[{group}] has undocumented keys {unknown}"
        values[group] = {}
        for key in keys:
            value = keyfile.get_value(group, key)
            assert value, f"[{group}] {key} is empty"
            assert value == value.strip(), f"[{group}] {key}={value!r} is padded"
            # No key of the mux file takes a list: a ';' would be a stray comment or separator.
            assert ";" not in value, f"[{group}] {key}={value!r} contains ';'"
            values[group][key] = value
    return values


@pytest.mark.parametrize("n", [1, 4, 16])
def test_rendered_mux_config_parses_matches_docs_and_snapshots(tmp_path: Path, n: int) -> None:
    cfg = site_config(n, deepstream={"mux": "new"})
    rendered = render_all(cfg, tmp_path / "ds")
    assert rendered.batch == n
    assert rendered.mux is not None
    mux = check_syntax(rendered.mux, {"property": MUX_KEYS})["property"]
    assert_snapshot(f"deepstream/mux_{n}cam.txt", rendered.mux.read_text())
    assert int(mux["batch-size"]) == n  # the new mux batches every camera
    # nvdspreprocess and nvinfer are gone from the graph, and so are their files.
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["config_mux.txt"]


def test_legacy_mux_writes_no_file(tmp_path: Path) -> None:
    cfg = site_config(2)
    rendered = render_all(cfg, tmp_path)
    assert rendered.mux is None
    assert rendered.batch == 2
    assert list(tmp_path.iterdir()) == []


def test_no_cameras_is_refused() -> None:
    cfg = site_config(0)
    with pytest.raises(RenderError, match="at least one enabled camera"):
        render_all(cfg, "/nonexistent")


def test_values_with_comment_characters_are_refused() -> None:
    with pytest.raises(RenderError, match="contains"):
        KeyFile.of([("property", [("onnx-file", "/models/a#b.onnx")])])
    with pytest.raises(RenderError, match="contains"):
        KeyFile.of([("property", [("tensor-name", "clip;x")])])
    with pytest.raises(RenderError, match="repeats a key"):
        KeyFile.of([("property", [("a", 1), ("a", 2)])])


def test_inline_comment_would_corrupt_values(tmp_path: Path) -> None:
    """Why the renderer never writes inline comments: GLib keeps them in the value (doc finding 9)."""
    path = tmp_path / "bad.txt"
    path.write_text("[property]\ntensor-name=clip # the input\n")
    assert parse_keyfile(path).get_value("property", "tensor-name") == "clip # the input"


def test_mux_fps_bounds() -> None:
    cfg = site_config(2, deepstream={"mux": "new", "mux_min_fps": 30, "mux_max_fps": 10})
    with pytest.raises(RenderError, match="mux_min_fps 30"):
        render_mux(cfg, 2)


def test_deepstream_section_is_strict_and_bounded() -> None:
    with pytest.raises(ConfigError, match=r"deepstream\.mux"):
        parse_config("deepstream:\n  mux: fancy\n")
    with pytest.raises(ConfigError, match=r"deepstream\.batched_push_timeout_us"):
        parse_config("deepstream:\n  batched_push_timeout_us: 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config("deepstream:\n  output:\n    kind: file\n    codec: h265\n")
    # The nvdspreprocess settings went with nvdspreprocess.
    for gone in ("tensor_pool_size: 4", "preprocess_lib: /opt/lib.so"):
        with pytest.raises(ConfigError, match="unknown key"):
            parse_config(f"deepstream:\n  {gone}\n")
    cfg = parse_config("graph: deepstream\ndeepstream:\n  output: {kind: rtsp, rtsp_port: 8555}\n")
    assert cfg.deepstream.output.rtsp_port == 8555
    assert ZsadConfig().deepstream.mux == "legacy"
