"""``zsad build-engines``: checkpoint -> ONNX -> (TensorRT) engines, text embeddings, stream gate, manifests.

Per ONNX component (``backbone``, ``dpc_head``, ``semantic_head``, and ``appearance`` when the config's
``appearance.enabled``):

1. export ONNX (dynamic batch, static T/H/W) and check it (:mod:`engines.export`);
2. parity PyTorch vs ONNX Runtime on fresh random inputs, several batch sizes;
3. when TensorRT is wanted and importable: a FP16 engine (LayerNorm/softmax/reductions in FP32) and
   parity ONNX Runtime vs TensorRT (:mod:`engines.tensorrt_build`);
4. the manifest (:mod:`engines.manifest`).

``semantic_head`` also gets ``text_<context>.npy`` per context (gated, L2-normalised prompt embeddings)
and only exists when ``model.semantic.clip_text_model`` is a local CLIP folder. ``stream_gate.npz``
holds the stream gate composed with the context projection, applied in numpy on the backbone embedding.
``appearance`` is the frozen pretrained image encoder of the appearance stream (:mod:`engines.appearance`):
built from its weights file (:func:`engines.encoders.find_encoder_weights`), not from the checkpoint, at the
backbone's frame size. With ``appearance.encoder: clip``, ``appearance.semantic`` and a full CLIP folder with
its tokenizer, it also outputs CLIP's image embedding and gets ``appearance_text_<context>.npy`` per context
(the prompts through the same folder's text tower, L2-normalised, not gated): the semantic stream's source.

Every stage has a build key (a hash of everything it depends on). A stage whose key matches the
existing manifest and whose files still have their recorded hashes is skipped: a re-run with unchanged
inputs rewrites nothing and reports "up to date". A component's new files (ONNX, engine, prompt
embeddings) are made in ``<out>/.staging`` and moved into place only after every stage of the component
passed (parity checks included), together with its manifest; files it no longer uses are removed after
that. So a failed build never replaces a good engine: the folder keeps the files its manifests name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import CONTEXT_NAME, AppearanceConfig, ModelConfig, ZsadConfig
from engines.backends.base import BackendError, BackendUnavailable
from engines.backends.onnxruntime import OnnxRuntimeBackend
from engines.backends.tensorrt import CudaRuntime, TensorRTBackend, cuda_device_info
from engines.backends.torch import TorchBackend
from engines.encoders import (
    APPEARANCE_COMPONENT,
    EncoderWeightsError,
    appearance_spec,
    appearance_spec_sha256,
    clip_embed_dim,
    clip_folder,
    encoder_weights_sha256,
    encoder_weights_stat,
    find_encoder_weights,
    has_tokenizer,
    tokenizer_missing,
)
from engines.export import EXPORT_OPSET, EXPORTER, check_parity, component_module, export_onnx
from engines.manifest import (
    LAYOUTS,
    FileArtifact,
    Manifest,
    ManifestError,
    OnnxArtifact,
    ParityRecord,
    TensorRTArtifact,
    TextEmbeddings,
    appearance_io,
    appearance_preprocessing,
    checkpoint_spec_mismatch,
    component_io,
    file_sha256,
    load_manifest,
    manifest_path,
    preprocessing_from_spec,
    save_manifest,
    spec_sha256,
    utc_now,
    zsad_version,
)
from engines.prompts import PROMPT_DIR, PromptError, PromptSet, load_prompt_set
from engines.tensorrt_build import (
    BatchProfile,
    GpuIdentity,
    build_engine,
    engine_filename,
    import_tensorrt,
    timing_cache_filename,
)
from plugins.fusion import GateError, StreamGate
from plugins.streams import STREAMS

if TYPE_CHECKING:  # torch is heavy: these load only when a stage has to build
    from engines.appearance import AppearanceEncoder, ClipAppearanceEncoder
    from engines.model import ZsadModel
    from engines.semantic import TextEncoder

log = logging.getLogger(__name__)

__all__ = [
    "BuildError",
    "BuildInputError",
    "BuildOptions",
    "BuildProgress",
    "BuildReport",
    "StepResult",
    "build_engines",
    "build_from_config",
    "camera_contexts",
    "exporting_versions",
    "onnx_build_key",
]

BACKEND_CHOICES = ("onnxruntime", "tensorrt", "all")
STAGING = ".staging"
#: Held (``flock``) by whoever builds into an engine folder: ``zsad build-engines`` and a first run's
#: build. Two builds would share the staging folder, and one would delete it under the other.
BUILD_LOCK = ".build.lock"

BuildProgress = Callable[[int, int, str], None]
"""``progress(done, total, component)``: called before each component is built (``done`` of ``total``
finished, ``component`` next) and once at the end with ``done == total`` and component ``"done"``."""


class BuildError(RuntimeError):
    """A build step failed (exit code 1)."""


class BuildInputError(BuildError):
    """Unusable build inputs: checkpoint, spec, options, prompts, a missing runtime (exit code 2)."""


@dataclass(frozen=True)
class BuildOptions:
    """How to build. ``backend``: ``onnxruntime`` (ONNX only), ``tensorrt`` (ONNX + engines; TensorRT must
    import) or ``all`` (engines where TensorRT imports, ONNX only elsewhere)."""

    backend: str = "onnxruntime"
    profile: BatchProfile = field(default_factory=BatchProfile)
    workspace_mb: int = 2048
    input_layout: str = "NTCHW"
    force: bool = False
    opset: int = EXPORT_OPSET
    precision: str = "fp16"
    parity_batches: tuple[int, ...] = (1, 3)
    onnx_tolerance: float = 1e-3
    trt_tolerance: float = 2e-2
    seed: int = 0
    components: tuple[str, ...] | None = None  # None: all that apply

    def validate(self) -> None:
        if self.backend not in BACKEND_CHOICES:
            raise BuildInputError(f"--backend must be one of {BACKEND_CHOICES}, got {self.backend!r}")
        if self.input_layout not in LAYOUTS:
            raise BuildInputError(f"--input-layout must be one of {LAYOUTS}, got {self.input_layout!r}")
        if not 64 <= self.workspace_mb <= 1 << 20:
            raise BuildInputError(f"--workspace-mb must be within 64..1048576, got {self.workspace_mb}")
        if self.precision not in ("fp16", "fp32"):
            raise BuildInputError(f"precision must be fp16 or fp32, got {self.precision!r}")
        if not self.parity_batches or min(self.parity_batches) < 1:
            raise BuildInputError(f"parity batch sizes must be >= 1, got {self.parity_batches}")


@dataclass
class StepResult:
    component: str
    step: str
    status: str  # "built", "up to date", "skipped", "removed"
    seconds: float = 0.0
    path: Path | None = None
    size: int = 0
    detail: str = ""


@dataclass
class BuildReport:
    out_dir: Path
    steps: list[StepResult] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        """True when no step had to build anything."""
        return all(s.status in ("up to date", "skipped") for s in self.steps)

    def table(self) -> str:
        rows = [("component", "step", "status", "seconds", "size", "file / detail")]
        for s in self.steps:
            size = _human_size(s.size)
            where = s.path.name if s.path else ""
            rows.append(
                (
                    s.component,
                    s.step,
                    s.status,
                    f"{s.seconds:.1f}",
                    size,
                    " ".join(x for x in (where, s.detail) if x),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        verdict = "up to date" if self.up_to_date else "built"
        return "\n".join([*lines, f"{self.out_dir}: {verdict}"])


def camera_contexts(cameras: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """``{context: prompt set}`` from ``(context, prompts or None)`` pairs; a context's prompt set defaults
    to its own name. Refuses one context with two prompt sets and names unusable as file names."""
    out: dict[str, str] = {}
    for context, prompts in cameras:
        chosen = prompts or context
        if not CONTEXT_NAME.match(context):  # a validated config never has one; callers passing pairs may
            raise BuildInputError(
                f"context name {context!r} must match {CONTEXT_NAME.pattern} (it names a file)"
            )
        if out.get(context, chosen) != chosen:
            raise BuildInputError(
                f"context {context!r} is used with two prompt sets: {out[context]!r} and {chosen!r}"
            )
        out[context] = chosen
    return out


def _human_size(size: int) -> str:
    if not size:
        return ""
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# The source files whose code becomes a component's ONNX graph: a change there re-exports it. The versions
# of torch and transformers that ran the export are not part of the key: ONNX exported on the development
# machine stays "up to date" on a device whose torch differs (JetPack 6.1's 2.5.0a0), so the device only
# compiles TensorRT engines from it; they are recorded in the manifest (OnnxArtifact.exported_with).
_GRAPH_SOURCES = {
    "backbone": ("backbone.py", "export.py"),
    "dpc_head": ("dpc.py", "export.py"),
    "semantic_head": ("semantic.py", "export.py"),
    # Not encoders.py: what of it shapes the graph (taps, channels, stride) is in the engine's spec hash, and
    # the rest (weights lookup, hashing) does not touch the graph.
    APPEARANCE_COMPONENT: ("appearance.py", "export.py"),
}


def _graph_source_sha(component: str) -> str:
    h = hashlib.sha256()
    for name in _GRAPH_SOURCES[component]:
        h.update(Path(__file__).with_name(name).read_bytes())
    return h.hexdigest()


def onnx_build_key(
    component: str, weights_sha: str, spec_sha: str, layout: str, opset: int, tolerance: float
) -> str:
    """The ONNX stage's build key: weights, model spec, input layout, opset, exporter, the graph's source
    files and the parity tolerance; not the versions of the exporting torch and transformers."""
    return _key(
        stage="onnx",
        component=component,
        weights=weights_sha,
        spec=spec_sha,
        layout=layout,
        graph=_graph_source_sha(component),
        opset=opset,
        exporter=EXPORTER,
        tolerance=tolerance,
    )


def exporting_versions() -> dict[str, str]:
    """The versions that ran an export (information in the manifest, not a rebuild reason)."""
    import torch

    versions = {"torch": str(torch.__version__)}
    for package in ("transformers", "onnx", "onnxscript"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


def _file_ok(path: Path, digest: str) -> bool:
    return path.is_file() and file_sha256(path) == digest


def _size_ok(path: Path, what: str) -> int:
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        raise BuildError(f"{what}: {path} is missing or empty")
    return size


@dataclass
class _TensorRTEnv:
    trt: Any
    version: str
    gpu: GpuIdentity
    device: int  # the CUDA device engines are built on and checked on (the config's deepstream.gpu_id)


@dataclass(frozen=True)
class _AppearanceSource:
    """The appearance encoder a build exports: its name and its weights file with that file's sha256, and
    the width of its image embedding (0: no ``embedding`` output, no semantic stream from it)."""

    encoder: str
    weights: Path
    sha256: str
    embed_dim: int = 0
    #: :func:`engines.encoders.encoder_weights_stat` of the files behind ``sha256``.
    stat: tuple[tuple[str | int, ...], ...] = ()


class _Builder:
    """One build run; see :func:`build_engines`."""

    def __init__(
        self,
        spec: ModelConfig,
        checkpoint: Path,
        out_dir: Path,
        contexts: Mapping[str, str],
        options: BuildOptions,
        prompt_dir: Path,
        progress: BuildProgress | None = None,
        appearance: AppearanceConfig | None = None,
        gpu_id: int = 0,
    ) -> None:
        self.spec = spec.model_copy(deep=True)
        self.spec_sha = spec_sha256(self.spec)
        self.checkpoint = checkpoint
        self.out = out_dir
        self.staging = out_dir / STAGING
        self.contexts = dict(contexts)
        self.options = options
        self.prompt_dir = prompt_dir
        self.report = BuildReport(out_dir=out_dir)
        self._model: ZsadModel | None = None
        self.meta: dict[str, Any] = {}
        self.weights_sha = ""
        self._text_encoders: dict[str, TextEncoder] = {}  # CLIP folder -> its text tower
        self.progress = progress
        self.appearance = appearance
        self.gpu_id = gpu_id
        self._appearance_source: _AppearanceSource | None = None
        self._encoder: AppearanceEncoder | ClipAppearanceEncoder | None = None
        # The component being built: its new files in the staging folder (name in the engine folder ->
        # staged path), and the files of its previous build it no longer uses. Both wait for commit().
        self._staged: dict[str, Path] = {}
        self._obsolete: set[str] = set()

    # -- inputs ------------------------------------------------------------------------------------------

    def load_meta(self) -> None:
        """Read the checkpoint's sidecar (spec, sha256) and check it against the file and the config.

        The weights themselves load only when a stage has to build (:attr:`model`), so an up-to-date
        run stays fast.
        """
        meta_path = self.checkpoint.with_suffix(self.checkpoint.suffix + ".json")
        if not self.checkpoint.is_file():
            raise BuildInputError(f"checkpoint {self.checkpoint} does not exist")
        from engines.model import CheckpointError, parse_spec

        try:
            meta = json.loads(meta_path.read_text())
            ckpt_spec = parse_spec(meta["spec"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, CheckpointError) as exc:
            raise BuildInputError(f"checkpoint metadata {meta_path} is missing or malformed: {exc}") from exc
        digest = file_sha256(self.checkpoint)
        if meta.get("sha256") and meta["sha256"] != digest:
            raise BuildInputError(
                f"checkpoint {self.checkpoint} has sha256 {digest[:12]}, "
                f"its metadata says {meta['sha256'][:12]}"
            )
        where = checkpoint_spec_mismatch(ckpt_spec, self.spec)
        if where:
            raise BuildInputError(
                f"the config's model section does not match checkpoint {self.checkpoint}: {where}"
            )
        self.meta = meta
        self.weights_sha = digest

    @property
    def model(self) -> ZsadModel:
        """The checkpoint's :class:`~engines.model.ZsadModel` in eval mode, loaded on first use."""
        if self._model is None:
            from engines.model import CheckpointError, load_checkpoint

            started = time.monotonic()
            try:
                model, _ = load_checkpoint(self.checkpoint)
            except CheckpointError as exc:
                raise BuildInputError(str(exc)) from exc
            self._model = model.eval()
            log.info(
                "checkpoint %s loaded in %.1f s (sha256 %s)",
                self.checkpoint,
                time.monotonic() - started,
                self.weights_sha[:12],
            )
        return self._model

    def find_appearance_weights(self, appearance: AppearanceConfig) -> None:
        """Locate and hash the appearance encoder's weights (before anything is built, so that a missing
        file fails the build at once, with how to install it or turn the stream off). Files of the same path,
        size and modification time as the previous build's are not read again (a CLIP's are gigabytes, and
        every run start checks its engines); ``--force`` reads them."""
        try:
            path = find_encoder_weights(
                appearance.encoder, appearance.weights, self.spec.semantic.clip_text_model
            )
            stat = encoder_weights_stat(appearance.encoder, path)
            previous = None if self.options.force else self.existing(APPEARANCE_COMPONENT)
            if (
                previous is not None
                and previous.checkpoint == str(path.absolute())
                and previous.options.get("weights_stat") == stat
            ):
                digest = previous.weights_sha256
            else:
                digest = encoder_weights_sha256(appearance.encoder, path)
            embed_dim = clip_embed_dim(path) if appearance.encoder == "clip" and appearance.semantic else 0
        except EncoderWeightsError as exc:
            raise BuildInputError(f"appearance engine: {exc}") from exc
        if appearance.encoder == "clip" and appearance.semantic and not (embed_dim and has_tokenizer(path)):
            log.warning(
                "appearance engine: %s %s: it feeds the appearance stream only, not the semantic stream",
                clip_folder(path),
                "has no tokenizer to embed the prompts with"
                if embed_dim
                else "holds CLIP's image tower alone (no visual projection, no text tower)",
            )
            embed_dim = 0
        self._appearance_source = _AppearanceSource(
            appearance.encoder, path, digest, embed_dim, tuple(tuple(s) for s in stat)
        )

    @property
    def appearance_source(self) -> _AppearanceSource:
        if self._appearance_source is None:
            raise BuildError("appearance engine: its weights were not located before its stages ran")
        return self._appearance_source

    @property
    def encoder(self) -> AppearanceEncoder | ClipAppearanceEncoder:
        """The appearance encoder with its pretrained weights, loaded on first use (only to export)."""
        if self._encoder is None:
            from engines.appearance import load_encoder

            source = self.appearance_source
            try:
                self._encoder = load_encoder(
                    source.weights, source.sha256, source.encoder, embedding=source.embed_dim > 0
                )
            except EncoderWeightsError as exc:
                raise BuildInputError(f"appearance engine: {exc}") from exc
            log.info("appearance weights %s loaded (sha256 %s)", source.weights, source.sha256[:12])
        return self._encoder

    def tensorrt_env(self) -> _TensorRTEnv | None:
        if self.options.backend == "onnxruntime":
            return None
        try:
            trt = import_tensorrt()
            gpu = cuda_device_info(self.gpu_id)
        except (BackendUnavailable, BackendError) as exc:
            if self.options.backend == "tensorrt":
                raise BuildInputError(f"--backend tensorrt: {exc}") from exc
            log.warning("TensorRT engines skipped (ONNX only): %s", exc)
            return None
        log.info("TensorRT %s on CUDA device %d, %s", trt.__version__, self.gpu_id, gpu)
        return _TensorRTEnv(trt=trt, version=str(trt.__version__), gpu=gpu, device=self.gpu_id)

    def semantic_enabled(self) -> bool:
        from engines.semantic import clip_available

        source = self.spec.semantic.clip_text_model
        if clip_available(source):
            return True
        if source:
            log.warning("semantic stream off: CLIP text model %r is not a local folder", source)
        else:
            log.info("semantic stream off: model.semantic.clip_text_model is not set")
        return False

    # -- helpers -----------------------------------------------------------------------------------------

    def step(self, result: StepResult) -> None:
        self.report.steps.append(result)
        size = f", {_human_size(result.size)}" if result.size else ""
        where = f" -> {result.path}" if result.path and result.status == "built" else ""
        detail = f" ({result.detail})" if result.detail else ""
        log.info(
            "%s: %s %s in %.1f s%s%s%s",
            result.component,
            result.step,
            result.status,
            result.seconds,
            size,
            where,
            detail,
        )

    def existing(self, component: str) -> Manifest | None:
        path = manifest_path(self.out, component)
        if not path.is_file():
            return None
        try:
            return load_manifest(path)
        except ManifestError as exc:
            log.warning("%s; rebuilding %s", exc, component)
            return None

    def base_manifest(self, component: str) -> Manifest:
        if component == APPEARANCE_COMPONENT:
            return self.appearance_manifest()
        inputs, outputs = component_io(component, self.spec, self.options.input_layout)
        options: dict[str, Any] = {
            "input_layout": self.options.input_layout if component == "backbone" else "NTCHW"
        }
        return Manifest(
            component=component,  # type: ignore[arg-type]
            zsad_version=zsad_version(),
            created=utc_now(),
            inputs=inputs,
            outputs=outputs,
            preprocessing=preprocessing_from_spec(self.spec),
            model_spec=self.spec.model_dump(mode="json"),
            model_spec_sha256=self.spec_sha,
            weights_sha256=self.weights_sha,
            checkpoint=str(self.checkpoint.resolve()),
            options=options,
        ).bind(self.out)

    def appearance_manifest(self) -> Manifest:
        """The appearance engine's manifest before its stages: its own spec (encoder, taps, frame size) and
        weights, not the checkpoint's."""
        source = self.appearance_source
        encoder = source.encoder
        height, width = self.spec.backbone.image_height, self.spec.backbone.image_width
        inputs, outputs = appearance_io(encoder, height, width, source.embed_dim)
        spec = appearance_spec(encoder, height, width, source.embed_dim)
        return Manifest(
            component=APPEARANCE_COMPONENT,
            zsad_version=zsad_version(),
            created=utc_now(),
            inputs=inputs,
            outputs=outputs,
            preprocessing=appearance_preprocessing(encoder, height, width),
            model_spec=spec,
            model_spec_sha256=appearance_spec_sha256(spec),
            weights_sha256=source.sha256,
            # Absolute, symlinks kept: in a Hugging Face cache a CLIP folder's model.safetensors is a link
            # into blobs/, and the folder (its config.json) is what the torch reference must reload.
            checkpoint=str(source.weights.absolute()),
            options={
                "input_layout": "NCHW",
                "encoder": encoder,
                "weights_stat": [list(s) for s in source.stat],
            },
        ).bind(self.out)

    def source_model(self, component: str) -> Any:
        """What :func:`engines.export.component_module` takes for ``component``: the encoder for the
        appearance engine, the checkpoint's model for the others."""
        return self.encoder if component == APPEARANCE_COMPONENT else self.model

    def write(self, manifest: Manifest, previous: Manifest | None) -> None:
        """Write the manifest unless it equals the previous one apart from its creation time."""
        if previous is not None:
            same = manifest.model_dump(exclude={"created"}) == previous.model_dump(exclude={"created"})
            if same:
                return
        save_manifest(manifest, self.out)

    def stage(self, name: str) -> Path:
        """Where the component's new file ``name`` is made: the staging folder, until :meth:`commit`."""
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / name
        self._staged[name] = path
        return path

    def located(self, manifest: Manifest) -> Manifest:
        """``manifest`` bound to the folder that holds its ONNX now (staged or in place), for a backend that
        reads it before :meth:`commit`."""
        onnx = manifest.onnx
        where = self.staging if onnx is not None and onnx.path in self._staged else self.out
        return manifest.model_copy().bind(where)

    def commit(self, manifest: Manifest, previous: Manifest | None) -> None:
        """Every stage of the component passed: move its staged files into place, write its manifest, then
        remove what its previous build had and it no longer names. Until here the folder holds the previous
        build's files and manifest untouched, whatever stage failed."""
        for name, path in self._staged.items():
            path.replace(self.out / name)
        self.write(manifest, previous)
        named = {rel for _, rel, _ in manifest.artifacts()}
        for rel in sorted(self._obsolete - named):
            (self.out / rel).unlink(missing_ok=True)
        self._staged, self._obsolete = {}, set()

    # -- stages ------------------------------------------------------------------------------------------

    def onnx_stage(self, component: str, manifest: Manifest, previous: Manifest | None) -> Manifest:
        key = onnx_build_key(
            component,
            manifest.weights_sha256,
            manifest.model_spec_sha256,
            manifest.input_layout,
            self.options.opset,
            self.options.onnx_tolerance,
        )
        old = previous.onnx if previous is not None else None
        if (
            not self.options.force
            and old is not None
            and old.build_key == key
            and _file_ok(self.out / old.path, old.sha256)
        ):
            self.step(StepResult(component, "onnx", "up to date", path=self.out / old.path, size=old.size))
            parity = [p for p in previous.parity if p.target == "onnxruntime"] if previous else []
            return manifest.model_copy(update={"onnx": old, "parity": parity}).bind(self.out)
        name = f"{component}.onnx"
        staged = self.stage(name)
        if old is not None:
            self._obsolete.add(old.path)  # kept by commit when the new ONNX has its name
        if old is not None and not self.options.force:
            log.info("%s: the ONNX on disk is stale or damaged; exporting it here", component)
        elif old is None:
            log.info(
                "%s: no ONNX built from this %s here; exporting it (needs torch + onnxscript)",
                component,
                "weights file" if component == APPEARANCE_COMPONENT else "checkpoint",
            )
        started = time.monotonic()
        model = self.source_model(component)
        export_onnx(
            component_module(model, component, manifest.input_layout),
            manifest.inputs,
            manifest.outputs,
            staged,
            opset=self.options.opset,
            metadata={
                "component": component,
                "weights_sha256": manifest.weights_sha256,
                "model_spec_sha256": manifest.model_spec_sha256,
                "input_layout": manifest.input_layout,
                "zsad_version": manifest.zsad_version,
            },
        )
        size = _size_ok(staged, f"{component} export")
        self.step(
            StepResult(
                component,
                "export",
                "built",
                time.monotonic() - started,
                staged,
                size,
                f"opset {self.options.opset}",
            )
        )
        artifact = OnnxArtifact(
            path=name,
            sha256=file_sha256(staged),
            size=size,
            opset=self.options.opset,
            exporter=EXPORTER,
            build_key=key,
            exported_with=exporting_versions(),
        )
        candidate = manifest.model_copy(update={"onnx": artifact, "tensorrt": None}).bind(self.staging)
        started = time.monotonic()
        with TorchBackend.from_model(candidate, model) as ref, OnnxRuntimeBackend(candidate) as ort:
            errors = check_parity(
                ref,
                ort,
                candidate.inputs,
                candidate.outputs,
                batch_sizes=self.options.parity_batches,
                tolerance=self.options.onnx_tolerance,
                label=f"{component}: torch vs onnxruntime",
                seed=self.options.seed,
            )
        detail = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        self.step(
            StepResult(
                component, "parity torch/onnxruntime", "built", time.monotonic() - started, detail=detail
            )
        )
        record = ParityRecord(
            reference="torch",
            target="onnxruntime",
            batch_sizes=self.options.parity_batches,
            max_rel_error=errors,
            tolerance=self.options.onnx_tolerance,
        )
        return manifest.model_copy(update={"onnx": artifact, "parity": [record]}).bind(self.out)

    def tensorrt_stage(
        self, component: str, manifest: Manifest, previous: Manifest | None, env: _TensorRTEnv
    ) -> Manifest:
        if manifest.onnx is None:
            raise BuildError(f"{component}: no ONNX model to build an engine from")
        opts = self.options
        key = _key(
            stage="tensorrt",
            component=component,
            onnx=manifest.onnx.sha256,
            profile=[opts.profile.min, opts.profile.opt, opts.profile.max],
            workspace_mb=opts.workspace_mb,
            precision=opts.precision,
            tensorrt=env.version,
            gpu=env.gpu.name,
            sm=env.gpu.compute_capability,
            sms=env.gpu.multiprocessor_count,
            tolerance=opts.trt_tolerance,
        )
        old = previous.tensorrt if previous is not None else None
        if (
            not opts.force
            and old is not None
            and old.build_key == key
            and _file_ok(self.out / old.path, old.sha256)
        ):
            self.step(
                StepResult(component, "tensorrt", "up to date", path=self.out / old.path, size=old.size)
            )
            parity = (
                [*manifest.parity, *(p for p in previous.parity if p.target == "tensorrt")]
                if previous
                else []
            )
            return manifest.model_copy(update={"tensorrt": old, "parity": parity}).bind(self.out)
        name = engine_filename(component, opts.precision, env.gpu, env.version)
        cache = timing_cache_filename(env.gpu, env.version)
        staged = self.stage(name)
        # TensorRT builds for this thread's current CUDA device, which is 0 unless set.
        CudaRuntime().call("cudaSetDevice", env.device)
        built = build_engine(
            self.located(manifest).resolve(manifest.onnx.path),
            staged,
            inputs=manifest.inputs,
            profile=opts.profile,
            workspace_mb=opts.workspace_mb,
            fp16=opts.precision == "fp16",
            timing_cache=self.out / cache,
            trt=env.trt,
        )
        size = _size_ok(staged, f"{component} engine")
        self.step(
            StepResult(
                component,
                "tensorrt",
                "built",
                built.seconds,
                staged,
                size,
                f"{len(built.fp32_layers)} layers pinned FP32",
            )
        )
        artifact = TensorRTArtifact(
            path=name,
            sha256=file_sha256(staged),
            size=size,
            tensorrt_version=env.version,
            gpu_name=env.gpu.name,
            compute_capability=env.gpu.compute_capability,
            multiprocessor_count=env.gpu.multiprocessor_count,
            precision=opts.precision,  # type: ignore[arg-type]
            min_batch=opts.profile.min,
            opt_batch=opts.profile.opt,
            max_batch=opts.profile.max,
            workspace_mb=opts.workspace_mb,
            fp32_layers=built.fp32_layers,
            timing_cache=cache,
            build_key=key,
        )
        candidate = manifest.model_copy(update={"tensorrt": artifact}).bind(self.staging)
        batches = sorted({min(max(b, opts.profile.min), opts.profile.max) for b in opts.parity_batches})
        started = time.monotonic()
        with (
            OnnxRuntimeBackend(self.located(manifest)) as ort,
            TensorRTBackend(candidate, device_id=env.device) as engine,
        ):
            errors = check_parity(
                ort,
                engine,
                manifest.inputs,
                manifest.outputs,
                batch_sizes=batches,
                tolerance=opts.trt_tolerance,
                label=f"{component}: onnxruntime vs tensorrt {opts.precision}",
                seed=opts.seed,
            )
        detail = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        self.step(
            StepResult(
                component, "parity onnxruntime/tensorrt", "built", time.monotonic() - started, detail=detail
            )
        )
        record = ParityRecord(
            reference="onnxruntime",
            target="tensorrt",
            batch_sizes=tuple(batches),
            max_rel_error=errors,
            tolerance=opts.trt_tolerance,
        )
        if old is not None:
            self._obsolete.add(old.path)  # kept by commit when the new engine has its name
        return manifest.model_copy(update={"tensorrt": artifact, "parity": [*manifest.parity, record]}).bind(
            self.out
        )

    def keep_tensorrt(self, component: str, manifest: Manifest, previous: Manifest | None) -> Manifest:
        """Without TensorRT here, keep an engine built earlier from the same ONNX (the device checks it at
        run time); drop an engine whose ONNX has changed."""
        old = previous.tensorrt if previous is not None else None
        if old is None or previous is None or manifest.onnx is None:
            return manifest
        same_onnx = previous.onnx is not None and previous.onnx.sha256 == manifest.onnx.sha256
        if same_onnx and _file_ok(self.out / old.path, old.sha256):
            parity = [*manifest.parity, *(p for p in previous.parity if p.target == "tensorrt")]
            return manifest.model_copy(update={"tensorrt": old, "parity": parity}).bind(self.out)
        self._obsolete.add(old.path)
        self.step(
            StepResult(
                component,
                "tensorrt",
                "removed",
                path=self.out / old.path,
                detail="its ONNX changed; rebuild on the device",
            )
        )
        return manifest

    def text_stage(self, manifest: Manifest, previous: Manifest | None) -> Manifest:
        """The semantic head's prompt embeddings (``text_<context>.npy``), gated by each context's vector."""
        context_embs = self.meta.get("context_embeddings") or {}
        return self._prompt_stage(
            manifest,
            previous,
            clip_source=str(self.spec.semantic.clip_text_model),
            identity={"weights": self.weights_sha, "spec": self.spec_sha},
            prefix="text",
            source=lambda context: "checkpoint" if context in context_embs else "zero-embedding",
            embed=lambda prompt_set, context: self.gated_text(prompt_set, context_embs.get(context)),
            # The context vectors live in the checkpoint's sidecar, outside the weights' hash.
            context_key=lambda context: _key(vector=context_embs.get(context)),
        )

    def _shipped_semantic_head(self) -> bool:
        """Whether the folder holds a semantic head with prompt embeddings while ``clip_text_model`` names a
        CLIP folder that is not on this machine: engines built elsewhere and shipped, the device building
        TensorRT from them. Its head is rebuilt from the checkpoint (no CLIP needed); its embeddings can
        only be kept."""
        previous = self.existing("semantic_head")
        if not self.spec.semantic.clip_text_model or previous is None or not previous.text_embeddings:
            return False
        log.warning(
            "CLIP folder %s is not on this machine: the semantic head in %s is built from the checkpoint and "
            "its prompt embeddings are kept as they were built elsewhere",
            self.spec.semantic.clip_text_model,
            self.out,
        )
        return True

    def kept_text_stage(self, manifest: Manifest, previous: Manifest) -> Manifest:
        """``manifest`` with the shipped prompt embeddings of ``previous`` (see
        :meth:`_shipped_semantic_head`), each checked to be what the text stage would build here: the same
        weights and model, the same prompt file, an intact file. Raises :class:`BuildInputError` naming what
        would need CLIP to embed again."""
        clip = self.spec.semantic.clip_text_model
        need = f"copy the CLIP folder {clip} here, or build the engines where it is"
        if previous.weights_sha256 != self.weights_sha or previous.model_spec_sha256 != self.spec_sha:
            raise BuildInputError(
                f"{previous.path}: its prompt embeddings were built for other weights or another model, and "
                f"they cannot be embedded again without CLIP: {need}"
            )
        old = {t.context: t for t in previous.text_embeddings}
        context_embs = self.meta.get("context_embeddings") or {}
        entries = []
        for context, set_name in sorted(self.contexts.items()):
            entry = old.get(context)
            prompt_set = self.prompt_set(set_name)
            # Gated by the checkpoint's context vector or a zero one: the kind must be this checkpoint's
            # (a changed vector of the same kind cannot be told without CLIP; said in docs/engines.md).
            source = "checkpoint" if context in context_embs else "zero-embedding"
            if entry is None or entry.prompt_sha256 != prompt_set.sha256 or entry.context_source != source:
                why = (
                    "has none"
                    if entry is None
                    else "was embedded from other prompts"
                    if entry.prompt_sha256 != prompt_set.sha256
                    else f"was gated by a {entry.context_source} vector, this checkpoint gives a {source} one"
                )
                raise BuildInputError(
                    f"{previous.path}: context {context}'s prompt embeddings: the folder {why} "
                    f"({prompt_set.path}), and they cannot be embedded without CLIP: {need}"
                )
            path = self.out / entry.path
            if not _file_ok(path, entry.sha256):
                raise BuildInputError(f"{path} is missing or changed since the build: {need}")
            size = path.stat().st_size
            self.step(StepResult("semantic_head", f"text[{context}]", "up to date", 0.0, path, size, "kept"))
            entries.append(entry)
        return manifest.model_copy(update={"text_embeddings": entries})

    def appearance_text_stage(self, manifest: Manifest, previous: Manifest | None) -> Manifest:
        """The CLIP appearance engine's prompt embeddings (``appearance_text_<context>.npy``): the same
        folder's text tower, L2-normalised and ungated, in the space of the engine's image embedding."""
        source = self.appearance_source
        folder = clip_folder(source.weights)
        return self._prompt_stage(
            manifest,
            previous,
            clip_source=str(folder),
            identity={"weights": source.sha256, "spec": manifest.model_spec_sha256},
            prefix=f"{APPEARANCE_COMPONENT}_text",
            source=lambda context: "ungated",
            embed=lambda prompt_set, context: self.clip_text(folder, prompt_set, source.embed_dim),
            # The encoder's weights identity covers model.safetensors (and config.json, hashed again here).
            weights_sha256=source.sha256,
        )

    def _prompt_stage(
        self,
        manifest: Manifest,
        previous: Manifest | None,
        *,
        clip_source: str,
        identity: Mapping[str, str],
        prefix: str,
        source: Callable[[str], str],
        embed: Callable[[PromptSet, str], np.ndarray],
        weights_sha256: str | None = None,
        context_key: Callable[[str], str] | None = None,
    ) -> Manifest:
        """``manifest`` with one ``<prefix>_<context>.npy`` of prompt embeddings per camera context
        (``embed(prompt_set, context)``), each rebuilt only when its prompts, the CLIP folder or ``identity``
        changed; files of contexts no camera has any more are removed. ``weights_sha256``: the CLIP folder's
        weights identity when the build hashed it already (:func:`_clip_identity`)."""
        component = manifest.component
        clip_id = _clip_identity(Path(clip_source).expanduser(), weights_sha256)
        old = {t.context: t for t in previous.text_embeddings} if previous is not None else {}
        entries = []
        for context, set_name in sorted(self.contexts.items()):
            prompt_set = self.prompt_set(set_name)
            kind = source(context)
            key = _key(
                stage="text",
                **identity,
                prompts=prompt_set.sha256,
                prompt_set=prompt_set.context,
                clip=clip_id,
                source=kind,
                **({"context": context_key(context)} if context_key is not None else {}),
            )
            prev = old.get(context)
            if (
                not self.options.force
                and prev is not None
                and prev.build_key == key
                and _file_ok(self.out / prev.path, prev.sha256)
            ):
                self.step(
                    StepResult(
                        component,
                        f"text[{context}]",
                        "up to date",
                        path=self.out / prev.path,
                        size=(self.out / prev.path).stat().st_size,
                    )
                )
                entries.append(prev)
                continue
            started = time.monotonic()
            emb = embed(prompt_set, context)
            name = f"{prefix}_{context}.npy"
            path = self.stage(name)
            _save_npy(path, emb)
            size = _size_ok(path, f"text embeddings of {context}")
            self.step(
                StepResult(
                    component,
                    f"text[{context}]",
                    "built",
                    time.monotonic() - started,
                    path,
                    size,
                    f"{len(prompt_set.normal)}+{len(prompt_set.anomalous)} prompts, {kind}",
                )
            )
            entries.append(
                TextEmbeddings(
                    context=context,
                    prompt_set=prompt_set.context,
                    prompt_file=str(prompt_set.path),
                    prompt_sha256=prompt_set.sha256,
                    normal=len(prompt_set.normal),
                    anomalous=len(prompt_set.anomalous),
                    path=name,
                    sha256=file_sha256(path),
                    shape=(int(emb.shape[0]), int(emb.shape[1])),
                    context_source=kind,  # type: ignore[arg-type]
                    clip_model=clip_source,
                    build_key=key,
                )
            )
        self._obsolete.update(stale.path for stale in old.values())  # commit keeps those still named
        return manifest.model_copy(update={"text_embeddings": entries}).bind(self.out)

    def prompt_set(self, name: str) -> PromptSet:
        path = self.prompt_dir / f"{name}.yaml"
        if not path.is_file():
            log.info("no prompt file %s; using generic prompts", path)
            path = self.prompt_dir / "generic.yaml"
        try:
            return load_prompt_set(path)
        except PromptError as exc:
            raise BuildInputError(str(exc)) from exc

    def text_encoder(self, source: str) -> TextEncoder:
        """The CLIP text tower of the folder ``source``, loaded on first use (one per folder). A local folder
        without a tokenizer is refused: transformers would build one of its two special tokens, without a
        word, and every prompt would embed the same."""
        from engines.semantic import TextEncoder, TextEncoderError

        why = tokenizer_missing(source)
        if why is not None:
            raise BuildInputError(why)
        if source not in self._text_encoders:
            try:
                self._text_encoders[source] = TextEncoder(source)
            except TextEncoderError as exc:
                raise BuildInputError(str(exc)) from exc
        return self._text_encoders[source]

    def clip_text(self, folder: Path, prompt_set: PromptSet, embed_dim: int) -> np.ndarray:
        """``(P, embed_dim)`` float32: ``prompt_set``'s prompts through the text tower of the CLIP ``folder``,
        L2-normalised, not gated (the appearance engine's image embedding is CLIP's own, untrained by us)."""
        text_encoder = self.text_encoder(str(folder))
        if text_encoder.embed_dim != embed_dim:
            raise BuildInputError(
                f"appearance engine: {folder}'s text tower embeds to {text_encoder.embed_dim} dims, its "
                f"image embedding to {embed_dim}"
            )
        try:
            out = text_encoder.encode(list(prompt_set.prompts)).numpy().astype(np.float32)
        except (ValueError, RuntimeError) as exc:  # transformers refuses prompts its tower cannot take
            raise BuildInputError(
                f"appearance engine: {folder}'s text tower cannot embed the prompts of "
                f"{prompt_set.context}: {exc}"
            ) from exc
        if not np.isfinite(out).all():
            raise BuildError(f"appearance engine: text embeddings of {prompt_set.context} are not finite")
        return out

    def gated_text(self, prompt_set: PromptSet, context_embedding: Sequence[float] | None) -> np.ndarray:
        """``(P, d)`` float32, L2-normalised prompt embeddings gated by the context's mean context vector.

        The context vector is ``model.context`` of the context's mean backbone embedding when the checkpoint
        records one (``context_embeddings`` in its metadata), else of a zero embedding (the bias alone).
        """
        import torch

        text_encoder = self.text_encoder(str(self.spec.semantic.clip_text_model))
        want = self.spec.semantic.embed_dim
        if text_encoder.embed_dim != want:
            raise BuildInputError(
                f"CLIP text model embeds to {text_encoder.embed_dim} dims, model.semantic.embed_dim is {want}"
            )
        d = self.model.backbone.hidden_size
        emb = (
            torch.zeros(1, d)
            if context_embedding is None
            else torch.tensor([list(context_embedding)], dtype=torch.float32)
        )
        if emb.shape != (1, d):
            raise BuildInputError(
                f"checkpoint context embedding has shape {tuple(emb.shape)}, expected (1, {d})"
            )
        with torch.no_grad():
            text = text_encoder.encode(list(prompt_set.prompts))
            gated = self.model.context_gate(text, self.model.context(emb))[0]
        out = gated.numpy().astype(np.float32)
        if not np.isfinite(out).all():
            raise BuildError(f"text embeddings of {prompt_set.context} are not finite")
        return out

    def gate_stage(self) -> None:
        previous = self.existing("stream_gate")
        manifest = self.base_manifest("stream_gate")
        key = _key(stage="gate", weights=self.weights_sha, spec=self.spec_sha, streams=list(STREAMS))
        old = previous.files[0] if previous is not None and previous.files else None
        if (
            not self.options.force
            and old is not None
            and old.build_key == key
            and _file_ok(self.out / old.path, old.sha256)
        ):
            self.step(StepResult("stream_gate", "npz", "up to date", path=self.out / old.path, size=old.size))
            self.write(manifest.model_copy(update={"files": [old]}).bind(self.out), previous)
            return
        started = time.monotonic()
        W, b = compose_stream_gate(self.model)
        path = self.out / "stream_gate.npz"
        tmp = self.out / "stream_gate.tmp.npz"
        try:
            StreamGate(W, b, STREAMS).save(tmp)  # the runtime gate writes the file it reads
        except GateError as exc:
            raise BuildError(f"stream gate: {exc}") from exc
        tmp.replace(path)
        size = _size_ok(path, "stream gate")
        self.step(
            StepResult(
                "stream_gate",
                "npz",
                "built",
                time.monotonic() - started,
                path,
                size,
                f"W {W.shape[0]}x{W.shape[1]}",
            )
        )
        artifact = FileArtifact(
            kind="stream_gate", path=path.name, sha256=file_sha256(path), size=size, build_key=key
        )
        self.write(manifest.model_copy(update={"files": [artifact]}).bind(self.out), previous)

    def remove_stale(self, component: str) -> None:
        previous = self.existing(component)
        path = manifest_path(self.out, component)
        if previous is None and not path.exists():
            return
        if previous is not None:
            for _, rel, _ in previous.artifacts():
                (self.out / rel).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        self.step(StepResult(component, "cleanup", "removed", detail="stream is off in this config"))

    # -- the run -----------------------------------------------------------------------------------------

    def run(self) -> BuildReport:
        self.options.validate()
        self.load_meta()
        env = self.tensorrt_env()
        self.out.mkdir(parents=True, exist_ok=True)
        # One build at a time into a folder (zsad build-engines, a first run's build): they share the
        # staging folder, and each removes it when it ends.
        with build_lock(self.out, lambda: log.info("another build is writing %s: waiting for it", self.out)):
            return self._run(env)

    def _run(self, env: _TensorRTEnv | None) -> BuildReport:
        semantic = self.semantic_enabled()
        wanted = self.options.components
        plan = [
            c
            for c in ("backbone", "dpc_head", "semantic_head", "stream_gate", APPEARANCE_COMPONENT)
            if wanted is None or c in wanted
        ]
        shipped_texts = not semantic and "semantic_head" in plan and self._shipped_semantic_head()
        if shipped_texts:
            semantic = True  # built from the checkpoint; its prompt embeddings kept as shipped
        if not semantic and "semantic_head" in plan:
            plan.remove("semantic_head")
            if wanted is None:
                self.remove_stale("semantic_head")
        # None: this build is not about the appearance engine (one there is left alone); a config with
        # appearance.enabled: false removes it, as the semantic head is removed when CLIP is off.
        if APPEARANCE_COMPONENT in plan and (self.appearance is None or not self.appearance.enabled):
            plan.remove(APPEARANCE_COMPONENT)
            if wanted is None and self.appearance is not None:
                self.remove_stale(APPEARANCE_COMPONENT)
        if APPEARANCE_COMPONENT in plan and self.appearance is not None:
            self.find_appearance_weights(self.appearance)
        for i, component in enumerate(plan, 1):
            log.info("[%d/%d] %s", i, len(plan), component)
            if self.progress is not None:
                self.progress(i - 1, len(plan), component)
            if component == "stream_gate":
                self.gate_stage()
                continue
            previous = self.existing(component)
            self._staged, self._obsolete = {}, set()
            manifest = self.onnx_stage(component, self.base_manifest(component), previous)
            if env is not None:
                manifest = self.tensorrt_stage(component, manifest, previous, env)
            else:
                manifest = self.keep_tensorrt(component, manifest, previous)
            if component == "semantic_head" and shipped_texts and previous is not None:
                manifest = self.kept_text_stage(manifest, previous)
            elif component == "semantic_head":
                manifest = self.text_stage(manifest, previous)
            elif component == APPEARANCE_COMPONENT and self.appearance_source.embed_dim:
                manifest = self.appearance_text_stage(manifest, previous)
            elif component == APPEARANCE_COMPONENT and previous is not None:
                # Built with an embedding that is gone now.
                self._obsolete.update(stale.path for stale in previous.text_embeddings)
            self.commit(manifest, previous)
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.progress is not None:
            self.progress(len(plan), len(plan), "done")
        return self.report


def compose_stream_gate(model: ZsadModel) -> tuple[np.ndarray, np.ndarray]:
    """The stream gate applied to the backbone embedding in one step: ``W = Wg @ Wc`` ``(S, D)``,
    ``b = Wg @ bc + bg`` ``(S,)``, where ``Wc, bc`` is ``model.context`` and ``Wg, bg`` the gate's linear."""
    wc = model.context.weight.detach().double().numpy()
    bc = model.context.bias.detach().double().numpy()
    wg = model.stream_gate.linear.weight.detach().double().numpy()
    bg = model.stream_gate.linear.bias.detach().double().numpy()
    return (wg @ wc).astype(np.float32), (wg @ bc + bg).astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))
    tmp.replace(path)


def _clip_identity(folder: Path, weights_sha256: str | None = None) -> str:
    """Hash of a CLIP folder's config, tokenizer and weight files (what decides the text embeddings). With
    ``weights_sha256`` (the weights' identity, hashed already), the weight files are not read again: a
    CLIP's are gigabytes, and this runs on every build."""
    h = hashlib.sha256()
    weights = (".safetensors", ".bin")
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix not in (*weights, ".json", ".txt"):
            continue
        if weights_sha256 is not None and p.suffix in weights:
            continue
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    if weights_sha256 is not None:
        h.update(f"weights:{weights_sha256}".encode())
    return h.hexdigest()


def build_engines(
    spec: ModelConfig,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    contexts: Mapping[str, str] | None = None,
    options: BuildOptions | None = None,
    prompt_dir: str | Path = PROMPT_DIR,
    progress: BuildProgress | None = None,
    appearance: AppearanceConfig | None = None,
    gpu_id: int = 0,
) -> BuildReport:
    """Build every engine of ``checkpoint`` into ``out_dir``; skip what is up to date.

    Args:
        spec: the config's ``model`` section (must match the checkpoint's spec apart from local paths).
        checkpoint: safetensors checkpoint written by :func:`engines.model.save_checkpoint`.
        out_dir: engine folder (ONNX, engines, ``.npy``/``.npz`` and manifests).
        contexts: ``{context: prompt set}`` of the cameras (see :func:`camera_contexts`); default generic.
        options: see :class:`BuildOptions`.
        prompt_dir: folder of ``<prompt set>.yaml`` files.
        progress: called as each component starts and at the end (see :data:`BuildProgress`).
        appearance: the config's ``appearance`` section: when enabled, the appearance engine is built too
            (at the backbone's frame size, from the encoder's weights); when disabled, one left in
            ``out_dir`` is removed; None leaves the appearance engine alone.
        gpu_id: the CUDA device TensorRT engines are built for, on, and checked on (the config's
            ``deepstream.gpu_id``, the device the run gives them).

    Raises:
        BuildInputError: bad checkpoint/spec/options/prompts, a missing TensorRT when required, or (with
            ``appearance`` enabled) appearance weights that cannot be found or read.
        ParityError: a runtime disagrees with its reference beyond the tolerance.
        BuildError, ExportError, TensorRTBuildError: a step failed.
    """
    builder = _Builder(
        spec,
        Path(checkpoint),
        Path(out_dir),
        contexts or {"generic": "generic"},
        options or BuildOptions(),
        Path(prompt_dir),
        progress,
        appearance,
        gpu_id,
    )
    return builder.run()


_held = threading.local()  # .dirs: the engine folders whose build lock this thread holds


@contextlib.contextmanager
def build_lock(directory: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the engine folder's :data:`BUILD_LOCK` (the folder is made if missing); ``on_wait`` is called
    once if another holder has it, before waiting for it. Re-entrant within a thread (a first run holds it
    while it decides to build, then the build asks again); other threads and processes wait. ``OSError``
    when the folder cannot be written."""
    key = directory.resolve()
    dirs: set[Path] = getattr(_held, "dirs", set())
    _held.dirs = dirs
    if key in dirs:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / BUILD_LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        dirs.add(key)
        try:
            yield
        finally:
            dirs.discard(key)  # closing the file releases the lock


def build_from_config(
    cfg: ZsadConfig,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    options: BuildOptions | None = None,
    progress: BuildProgress | None = None,
) -> BuildReport:
    """:func:`build_engines` for a loaded :class:`core.config.ZsadConfig`: its ``model`` section, its
    cameras' contexts and prompt sets, its ``appearance`` section, its ``deepstream.gpu_id`` (the GPU the
    run gives the engines), and ``engines.checkpoint`` / ``engines.dir`` unless ``checkpoint`` / ``out_dir``
    are given."""
    checkpoint = checkpoint or cfg.engines.checkpoint
    if not checkpoint:
        raise BuildInputError("no checkpoint: pass --checkpoint or set engines.checkpoint in the config")
    cameras = [(c.context, c.prompts) for c in (cfg.camera_settings(cam.id) for cam in cfg.cameras)]
    contexts = camera_contexts(cameras or [(cfg.defaults.context, cfg.defaults.prompts)])
    return build_engines(
        cfg.model,
        checkpoint,
        out_dir or cfg.engines.dir,
        contexts=contexts,
        options=options,
        progress=progress,
        appearance=cfg.appearance,
        gpu_id=cfg.deepstream.gpu_id,
    )
