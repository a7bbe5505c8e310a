"""DeepStream config files, generated from the typed config into a run directory.

Only the new ``nvstreammux`` reads a config file (``config_mux.txt``, with ``deepstream.mux: new``); the
legacy mux takes properties, set by :mod:`pipeline.deepstream.graph`. The file is a GLib key file:
DeepStream parses it with ``GKeyFile``, so a comment must sit on its own line (an inline ``# note`` becomes
part of the value, or breaks booleans and doubles); none are written here, and a value containing ``#`` or
``;`` is refused.

There is no nvdspreprocess or nvinfer config any more: pyds 1.2.0 (DeepStream 7.1) cannot read
nvdspreprocess's batch meta, so the backbone runs through the engines backend in the score probe's clip path
(docs/deepstream.md, "Why not nvdspreprocess + nvinfer").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.config import ZsadConfig

__all__ = [
    "KeyFile",
    "RenderError",
    "RenderedConfigs",
    "format_value",
    "render_all",
    "render_mux",
]

MUX_FILE = "config_mux.txt"

Value = int | float | bool | str | Sequence[int] | Sequence[float] | Sequence[str]


class RenderError(ValueError):
    """The config cannot make a valid DeepStream config; the message names the field and why."""


# --------------------------------------------------------------------------------------------------
# Key files
# --------------------------------------------------------------------------------------------------


def _scalar(key: str, value: int | float | bool | str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.9g}"
    text = str(value)
    bad = [c for c in ("#", ";", "\n", "\r") if c in text]
    if bad or text != text.strip() or not text:
        raise RenderError(f"key {key}: value {text!r} is empty, padded or contains {bad} (not allowed)")
    return text


def format_value(key: str, value: Value) -> str:
    """One key-file value: ints as is, floats with 9 significant digits, booleans as 1/0, lists ';'-joined."""
    if isinstance(value, str | int | float | bool):
        return _scalar(key, value)
    items = [_scalar(key, v) for v in value]
    if not items:
        raise RenderError(f"key {key}: an empty list")
    return ";".join(items)


@dataclass(frozen=True)
class KeyFile:
    """An ordered GLib key file: ``[(group, [(key, value text)])]``. No comments, no inline comments."""

    groups: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]

    @classmethod
    def of(cls, groups: Iterable[tuple[str, Iterable[tuple[str, Value]]]]) -> KeyFile:
        out = []
        for group, entries in groups:
            rendered = tuple((key, format_value(key, value)) for key, value in entries)
            keys = [k for k, _ in rendered]
            if len(set(keys)) != len(keys):
                raise RenderError(f"group [{group}] repeats a key: {keys}")
            out.append((group, rendered))
        return cls(tuple(out))

    def text(self) -> str:
        lines: list[str] = []
        for group, entries in self.groups:
            if lines:
                lines.append("")
            lines.append(f"[{group}]")
            lines.extend(f"{key}={value}" for key, value in entries)
        return "\n".join(lines) + "\n"

    def get(self, group: str, key: str) -> str:
        for g, entries in self.groups:
            if g == group:
                for k, v in entries:
                    if k == key:
                        return v
        raise KeyError(f"[{group}] {key}")


# --------------------------------------------------------------------------------------------------
# The mux file
# --------------------------------------------------------------------------------------------------


def render_mux(cfg: ZsadConfig, batch: int) -> KeyFile:
    """The new nvstreammux's config file (``config-file-path``); the legacy mux takes properties instead."""
    ds = cfg.deepstream
    if ds.mux_min_fps > ds.mux_max_fps:
        raise RenderError(
            f"deepstream.mux_min_fps {ds.mux_min_fps} must not exceed deepstream.mux_max_fps {ds.mux_max_fps}"
        )
    props: list[tuple[str, Value]] = [
        ("algorithm-type", 1),
        ("batch-size", batch),
        ("overall-max-fps-n", ds.mux_max_fps),
        ("overall-max-fps-d", 1),
        ("overall-min-fps-n", ds.mux_min_fps),
        ("overall-min-fps-d", 1),
        ("max-same-source-frames", 1),
        ("adaptive-batching", 1),
        ("max-fps-control", 0),
    ]
    return KeyFile.of([("property", props)])


@dataclass(frozen=True)
class RenderedConfigs:
    """What :func:`render_all` wrote: the camera count it was rendered for and the new mux's config file
    (None with the legacy mux, which takes properties)."""

    directory: Path
    batch: int
    mux: Path | None


def _write(path: Path, keyfile: KeyFile) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(keyfile.text(), encoding="utf-8")
    tmp.replace(path)
    return path


def render_all(cfg: ZsadConfig, run_dir: str | Path) -> RenderedConfigs:
    """Write every DeepStream config file of ``cfg`` into ``run_dir`` (created); return their paths."""
    directory = Path(run_dir)
    batch = len(cfg.enabled_cameras())
    if batch < 1:
        raise RenderError("cameras: the DeepStream graph needs at least one enabled camera")
    mux = render_mux(cfg, batch) if cfg.deepstream.mux == "new" else None
    directory.mkdir(parents=True, exist_ok=True)
    return RenderedConfigs(
        directory=directory,
        batch=batch,
        mux=_write(directory / MUX_FILE, mux) if mux is not None else None,
    )
