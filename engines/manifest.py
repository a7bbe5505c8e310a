"""Engine manifests: the identity, I/O contract and preprocessing that travel with every engine.

``zsad build-engines`` writes one ``<component>.manifest.json`` per component next to its ONNX model,
TensorRT engine or ``.npy``/``.npz`` files. The pipeline loads a manifest, runs :func:`check_manifest`
against its own run config and device, and refuses to start on any mismatch with a
:class:`ManifestMismatch` that names the file and the field.

Paths inside a manifest are relative to the manifest's folder, so an engine folder can be copied
between machines as a whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from core.config import ModelConfig
from core.datafile import file_sha256, read_json
from engines.encoders import (
    APPEARANCE_COMPONENT,
    APPEARANCE_EMBEDDING,
    APPEARANCE_FEATURES,
    APPEARANCE_FRAMES,
    ENCODERS,
    appearance_spec,
    appearance_spec_sha256,
)
from plugins.preprocess import LAYOUTS
from plugins.streams import STREAMS

__all__ = [
    "COMPONENTS",
    "LAYOUTS",
    "ONNX_COMPONENTS",
    "SCHEMA_VERSION",
    "Expectation",
    "FileArtifact",
    "Manifest",
    "ManifestError",
    "ManifestMismatch",
    "OnnxArtifact",
    "ParityRecord",
    "Preprocessing",
    "TensorRTArtifact",
    "TensorSpec",
    "TextEmbeddings",
    "appearance_io",
    "appearance_preprocessing",
    "check_manifest",
    "check_tensorrt_device",
    "checkpoint_spec_mismatch",
    "component_io",
    "file_sha256",
    "load_manifest",
    "manifest_path",
    "preprocessing_from_spec",
    "save_manifest",
    "sm_count_mismatch",
    "spec_diff",
    "spec_sha256",
    "utc_now",
    "zsad_version",
]

SCHEMA_VERSION = 1
ONNX_COMPONENTS = ("backbone", "dpc_head", "semantic_head", APPEARANCE_COMPONENT)
COMPONENTS = (*ONNX_COMPONENTS, "stream_gate")
# Spec fields that are machine-local paths, not architecture: a Jetson may keep CLIP elsewhere, and a
# checkpoint already contains the pretrained weights it started from.
_LOCAL_SPEC_FIELDS = (("backbone", "pretrained"), ("semantic", "clip_text_model"))


class ManifestError(RuntimeError):
    """A manifest, or a file it names, is missing, unreadable or malformed. The message names the file."""


class ManifestMismatch(ManifestError):
    """A manifest does not fit the run config, the device or the files on disk. Names file and field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Frozen):
    """One named engine input or output. ``shape[0] == -1`` is the dynamic batch; the rest are static."""

    name: str = Field(..., min_length=1)
    shape: tuple[int, ...]
    dtype: Literal["float32"] = "float32"
    layout: str = Field(..., min_length=1, description="One letter a dimension, e.g. NTCHW.")

    @model_validator(mode="after")
    def _check(self) -> TensorSpec:
        if not self.shape or self.shape[0] != -1:
            raise ValueError(f"tensor {self.name}: dim 0 must be the dynamic batch (-1), got {self.shape}")
        if any(d <= 0 for d in self.shape[1:]):
            raise ValueError(f"tensor {self.name}: non-batch dims must be positive, got {self.shape}")
        if len(self.layout) != len(self.shape):
            raise ValueError(
                f"tensor {self.name}: layout {self.layout} does not have {len(self.shape)} letters"
            )
        return self

    def with_batch(self, batch: int) -> tuple[int, ...]:
        """The concrete shape for ``batch`` items."""
        return (batch, *self.shape[1:])


class Preprocessing(_Frozen):
    """How frames become engine input: ``(x / 255 - mean) / std`` per RGB channel, resized to H x W."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    clip_len: int = Field(..., ge=1)
    frame_stride: int = Field(..., ge=1)
    clip_hop: int = Field(..., ge=1)
    image_height: int = Field(..., ge=1)
    image_width: int = Field(..., ge=1)
    color: Literal["RGB"] = "RGB"
    scale: float = Field(1.0 / 255.0, description="Pixel scale applied before mean/std.")


class OnnxArtifact(_Frozen):
    path: str
    sha256: str
    size: int = Field(..., ge=1)
    opset: int = Field(..., ge=1)
    exporter: str
    build_key: str
    exported_with: dict[str, str] = Field(
        default_factory=dict,
        description="Versions that ran the export (torch, transformers, onnx, onnxscript): information "
        "only, not part of build_key, so ONNX exported elsewhere stays up to date on a device.",
    )


class TensorRTArtifact(_Frozen):
    path: str
    sha256: str
    size: int = Field(..., ge=1)
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    multiprocessor_count: int | None = Field(
        None,
        ge=1,
        description="The GPU's SM count (cudaDeviceProp.multiProcessorCount), which tells Jetson modules "
        "apart where name and compute capability cannot. None: a manifest written before it was recorded, "
        "which no device takes as its own (check_manifest, the TensorRT backend): rebuild the engines.",
    )
    precision: Literal["fp16", "fp32"]
    min_batch: int = Field(..., ge=1)
    opt_batch: int = Field(..., ge=1)
    max_batch: int = Field(..., ge=1)
    workspace_mb: int = Field(..., ge=1)
    fp32_layers: list[str] = Field(default_factory=list, description="Layers pinned to FP32.")
    timing_cache: str | None = None
    build_key: str


class TextEmbeddings(_Frozen):
    """One context's prompt embeddings: ``(P, d)`` float32, L2-normalised, normal prompts first, then
    anomalous. The semantic head's are gated by the context vector (``context_source``: the checkpoint's
    context embedding, or a zero embedding); the CLIP appearance engine's are CLIP's own (``ungated``), in
    the space of its image embedding."""

    context: str
    prompt_set: str
    prompt_file: str
    prompt_sha256: str
    normal: int = Field(..., ge=1)
    anomalous: int = Field(..., ge=1)
    path: str
    sha256: str
    shape: tuple[int, int]
    context_source: Literal["checkpoint", "zero-embedding", "ungated"]
    clip_model: str
    build_key: str


class FileArtifact(_Frozen):
    kind: str
    path: str
    sha256: str
    size: int = Field(..., ge=1)
    build_key: str


class ParityRecord(_Frozen):
    reference: str
    target: str
    batch_sizes: tuple[int, ...]
    max_rel_error: dict[str, float]
    tolerance: float


class Manifest(BaseModel):
    """Everything needed to run one engine and to tell whether it still fits the run config and device."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    component: Literal["backbone", "dpc_head", "semantic_head", "stream_gate", "appearance"]
    zsad_version: str
    created: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing
    model_spec: dict[str, Any]
    model_spec_sha256: str
    weights_sha256: str
    checkpoint: str
    options: dict[str, Any] = Field(default_factory=dict)
    onnx: OnnxArtifact | None = None
    tensorrt: TensorRTArtifact | None = None
    text_embeddings: list[TextEmbeddings] = Field(default_factory=list)
    files: list[FileArtifact] = Field(default_factory=list)
    parity: list[ParityRecord] = Field(default_factory=list)

    _directory: Path = PrivateAttr(default=Path())

    @property
    def directory(self) -> Path:
        """The folder the manifest lives in; artifact paths resolve against it."""
        return self._directory

    @property
    def path(self) -> Path:
        return manifest_path(self._directory, self.component)

    def bind(self, directory: str | Path) -> Manifest:
        """Set the folder the artifact paths resolve against (done by :func:`load_manifest`)."""
        self._directory = Path(directory)
        return self

    def resolve(self, relative: str) -> Path:
        return self._directory / relative

    @property
    def input_layout(self) -> str:
        return str(self.options.get("input_layout", "NTCHW"))

    def artifacts(self) -> Iterator[tuple[str, str, str]]:
        """``(field, path, sha256)`` of every file the manifest names."""
        if self.onnx is not None:
            yield "onnx", self.onnx.path, self.onnx.sha256
        if self.tensorrt is not None:
            yield "tensorrt", self.tensorrt.path, self.tensorrt.sha256
        for i, t in enumerate(self.text_embeddings):
            yield f"text_embeddings[{i}]", t.path, t.sha256
        for i, f in enumerate(self.files):
            yield f"files[{i}]", f.path, f.sha256


def manifest_path(directory: str | Path, component: str) -> Path:
    return Path(directory) / f"{component}.manifest.json"


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def zsad_version() -> str:
    try:
        return metadata.version("zsad")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _arch_spec(spec: ModelConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The spec without machine-local paths, as plain JSON types."""
    plain: dict[str, Any] = (
        spec.model_dump(mode="json") if isinstance(spec, ModelConfig) else json.loads(json.dumps(dict(spec)))
    )
    for section, key in _LOCAL_SPEC_FIELDS:
        if isinstance(plain.get(section), dict):
            plain[section].pop(key, None)
    return plain


def spec_sha256(spec: ModelConfig) -> str:
    """Hash of the architecture/preprocessing spec (the config's ``model`` section minus local paths):
    the SHA-256 of its canonical JSON (sorted keys, no spaces), so it is stable across runs and machines."""
    text = json.dumps(_arch_spec(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def spec_diff(
    a: ModelConfig | Mapping[str, Any], b: ModelConfig | Mapping[str, Any], prefix: str = "model"
) -> list[tuple[str, Any, Any]]:
    """Dotted fields where two specs differ (local paths ignored): ``[(field, a_value, b_value)]``.

    Either side may be the JSON a manifest stores (``Manifest.model_spec``), which can predate fields
    the schema has today; such a field shows as ``None`` on that side.
    """

    def walk(x: Any, y: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                yield from walk(x.get(key), y.get(key), f"{path}.{key}")
        elif x != y:
            yield path, x, y

    return list(walk(_arch_spec(a), _arch_spec(b), prefix))


def checkpoint_spec_mismatch(
    checkpoint: ModelConfig | Mapping[str, Any], config: ModelConfig | Mapping[str, Any]
) -> str | None:
    """Where a checkpoint's model spec and a config's model section differ, in words
    (``"model.x: checkpoint 1, config 2; ..."``, the first 8 fields), or None when they agree."""
    diffs = spec_diff(checkpoint, config)
    return "; ".join(f"{f}: checkpoint {a!r}, config {b!r}" for f, a, b in diffs[:8]) or None


def preprocessing_from_spec(spec: ModelConfig) -> Preprocessing:
    pre, bb = spec.preprocess, spec.backbone
    return Preprocessing(
        mean=pre.mean,
        std=pre.std,
        clip_len=pre.clip_len,
        frame_stride=pre.frame_stride,
        clip_hop=pre.clip_hop,
        image_height=bb.image_height,
        image_width=bb.image_width,
    )


def appearance_io(
    encoder: str, height: int, width: int, embed_dim: int = 0
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The appearance engine's I/O: ``frames`` ``(N, 3, H, W)`` in, ``features`` ``(N, C, h, w)`` out (``C``
    and the grid's stride from :data:`engines.encoders.ENCODERS`); with ``embed_dim``, a second output
    ``embedding`` ``(N, embed_dim)`` (a CLIP image embedding, unit L2 norm)."""
    info = ENCODERS[encoder]
    gh, gw = info.grid(height, width)
    outputs = [TensorSpec(name=APPEARANCE_FEATURES, shape=(-1, info.channels, gh, gw), layout="NCHW")]
    if embed_dim > 0:
        outputs.append(TensorSpec(name=APPEARANCE_EMBEDDING, shape=(-1, embed_dim), layout="NC"))
    return [TensorSpec(name=APPEARANCE_FRAMES, shape=(-1, 3, height, width), layout="NCHW")], outputs


def appearance_preprocessing(encoder: str, height: int, width: int) -> Preprocessing:
    """The appearance engine's input normalisation: the encoder's own mean and std (ImageNet's), single
    frames (``clip_len``, ``frame_stride`` and ``clip_hop`` are 1), at the backbone's frame size."""
    info = ENCODERS[encoder]
    return Preprocessing(
        mean=info.mean,
        std=info.std,
        clip_len=1,
        frame_stride=1,
        clip_hop=1,
        image_height=height,
        image_width=width,
    )


def component_io(
    component: str, spec: ModelConfig, input_layout: str = "NTCHW", *, encoder: str = "mobilenet_v2"
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The I/O contract of a component for a model spec: ``(inputs, outputs)``.

    Layout letters: N batch, T frames, C channels (3 for pixels, D for tokens), H/W pixels or patch
    grid, S past clips, D feature width. ``encoder`` is the appearance engine's (``appearance.encoder``),
    which runs on the backbone's frame size and takes no clip layout.
    """
    if component == APPEARANCE_COMPONENT:
        return appearance_io(encoder, spec.backbone.image_height, spec.backbone.image_width)
    if input_layout not in LAYOUTS:
        raise ValueError(f"input layout {input_layout!r} is not one of {LAYOUTS}")
    bb, pre = spec.backbone, spec.preprocess
    t, height, width, p = pre.clip_len, bb.image_height, bb.image_width, bb.patch_size
    d, gh, gw = bb.hidden_size, height // p, width // p
    if component == "backbone":
        clip_shape = (-1, t, 3, height, width) if input_layout == "NTCHW" else (-1, 3, t, height, width)
        return (
            [TensorSpec(name="clip", shape=clip_shape, layout=input_layout)],
            [
                TensorSpec(name="tokens", shape=(-1, t, d, gh, gw), layout="NTCHW"),
                TensorSpec(name="embedding", shape=(-1, d), layout="ND"),
            ],
        )
    if component == "dpc_head":
        s = spec.dpc.context_clips
        frames = ["last_frame", "current_frame"]
        if spec.dpc.decoder == "extrapolate":
            frames.append("prev_frame")
        proj = 3 * spec.dpc.hidden_size  # the ConvGRU's input projection (engines.dpc.ConvGRUCell.project)
        return (
            [
                TensorSpec(name="history_proj", shape=(-1, s, proj, gh, gw), layout="NSCHW"),
                TensorSpec(name="last_tokens", shape=(-1, d, gh, gw), layout="NCHW"),
                TensorSpec(name="current", shape=(-1, t, d, gh, gw), layout="NTCHW"),
                *(TensorSpec(name=f, shape=(-1, 3, height, width), layout="NCHW") for f in frames),
            ],
            [
                *(
                    TensorSpec(name=n, shape=(-1, gh, gw), layout="NHW")
                    for n in ("feature_error", "pixel_error", "motion")
                ),
                TensorSpec(name="current_proj", shape=(-1, proj, gh, gw), layout="NCHW"),
            ],
        )
    if component == "semantic_head":
        e = spec.semantic.embed_dim
        return (
            [TensorSpec(name="embedding", shape=(-1, d), layout="ND")],
            [TensorSpec(name="video", shape=(-1, e), layout="ND")],
        )
    if component == "stream_gate":
        # Applied in numpy (plugins.fusion.StreamGate): W (S, D) @ embedding + b -> softmax weights.
        return (
            [TensorSpec(name="embedding", shape=(-1, d), layout="ND")],
            [TensorSpec(name="weights", shape=(-1, len(STREAMS)), layout="NS")],
        )
    raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")


def save_manifest(manifest: Manifest, directory: str | Path | None = None) -> Path:
    """Write ``<directory>/<component>.manifest.json`` atomically; bind the manifest to ``directory``."""
    if directory is not None:
        manifest.bind(directory)
    path = manifest.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest. Raises :class:`ManifestError` naming the file (and field)."""
    p = Path(path)
    data = read_json(p, ManifestError, label=f"manifest {p}")
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {p}: top level must be an object, got {type(data).__name__}")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ManifestError(f"manifest {p} is malformed: {problems}") from exc
    return manifest.bind(p.parent)


@dataclass(frozen=True)
class Expectation:
    """What the run expects of an engine. ``None`` fields are not checked.

    Attributes:
        model_spec: the run config's ``model`` section (shapes, preprocessing and the spec hash).
        input_layout: ``NTCHW`` (native) or ``NCTHW`` (the permuting wrapper); both graphs feed either.
        backend: ``onnxruntime``, ``torch`` or ``tensorrt``; ``tensorrt`` also checks version and GPU.
        tensorrt_version, gpu_name, compute_capability, multiprocessor_count: of this device (TensorRT
            engines only).
        prompt_sha256: context -> sha256 of the prompt file in use (semantic head only).
        appearance_encoder: the config's ``appearance.encoder`` (appearance engine only; its frame size is
            checked against ``model_spec``'s backbone).
        max_batch: the largest batch the run forms (``scheduler.max_batch``); a TensorRT engine whose
            profile stops below it is refused (TensorRT engines only).
        verify_files: hash every file the manifest names (catches a changed or truncated file).
    """

    model_spec: ModelConfig | None = None
    input_layout: str | None = None
    backend: str | None = None
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    multiprocessor_count: int | None = None
    prompt_sha256: Mapping[str, str] | None = None
    appearance_encoder: str | None = None
    max_batch: int | None = None
    verify_files: bool = True


def _mismatch(manifest: Manifest, field: str, message: str) -> ManifestMismatch:
    return ManifestMismatch(f"{manifest.path}: {field}: {message}")


def _check_tensors(
    manifest: Manifest, kind: str, actual: Sequence[TensorSpec], expected: Sequence[TensorSpec]
) -> None:
    names = [t.name for t in actual]
    want = [t.name for t in expected]
    if names != want:
        raise _mismatch(manifest, kind, f"names {names} differ from the expected {want}")
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        for attr in ("shape", "dtype", "layout"):
            if getattr(a, attr) != getattr(e, attr):
                raise _mismatch(
                    manifest,
                    f"{kind}[{i}].{attr}",
                    f"{a.name} has {attr} {getattr(a, attr)}, the run config needs {getattr(e, attr)}",
                )


def verify_files(manifest: Manifest, fields: Sequence[str] | None = None) -> None:
    """Check that each named file exists and still has the recorded sha256.

    ``fields`` limits the check to fields starting with these names (e.g. ``("onnx",)``).
    """
    for field, rel, digest in manifest.artifacts():
        if fields is not None and not any(field.startswith(f) for f in fields):
            continue
        path = manifest.resolve(rel)
        if not path.is_file():
            raise ManifestError(f"{manifest.path}: {field}.path: file {path} is missing")
        actual = file_sha256(path)
        if actual != digest:
            raise _mismatch(
                manifest,
                f"{field}.sha256",
                f"file {path} changed since the build (sha256 {actual[:12]}, manifest {digest[:12]})",
            )


def _check_appearance(manifest: Manifest, expected: Expectation) -> None:
    """The appearance engine's part of :func:`check_manifest`: its encoder and frame size, I/O,
    preprocessing and spec hash against the config's ``appearance.encoder`` and backbone frame size."""
    built = str(manifest.options.get("encoder", ""))
    if built not in ENCODERS:
        raise _mismatch(manifest, "options.encoder", f"unknown encoder {built!r}; rebuild the engines")
    if expected.appearance_encoder is not None and built != expected.appearance_encoder:
        raise _mismatch(
            manifest,
            "options.encoder",
            f"engine built with encoder {built}, "
            f"the config's appearance.encoder is {expected.appearance_encoder}",
        )
    if expected.model_spec is None:
        return
    bb = expected.model_spec.backbone
    pre = manifest.preprocessing
    if (pre.image_height, pre.image_width) != (bb.image_height, bb.image_width):
        raise _mismatch(
            manifest,
            "preprocessing.image_height/image_width",
            f"engine built for {pre.image_width}x{pre.image_height} frames (width x height), the config's "
            f"model.backbone is {bb.image_width}x{bb.image_height}: rebuild the engines",
        )
    # The image embedding's width is the CLIP folder's, not the config's: what the engine says it was built
    # with is checked for consistency here (its I/O and spec hash), and its prompts at load time.
    embed_dim = manifest.model_spec.get("embed_dim", 0)
    if not isinstance(embed_dim, int) or embed_dim < 0 or (embed_dim and built != "clip"):
        raise _mismatch(
            manifest,
            "model_spec.embed_dim",
            f"{embed_dim!r} is not an image embedding {built} can have; rebuild",
        )
    want_in, want_out = appearance_io(built, bb.image_height, bb.image_width, embed_dim)
    _check_tensors(manifest, "inputs", manifest.inputs, want_in)
    _check_tensors(manifest, "outputs", manifest.outputs, want_out)
    want_pre = appearance_preprocessing(built, bb.image_height, bb.image_width)
    for name in Preprocessing.model_fields:
        a, e = getattr(pre, name), getattr(want_pre, name)
        if a != e:
            raise _mismatch(manifest, f"preprocessing.{name}", f"engine built for {a}, the encoder needs {e}")
    want_spec = appearance_spec(built, bb.image_height, bb.image_width, embed_dim)
    if manifest.model_spec_sha256 != appearance_spec_sha256(want_spec):
        diffs = spec_diff(manifest.model_spec, want_spec, prefix="model_spec")
        where = ", ".join(f"{f} (engine {a!r}, expected {b!r})" for f, a, b in diffs[:5]) or "its hash"
        raise _mismatch(manifest, "model_spec_sha256", f"appearance spec differs at {where}: rebuild")


def sm_count_mismatch(built: int | None, device: int) -> str:
    """Why an engine built on a GPU with ``built`` SMs (None: not recorded) is not this device's (``device``
    SMs), in words ending with what to do."""
    if built is None:
        # Written before the SM count was recorded: it may come from another module of the same name
        # (every Orin is "Orin", sm 8.7), so it is rebuilt once rather than trusted.
        return (
            f"engine built before zsad recorded the GPU's SM count, this device has {device}: it may be "
            "another module's (every Jetson Orin reports 'Orin', sm 8.7); rebuild the engines on this device"
        )
    return (
        f"engine built on a GPU with {built} SMs, this device has {device}: "
        "rebuild the engines on this device"
    )


def check_tensorrt_device(
    manifest: Manifest,
    *,
    tensorrt_version: str | None = None,
    gpu_name: str | None = None,
    compute_capability: str | None = None,
    multiprocessor_count: int | None = None,
) -> TensorRTArtifact:
    """Refuse (:class:`ManifestMismatch`, naming the field) an engine built with another TensorRT or on
    another GPU than these; a value left None is not compared. The one check both :func:`check_manifest`
    (the run's expectation) and the TensorRT backend (the device it opens the engine on) make. Returns the
    manifest's ``tensorrt`` block."""
    trt = manifest.tensorrt
    if trt is None:
        raise _mismatch(manifest, "tensorrt", "built without TensorRT; run build-engines --backend tensorrt")
    if tensorrt_version is not None and trt.tensorrt_version != tensorrt_version:
        raise _mismatch(
            manifest,
            "tensorrt.tensorrt_version",
            f"engine built with TensorRT {trt.tensorrt_version}, this device has {tensorrt_version}",
        )
    if gpu_name is not None and trt.gpu_name != gpu_name:
        raise _mismatch(
            manifest, "tensorrt.gpu_name", f"engine built on {trt.gpu_name!r}, this device is {gpu_name!r}"
        )
    if compute_capability is not None and trt.compute_capability != compute_capability:
        raise _mismatch(
            manifest,
            "tensorrt.compute_capability",
            f"engine built for sm {trt.compute_capability}, this device is sm {compute_capability}",
        )
    if multiprocessor_count is not None and trt.multiprocessor_count != multiprocessor_count:
        raise _mismatch(
            manifest,
            "tensorrt.multiprocessor_count",
            sm_count_mismatch(trt.multiprocessor_count, multiprocessor_count),
        )
    return trt


def check_manifest(manifest: Manifest, expected: Expectation) -> None:
    """Refuse a manifest that does not fit the run; the :class:`ManifestMismatch` says which field and why.

    Missing files raise :class:`ManifestError`.
    """
    if manifest.component == APPEARANCE_COMPONENT:
        _check_appearance(manifest, expected)
    elif expected.model_spec is not None:
        spec = expected.model_spec
        layout = expected.input_layout or manifest.input_layout
        want_in, want_out = component_io(manifest.component, spec, layout)
        _check_tensors(manifest, "inputs", manifest.inputs, want_in)
        _check_tensors(manifest, "outputs", manifest.outputs, want_out)
        want_pre = preprocessing_from_spec(spec)
        for name in Preprocessing.model_fields:
            a, e = getattr(manifest.preprocessing, name), getattr(want_pre, name)
            if a != e:
                raise _mismatch(
                    manifest, f"preprocessing.{name}", f"engine built for {a}, run config has {e}"
                )
        if manifest.model_spec_sha256 != spec_sha256(spec):
            diffs = spec_diff(manifest.model_spec, spec)
            where = ", ".join(f"{f} (engine {a!r}, config {b!r})" for f, a, b in diffs[:5]) or "unknown field"
            raise _mismatch(
                manifest, "model_spec_sha256", f"model spec differs from the run config at {where}"
            )
    if expected.input_layout is not None and manifest.input_layout != expected.input_layout:
        raise _mismatch(
            manifest,
            "options.input_layout",
            f"engine input layout {manifest.input_layout}, the graph needs {expected.input_layout}",
        )
    if expected.backend == "tensorrt":
        trt = check_tensorrt_device(
            manifest,
            tensorrt_version=expected.tensorrt_version,
            gpu_name=expected.gpu_name,
            compute_capability=expected.compute_capability,
            multiprocessor_count=expected.multiprocessor_count,
        )
        if expected.max_batch is not None and trt.max_batch < expected.max_batch:
            raise _mismatch(
                manifest,
                "tensorrt.max_batch",
                f"engine takes at most {trt.max_batch} clips a batch, the run batches up to "
                f"{expected.max_batch} (scheduler.max_batch): rebuild with --max-batch {expected.max_batch}",
            )
    elif (
        expected.backend in ("onnxruntime", "torch")
        and manifest.component in ONNX_COMPONENTS
        and manifest.onnx is None
    ):
        raise _mismatch(manifest, "onnx", "no ONNX model recorded")
    if expected.prompt_sha256 is not None:
        have = {t.context: t for t in manifest.text_embeddings}
        for context, digest in expected.prompt_sha256.items():
            if context not in have:
                raise _mismatch(
                    manifest, "text_embeddings", f"no embeddings for context {context!r}; rebuild"
                )
            if have[context].prompt_sha256 != digest:
                raise _mismatch(
                    manifest,
                    f"text_embeddings[{context}].prompt_sha256",
                    f"prompt file {have[context].prompt_file} changed since the build; rebuild the engines",
                )
    if expected.verify_files:
        fields = None
        if expected.backend in ("onnxruntime", "torch"):
            fields = ("onnx", "text_embeddings", "files")
        verify_files(manifest, fields)
