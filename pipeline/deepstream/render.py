"""DeepStream config files, generated from the typed config plus the engine manifests into a run directory.

Three GLib key files (DeepStream parses them with ``GKeyFile``, so a comment must sit on its own line: an
inline ``# note`` becomes part of the value, or breaks booleans and doubles; none are written here):

* ``config_preprocess.txt`` for ``nvdspreprocess`` with DeepStream's stock 3D sequence library
  (``libnvds_custom_sequence_preprocess.so``): it scales each camera's frame to the backbone's H x W,
  normalises it, accumulates T frames per camera and emits ``(N, 3, T, H, W)`` float32 (NCTHW) tensors
  named ``clip`` that nvinfer takes as its input (``input-tensor-from-meta=1``).
* ``config_infer_backbone.txt`` for ``nvinfer``: the manifest's TensorRT engine (and its ONNX model as the
  fallback nvinfer rebuilds from), ``network-type=100`` (no parser) and ``output-tensor-meta=1`` so the
  ``tokens`` and ``embedding`` outputs reach the probe as ``NvDsInferTensorMeta``.
* ``config_mux.txt`` for the new ``nvstreammux`` (only when ``deepstream.mux`` is ``new``).

Normalisation. The sequence library computes ``y = (x - offset_c) * scale_c`` on 0..255 pixels
(``channel-mean-offsets`` / ``channel-scale-factors``). The model wants ``(x / 255 - mean_c) / std_c``
= ``(x - 255 * mean_c) * 1 / (255 * std_c)``, so ``offset_c = 255 * mean_c`` and
``scale_c = 1 / (255 * std_c)``.

Clip timing. The library keeps every ``subsample + 1``-th frame of a camera, emits a clip once it holds T
of them, then slides by ``stride`` kept frames. The CPU graph's clip ``k`` holds frames
``k*hop + i*frame_stride`` (i < T); the two agree with ``subsample = frame_stride - 1`` and
``stride = clip_hop / frame_stride`` (so ``clip_hop`` must be a multiple of ``frame_stride``).

Layout. The stock library writes NCTHW only, so the backbone must be built with
``zsad build-engines --input-layout NCTHW`` (the manifest records it); a manifest in NTCHW is refused
unless ``deepstream.preprocess_lib`` names a custom library that writes that layout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.config import ZsadConfig
from engines.manifest import Manifest

__all__ = [
    "BACKBONE_UNIQUE_ID",
    "DEEPSTREAM_ROOT",
    "SEQUENCE_PREPROCESS_FUNCTION",
    "SEQUENCE_PREPROCESS_LIB",
    "STOCK_LIB_LAYOUT",
    "ClipGeometry",
    "KeyFile",
    "LayoutMismatch",
    "RenderError",
    "RenderedConfigs",
    "backbone_geometry",
    "batch_size",
    "normalisation",
    "render_all",
    "render_mux",
    "render_nvinfer",
    "render_preprocess",
    "sequence_params",
]

log = logging.getLogger(__name__)

DEEPSTREAM_ROOT = "/opt/nvidia/deepstream/deepstream-7.1"
SEQUENCE_PREPROCESS_LIB = f"{DEEPSTREAM_ROOT}/lib/libnvds_custom_sequence_preprocess.so"
SEQUENCE_PREPROCESS_FUNCTION = "CustomSequenceTensorPreparation"
STOCK_LIB_LAYOUT = "NCTHW"
#: nvinfer ``gie-unique-id`` of the backbone; nvdspreprocess ``target-unique-ids`` must equal it.
BACKBONE_UNIQUE_ID = 1
#: nvinfer ``network-mode``: 0 FP32, 1 INT8, 2 FP16.
_NETWORK_MODE = {"fp32": 0, "fp16": 2}

PREPROCESS_FILE = "config_preprocess.txt"
NVINFER_FILE = "config_infer_backbone.txt"
MUX_FILE = "config_mux.txt"

Value = int | float | bool | str | Sequence[int] | Sequence[float] | Sequence[str]


class RenderError(ValueError):
    """The config and manifests cannot make a valid DeepStream config; the message names the field and why."""


class LayoutMismatch(RenderError):
    """The backbone's input layout is not the one the preprocess library produces."""


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
# Pure pieces
# --------------------------------------------------------------------------------------------------


def normalisation(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(channel-scale-factors, channel-mean-offsets)`` for ``(x / 255 - mean) / std`` on 0..255 input."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise RenderError(f"mean and std need 3 values with std > 0, got {tuple(mean)} and {tuple(std)}")
    scales = tuple(1.0 / (255.0 * s) for s in std)
    offsets = tuple(255.0 * m for m in mean)
    return scales, offsets  # type: ignore[return-value]


def sequence_params(frame_stride: int, clip_hop: int) -> tuple[int, int]:
    """``(stride, subsample)`` of the sequence library that reproduce the CPU graph's clip grid."""
    if frame_stride < 1 or clip_hop < 1:
        raise RenderError(f"frame_stride and clip_hop must be >= 1, got {frame_stride} and {clip_hop}")
    if clip_hop % frame_stride:
        raise RenderError(
            f"model.preprocess.clip_hop {clip_hop} is not a multiple of frame_stride {frame_stride}: "
            "nvdspreprocess's sequence library slides its window by whole kept frames "
            "(stride x (subsample + 1) source frames); choose clip_hop as a multiple of frame_stride"
        )
    return clip_hop // frame_stride, frame_stride - 1


@dataclass(frozen=True)
class ClipGeometry:
    """The preprocess tensor: ``batch`` clips of ``frames`` x 3 x ``height`` x ``width`` in ``layout``."""

    batch: int
    frames: int
    height: int
    width: int
    layout: str
    channels: int = 3

    def network_input_shape(self) -> tuple[int, int, int, int, int]:
        """``N;C;T;H;W`` (NCTHW) or ``N;T;C;H;W`` (NTCHW), the value of ``network-input-shape``."""
        if self.layout == "NCTHW":
            return (self.batch, self.channels, self.frames, self.height, self.width)
        if self.layout == "NTCHW":
            return (self.batch, self.frames, self.channels, self.height, self.width)
        raise LayoutMismatch(f"unknown clip layout {self.layout!r}; expected NCTHW or NTCHW")


def backbone_geometry(backbone: Manifest, batch: int, preprocess_lib: str | None = None) -> ClipGeometry:
    """The clip tensor nvdspreprocess must produce for ``backbone``; refuses a layout the library can't make.

    Raises:
        LayoutMismatch: the manifest's input layout is not NCTHW and no custom library is configured, or
            the manifest's input shape does not spell out its own layout.
    """
    if backbone.component != "backbone":
        raise RenderError(f"{backbone.path}: expected the backbone manifest, got {backbone.component!r}")
    layout = backbone.input_layout
    if preprocess_lib is None and layout != STOCK_LIB_LAYOUT:
        raise LayoutMismatch(
            f"{backbone.path}: options.input_layout: the backbone takes {layout} but nvdspreprocess's stock "
            f"sequence library produces {STOCK_LIB_LAYOUT} (N, 3, T, H, W); rebuild the engines with "
            "`zsad build-engines --backend tensorrt --input-layout NCTHW`, or set deepstream.preprocess_lib "
            f"to a library that writes {layout}"
        )
    if not backbone.inputs:
        raise RenderError(f"{backbone.path}: inputs: the backbone manifest lists no input")
    spec = backbone.inputs[0]
    if spec.layout != layout or len(spec.shape) != 5:
        raise LayoutMismatch(
            f"{backbone.path}: inputs[0]: {spec.name} has layout {spec.layout} and shape {list(spec.shape)}, "
            f"which does not match options.input_layout {layout}"
        )
    dims = dict(zip(spec.layout, spec.shape, strict=True))
    if dims["C"] != 3:
        raise RenderError(
            f"{backbone.path}: inputs[0]: {spec.name} has {dims['C']} channels, expected 3 (RGB)"
        )
    geometry = ClipGeometry(batch=batch, frames=dims["T"], height=dims["H"], width=dims["W"], layout=layout)
    if geometry.network_input_shape()[1:] != tuple(spec.shape[1:]):
        raise LayoutMismatch(
            f"{backbone.path}: rendered shape {geometry.network_input_shape()} disagrees with {spec.name} "
            f"{list(spec.shape)}"
        )
    return geometry


def batch_size(cfg: ZsadConfig, backbone: Manifest) -> int:
    """Clips per nvinfer call: one per enabled camera, within the engine's batch profile."""
    n = len(cfg.enabled_cameras())
    if n < 1:
        raise RenderError("cameras: the DeepStream graph needs at least one enabled camera")
    trt = backbone.tensorrt
    if trt is not None:
        if n > trt.max_batch:
            raise RenderError(
                f"{backbone.path}: tensorrt.max_batch: {n} cameras need batches of {n} but the engine's "
                f"profile stops at {trt.max_batch}; rebuild with `zsad build-engines --max-batch {n}`"
            )
        if trt.min_batch > 1:
            raise RenderError(
                f"{backbone.path}: tensorrt.min_batch is {trt.min_batch}; the sequence library emits partial "
                "batches (cameras whose clip is not ready yet), so the profile must start at 1"
            )
    return n


def _fp32_layers(names: Iterable[str]) -> list[str]:
    """``layer:fp32:gpu`` items for nvinfer ``layer-device-precision``; unparseable names are skipped."""
    items = []
    for name in names:
        if not name or any(c in name for c in ":;#\n\r") or name != name.strip():
            log.warning("layer %r cannot be pinned through nvinfer layer-device-precision; skipped", name)
            continue
        items.append(f"{name}:fp32:gpu")
    return items


def _absolute(path: Path) -> str:
    return str(path if path.is_absolute() else Path.cwd() / path)


# --------------------------------------------------------------------------------------------------
# The three files
# --------------------------------------------------------------------------------------------------


def render_nvinfer(cfg: ZsadConfig, backbone: Manifest, batch: int) -> KeyFile:
    """nvinfer ``[property]`` for the backbone: tensors in from nvdspreprocess, tensors out as meta."""
    ds = cfg.deepstream
    trt, onnx = backbone.tensorrt, backbone.onnx
    if trt is None and onnx is None:
        raise RenderError(f"{backbone.path}: the backbone manifest names neither a TensorRT engine nor ONNX")
    props: list[tuple[str, Value]] = [
        ("gpu-id", ds.gpu_id),
        ("gie-unique-id", BACKBONE_UNIQUE_ID),
        ("process-mode", 1),
        ("network-type", 100),
        ("network-mode", _NETWORK_MODE[trt.precision] if trt is not None else _NETWORK_MODE["fp16"]),
        ("batch-size", batch),
        ("input-tensor-from-meta", 1),
        ("output-tensor-meta", 1),
        ("output-blob-names", [o.name for o in backbone.outputs]),
    ]
    if onnx is not None:
        props.append(("onnx-file", _absolute(backbone.resolve(onnx.path))))
    if trt is not None:
        props.append(("model-engine-file", _absolute(backbone.resolve(trt.path))))
        props.append(("workspace-size", trt.workspace_mb))
        # Only used if nvinfer has to rebuild from ONNX: keep the same layers in FP32 as our own build.
        pinned = _fp32_layers(trt.fp32_layers)
        if pinned:
            props.append(("layer-device-precision", pinned))
    return KeyFile.of([("property", props)])


def render_preprocess(cfg: ZsadConfig, backbone: Manifest, batch: int) -> KeyFile:
    """nvdspreprocess with the 3D sequence library: full-frame clips of every camera, batched."""
    ds = cfg.deepstream
    geometry = backbone_geometry(backbone, batch, ds.preprocess_lib)
    pre = backbone.preprocessing
    if pre.clip_len != geometry.frames:
        raise RenderError(
            f"{backbone.path}: preprocessing.clip_len {pre.clip_len} differs from the input's "
            f"T {geometry.frames}"
        )
    if (pre.image_height, pre.image_width) != (geometry.height, geometry.width):
        raise RenderError(
            f"{backbone.path}: preprocessing size {pre.image_height}x{pre.image_width} differs from "
            f"the input's {geometry.height}x{geometry.width}"
        )
    stride, subsample = sequence_params(pre.frame_stride, pre.clip_hop)
    scales, offsets = normalisation(pre.mean, pre.std)
    lib = ds.preprocess_lib or SEQUENCE_PREPROCESS_LIB
    props: list[tuple[str, Value]] = [
        ("enable", 1),
        ("target-unique-ids", BACKBONE_UNIQUE_ID),
        ("gpu-id", ds.gpu_id),
        ("process-on-frame", 1),
        ("network-input-order", 2),
        ("network-input-shape", geometry.network_input_shape()),
        ("network-color-format", 0),
        ("tensor-data-type", 0),
        ("tensor-name", backbone.inputs[0].name),
        ("processing-width", geometry.width),
        ("processing-height", geometry.height),
        ("maintain-aspect-ratio", 0),
        ("symmetric-padding", 0),
        ("scaling-buf-pool-size", 6),
        ("tensor-buf-pool-size", ds.tensor_pool_size),
        ("scaling-pool-memory-type", 0),
        ("scaling-pool-compute-hw", 0),
        ("scaling-filter", 1),
        ("custom-lib-path", lib),
        ("custom-tensor-preparation-function", SEQUENCE_PREPROCESS_FUNCTION),
    ]
    user: list[tuple[str, Value]] = [
        ("channel-scale-factors", scales),
        ("channel-mean-offsets", offsets),
        ("stride", stride),
        ("subsample", subsample),
    ]
    group: list[tuple[str, Value]] = [("src-ids", list(range(batch))), ("process-on-roi", 0)]
    return KeyFile.of([("property", props), ("user-configs", user), ("group-0", group)])


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
    """Paths of the files written by :func:`render_all` (``mux`` is None with the legacy mux)."""

    directory: Path
    batch: int
    preprocess: Path
    nvinfer: Path
    mux: Path | None


def _write(path: Path, keyfile: KeyFile) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(keyfile.text(), encoding="utf-8")
    tmp.replace(path)
    return path


def render_all(cfg: ZsadConfig, backbone: Manifest, run_dir: str | Path) -> RenderedConfigs:
    """Write every DeepStream config file of ``cfg`` into ``run_dir`` (created); return their paths."""
    directory = Path(run_dir)
    batch = batch_size(cfg, backbone)
    preprocess = render_preprocess(cfg, backbone, batch)
    nvinfer = render_nvinfer(cfg, backbone, batch)
    mux = render_mux(cfg, batch) if cfg.deepstream.mux == "new" else None
    directory.mkdir(parents=True, exist_ok=True)
    return RenderedConfigs(
        directory=directory,
        batch=batch,
        preprocess=_write(directory / PREPROCESS_FILE, preprocess),
        nvinfer=_write(directory / NVINFER_FILE, nvinfer),
        mux=_write(directory / MUX_FILE, mux) if mux is not None else None,
    )
