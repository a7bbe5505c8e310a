"""The engines a run needs, checked against the config, and the clip inference the scheduler calls.

``build_missing_engines`` builds the CPU (ONNX Runtime) engines of a first run from ``engines.checkpoint``
when the engine folder holds none yet; ``load_engines`` refuses to start on a missing engine or a manifest
that does not match the config.
``ClipInference`` is the ONNX Runtime / TensorRT path of the CPU graph and of the DeepStream graph: the
shared normalisation (``plugins.preprocess``), the backbone, then the shared ``plugins.scorer.ClipScorer``
(the DPC head, batched across cameras), ``plugins.semantic.SemanticScorer`` (the semantic stream) and, for the
cameras with a normal memory, the appearance stream (``plugins.appearance``: the appearance engine on each
scored clip's last frame, batched across the call's clips, scored against the camera's memory), and, for the
cameras with a stationary model, the stationary stream (``plugins.stationary``: no engine; each camera's
short-term window takes its clips' frames ``stationary.spacing_s`` apart), and, for the cameras with an
objects model, the objects stream (``plugins.objects``: no engine; each camera's blobs and tracks take its
clips' frames ``objects.spacing_s`` apart). Both memory streams are fed by ``pipeline.memory_streams``.
With ``appearance.enabled`` the engine set also holds the appearance encoder (``EngineSet.appearance``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import threading
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ZsadConfig
from engines.backends import load_backend
from engines.backends.base import Backend, BackendError, BackendUnavailable
from engines.build import (
    BuildError,
    BuildInputError,
    BuildOptions,
    BuildProgress,
    BuildReport,
    build_from_config,
    build_lock,
)
from engines.encoders import (
    APPEARANCE_COMPONENT,
    APPEARANCE_EMBEDDING,
    APPEARANCE_FEATURES,
    APPEARANCE_FRAMES,
    WEIGHTS_INSTALL,
)
from engines.export import ExportError, ParityError
from engines.manifest import (
    Expectation,
    Manifest,
    ManifestError,
    ManifestMismatch,
    check_manifest,
    load_manifest,
    manifest_path,
    spec_diff,
    spec_sha256,
    verify_files,
)
from engines.prompts import PROMPT_DIR, PromptError, load_prompt_set
from pipeline.clips import Clip, to_model_input
from pipeline.memory_streams import MemoryFeed, ObjectsFeed, StationaryFeed
from plugins.appearance import (
    AppearanceError,
    AppearanceMemories,
    AppearanceMemory,
    MemoryExpectation,
    appearance_map,
    pool_factor,
)
from plugins.fusion import GateError, StreamGate
from plugins.objects import ObjectsModels
from plugins.preprocess import Normaliser, to_layout
from plugins.scorer import ClipScorer, ClipTokens, StreamScores
from plugins.semantic import (
    PromptBank,
    PromptBanks,
    SemanticError,
    SemanticMatch,
    SemanticScorer,
    match_prompts,
)
from plugins.stationary import StationaryModels
from plugins.streams import APPEARANCE, SEMANTIC
from plugins.zones import CellFilters

log = logging.getLogger(__name__)

__all__ = [
    "ClipInference",
    "ClipResult",
    "EngineBuildError",
    "EngineError",
    "EngineSet",
    "appearance_expectation",
    "backend_options",
    "build_missing_engines",
    "check_engine_folder",
    "engine_batch_limit",
    "engines_model_id",
    "engines_semantic_source",
    "load_engines",
    "model_identity",
    "semantic_scorer",
]

REQUIRED_COMPONENTS = ("backbone", "dpc_head")


class EngineError(RuntimeError):
    """The engines of a run are missing or do not match its config; the message says which and why."""


class EngineBuildError(RuntimeError):
    """Building the missing engines of a first run failed (export, parity); the message says where."""


def build_missing_engines(cfg: ZsadConfig, *, progress: BuildProgress | None = None) -> BuildReport | None:
    """On a first run, build the CPU engines of ``cfg`` (ONNX Runtime; the ``torch`` backend reads the
    same manifests) from ``engines.checkpoint`` into ``engines.dir``. Returns None when the required
    manifests are there (then :func:`load_engines` checks them), the build report when it built.

    The build includes the appearance engine when ``appearance.enabled`` (from the encoder's weights file,
    whose absence is refused with how to install it or turn the stream off). It only ever builds into a
    folder that holds no engine yet: engines that are there but damaged, incomplete or built for another
    model are never rebuilt silently (they are refused with what to run).
    TensorRT engines are not built here: they are built on the device that runs them.

    Raises:
        EngineError: the engines cannot be built here (no checkpoint, TensorRT, no PyTorch, an
            incomplete folder, a checkpoint that does not fit the config); the message says what to do.
        EngineBuildError: the build itself failed (export, parity).
    """
    directory = Path(cfg.engines.dir)
    missing = [c for c in REQUIRED_COMPONENTS if not manifest_path(directory, c).is_file()]
    if not missing:
        return None
    refusal = _build_refusal(cfg, directory, missing)
    if refusal is not None:
        raise EngineError(refusal)
    checkpoint = cfg.engines.checkpoint
    # Two first runs on one folder (a service restart and a manual run), or a run and zsad build-engines,
    # would share the build's staging folder; the second waits, then finds them built.
    held = contextlib.ExitStack()
    try:
        held.enter_context(
            build_lock(
                directory,
                lambda: log.info("another run is building the engines in %s: waiting for it", directory),
            )
        )
    except OSError as exc:
        raise EngineError(f"engines.dir {directory} cannot be written: {exc.strerror or exc}") from exc
    with held:
        if all(manifest_path(directory, c).is_file() for c in REQUIRED_COMPONENTS):
            log.info("engines in %s were built by another run while this one waited", directory)
            return None
        log.info("no engines in %s yet: building them from %s (first run)", directory, checkpoint)
        try:
            return build_from_config(cfg, options=BuildOptions(backend="onnxruntime"), progress=progress)
        except (BuildInputError, BackendUnavailable) as exc:
            raise EngineError(f"cannot build the engines in {directory} from {checkpoint}: {exc}") from exc
        except (BuildError, ExportError, ParityError, ManifestError, BackendError, OSError) as exc:
            raise EngineBuildError(f"building the engines in {directory} from {checkpoint}: {exc}") from exc


def _build_refusal(cfg: ZsadConfig, directory: Path, missing: Sequence[str]) -> str | None:
    """Why a first run cannot build the ``missing`` required engines of ``directory`` here (None: it can)."""
    first = manifest_path(directory, missing[0])
    if directory.exists() and not directory.is_dir():
        return f"engines.dir {directory} is a file, not a folder: point engines.dir at a folder"
    build = f"zsad build-engines --config CONFIG --checkpoint CKPT --out {directory}"
    if cfg.engines.backend == "tensorrt":
        return (
            f"engine manifest {first} is missing: TensorRT engines are never built by zsad run; build them "
            f"on the device that runs them: zsad build-engines --config CONFIG --backend tensorrt "
            f"--out {directory}"
        )
    if len(missing) < len(REQUIRED_COMPONENTS):
        return (
            f"engine manifest {first} is missing but {directory} holds other engines (an interrupted or "
            f"partial build): complete it with {build} (it keeps what is up to date)"
        )
    checkpoint = cfg.engines.checkpoint
    if not checkpoint:
        return (
            f"engine manifest {first} is missing: set engines.checkpoint in the config so that the first "
            f"run builds the engines, or build them first ({build})"
        )
    if not Path(checkpoint).is_file():
        kind = "is a folder" if Path(checkpoint).is_dir() else "does not exist"
        return (
            f"engine manifest {first} is missing and engines.checkpoint {checkpoint} {kind}: the first run "
            f"cannot build the engines from it"
        )
    if importlib.util.find_spec("torch") is None:
        return (
            f"engine manifest {first} is missing and this machine cannot build engines (PyTorch is not "
            f"installed: pip install -r requirements/train.txt); or build them elsewhere ({build}) and copy "
            f"{directory} here"
        )
    return None


def engine_folder_problem(cfg: ZsadConfig) -> str | None:
    """Why a run of ``cfg`` would refuse its engines (None: it would open them, or build them on a first
    run), from their manifests and files alone, without opening one: what ``zsad validate`` says before a
    run. The same checks as :func:`load_engines` and :func:`build_missing_engines`."""
    directory = Path(cfg.engines.dir)
    missing = [c for c in REQUIRED_COMPONENTS if not manifest_path(directory, c).is_file()]
    if missing:
        return _build_refusal(cfg, directory, missing)
    try:
        check_engine_folder(cfg, directory, checked_manifests(cfg, directory))
    except (EngineError, ManifestError) as exc:
        return str(exc)
    except OSError as exc:  # a file of the folder that cannot be read (hashing it)
        return f"{exc.filename or directory}: cannot be read: {exc.strerror or exc}"
    return None


def checked_manifests(cfg: ZsadConfig, directory: Path) -> dict[str, Manifest]:
    """The manifests of the engines a run of ``cfg`` opens from ``directory`` (component -> manifest), each
    checked against the config and its files against their recorded hashes: the backbone and the DPC head,
    the appearance encoder when ``appearance.enabled``, the semantic head when there is one and the CLIP
    appearance engine does not feed the semantic stream. Raises :class:`EngineError` (a manifest missing)
    or :class:`ManifestError`."""
    manifests: dict[str, Manifest] = {}
    for component in REQUIRED_COMPONENTS:
        path = manifest_path(directory, component)
        if not path.is_file():
            raise EngineError(
                f"engine manifest {path} is missing: build the engines first "
                f"(zsad build-engines --config CONFIG --checkpoint CKPT --out {directory})"
            )
        manifest = load_manifest(path)
        check_manifest(manifest, Expectation(model_spec=cfg.model, backend=cfg.engines.backend))
        manifests[component] = manifest  # its weights against engines.checkpoint: check_engine_folder
    if cfg.appearance.enabled:
        manifests[APPEARANCE_COMPONENT] = _appearance_manifest(cfg, directory)
    image_semantic = APPEARANCE_COMPONENT in manifests and _gives_embedding(
        cfg, manifests[APPEARANCE_COMPONENT]
    )
    sem_path = manifest_path(directory, "semantic_head")
    if sem_path.is_file() and not image_semantic:
        manifest = load_manifest(sem_path)
        check_manifest(manifest, Expectation(model_spec=cfg.model, backend=cfg.engines.backend))
        manifests["semantic_head"] = manifest
    return manifests


@dataclass
class EngineSet:
    """Opened backends plus what the fusion needs (gate, prompt embeddings), all checked."""

    backbone: Backend
    dpc: Backend
    frame_size: tuple[int, int]  # (width, height) the backbone takes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_id: str
    gate_path: Path | None = None
    semantic: Backend | None = None
    texts: dict[str, PromptBank] = field(default_factory=dict)
    input_layout: str = "NTCHW"  # the backbone's clip layout (plugins.preprocess.LAYOUTS)
    # The appearance encoder (appearance.enabled): frames (N, 3, H, W) at frame_size, normalised with its own
    # mean/std (ImageNet's, not the backbone's), -> features (N, C, h, w) on the grid appearance_grid (h, w).
    appearance: Backend | None = None
    appearance_mean: tuple[float, float, float] | None = None
    appearance_std: tuple[float, float, float] | None = None
    appearance_grid: tuple[int, int] | None = None
    # With a CLIP appearance engine that gives image embeddings: each context's prompts, embedded by the same
    # CLIP's text tower. The semantic stream then comes from the appearance engine, not a semantic head.
    appearance_texts: dict[str, PromptBank] = field(default_factory=dict)

    @property
    def semantic_source(self) -> str | None:
        """Where this run's semantic stream comes from (``plugins.fusion.SEMANTIC_SOURCES``), None without
        one: a calibration records it, and a run refuses one fitted on the other source."""
        if self.appearance_texts:
            return "appearance"
        return "head" if self.semantic is not None else None

    @property
    def backends(self) -> list[Backend]:
        """Every opened engine: backbone, DPC head, then the optional semantic head and appearance encoder."""
        return [b for b in (self.backbone, self.dpc, self.semantic, self.appearance) if b is not None]

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def engine_batch_limit(engines: EngineSet) -> int | None:
    """The largest batch every engine takes (a TensorRT profile's ``max_batch``), or None without a limit.
    Both graphs and ``zsad calibrate`` batch no more clips than this."""
    limits = [
        int(limit)
        for backend in (engines.backbone, engines.dpc, engines.semantic, engines.appearance)
        if backend is not None and (limit := getattr(backend, "max_batch", None))
    ]
    return min(limits) if limits else None


def _check_weights(cfg: ZsadConfig, manifest: Manifest) -> None:
    """Refuse (:class:`ManifestMismatch`) engines built from other weights than ``engines.checkpoint``, when
    that checkpoint is here: a retrained checkpoint of the same model would otherwise run with the old
    engines without a word. Its identity is the sha256 its sidecar (``<checkpoint>.json``, written by
    ``zsad train``) records, so a start reads no weights. A checkpoint that is not on this machine (engines
    copied to a device) or has no sidecar is not compared."""
    checkpoint = cfg.engines.checkpoint
    if not checkpoint:
        return
    sidecar = Path(checkpoint).with_suffix(Path(checkpoint).suffix + ".json")
    try:
        recorded = json.loads(sidecar.read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        log.debug(
            "engines.checkpoint %s has no readable sidecar here: not compared with the engines", checkpoint
        )
        return
    if isinstance(recorded, str) and recorded and recorded != manifest.weights_sha256:
        raise ManifestMismatch(
            f"{manifest.path}: weights_sha256: built from weights {manifest.weights_sha256[:12]} "
            f"({manifest.checkpoint}), engines.checkpoint {checkpoint} has {recorded[:12]}"
        )


def _check_one_build(manifests: Mapping[str, Manifest]) -> None:
    """Refuse (:class:`ManifestMismatch`) model components built from different weights: a build that failed
    or was stopped part way leaves the components it finished beside the old ones (the appearance encoder
    has its own weights and is not among them)."""
    shas = {m.weights_sha256 for m in manifests.values()}
    if len(shas) > 1:
        which = ", ".join(f"{c} {m.weights_sha256[:12]}" for c, m in manifests.items())
        directory = next(iter(manifests.values())).path.parent
        raise ManifestMismatch(
            f"{directory}: weights_sha256: the engines were built from different weights ({which}): a "
            "build failed or was stopped part way; run zsad build-engines again"
        )


@dataclass(frozen=True)
class FolderCheck:
    """What :func:`check_engine_folder` read: the stream gate's file (None: no gate) and, per component
    whose prompts a run would read, its prompt embeddings by context."""

    gate: Path | None
    texts: dict[str, dict[str, PromptBank]]


def check_engine_folder(cfg: ZsadConfig, directory: Path, manifests: Mapping[str, Manifest]) -> FolderCheck:
    """The checks of an engine folder that do not open an engine, shared by :func:`load_engines` and the
    device's "are the engines current?" (:func:`pipeline.deepstream.engine_cache.engines_current`):
    ``manifests`` (component -> manifest, each checked against the config already) are built from
    ``engines.checkpoint`` and from one build, their prompt files are those they were built from, and the
    stream gate fits. Raises :class:`ManifestError` or :class:`EngineError`. A semantic head the run would
    not use (the CLIP appearance engine feeds the semantic stream) is not checked."""
    appearance = manifests.get(APPEARANCE_COMPONENT)
    if appearance is not None and _feeds_semantic(cfg, appearance):
        manifests = {c: m for c, m in manifests.items() if c != "semantic_head"}
    texts: dict[str, dict[str, PromptBank]] = {}
    for component, manifest in manifests.items():
        if component != APPEARANCE_COMPONENT:
            _check_weights(cfg, manifest)
            texts[component] = _load_texts(manifest)
        elif _feeds_semantic(cfg, manifest):  # the appearance engine's prompts are read only then
            texts[component] = _load_texts(manifest)
    model = {c: m for c, m in manifests.items() if c != APPEARANCE_COMPONENT}
    gate = _checked_gate(cfg, directory)
    if gate is not None:
        model["stream_gate"] = load_manifest(manifest_path(directory, "stream_gate"))
    _check_one_build(model)
    return FolderCheck(gate, texts)


def _checked_gate(cfg: ZsadConfig, directory: Path) -> Path | None:
    """The stream gate of the engine folder, checked as the engines are: its manifest's model spec against
    the config, its file against the manifest's hash, and the gate itself (it loads, and takes the
    backbone's embedding). None when the folder has neither gate nor manifest (equal weights, said in the
    log); :class:`ManifestError` or :class:`EngineError` when what is there cannot be used."""
    gate = directory / "stream_gate.npz"
    path = manifest_path(directory, "stream_gate")
    if not path.is_file():
        if gate.is_file():
            raise EngineError(
                f"{gate} has no manifest ({path}): it cannot be checked against this model; rebuild the "
                f"engines (zsad build-engines --config CONFIG --out {directory})"
            )
        log.info("no stream gate in %s: the context gate weighs the streams equally", directory)
        return None
    manifest = load_manifest(path)
    if manifest.model_spec_sha256 != spec_sha256(cfg.model):
        diffs = spec_diff(manifest.model_spec, cfg.model)
        where = ", ".join(f"{f} (gate {a!r}, config {b!r})" for f, a, b in diffs[:5]) or "unknown field"
        raise ManifestMismatch(f"{path}: model_spec_sha256: the gate was built for another model: {where}")
    verify_files(manifest)  # a missing or changed stream_gate.npz: ManifestError naming it
    try:
        loaded = StreamGate.load(gate)
    except GateError as exc:
        raise EngineError(
            f"{exc}: rebuild the engines (zsad build-engines --config CONFIG --out {directory})"
        ) from exc
    width = cfg.model.backbone.hidden_size
    if loaded.context_dim not in (0, width):
        raise EngineError(
            f"{gate}: the gate takes a context of {loaded.context_dim} values, the backbone's embedding has "
            f"{width}: rebuild the engines (zsad build-engines --config CONFIG --out {directory})"
        )
    return gate


def backend_options(cfg: ZsadConfig) -> dict[str, Any]:
    """What :func:`engines.backends.load_backend` gets besides the manifest for ``engines.backend``: ONNX
    Runtime's ``spin`` and ``parallel``; TensorRT's CUDA device, ``deepstream.gpu_id`` (the device the
    DeepStream elements use and the engines were built on)."""
    if cfg.engines.backend == "onnxruntime":
        return {"spin": cfg.engines.spin, "parallel": cfg.engines.parallel}
    if cfg.engines.backend == "tensorrt":
        return {"device_id": cfg.deepstream.gpu_id}
    return {}


def load_engines(cfg: ZsadConfig, config_dir: Path | None = None) -> EngineSet:
    """Open the engines of ``cfg.engines.dir`` after checking their manifests: the backbone and the DPC
    head, the semantic head when there is one, and the appearance encoder when ``appearance.enabled``."""
    directory = Path(cfg.engines.dir)
    options = backend_options(cfg)
    opened: dict[str, Backend] = {}
    try:
        # Every check that needs no engine comes before any engine is opened (a TensorRT engine takes
        # seconds and device memory to open).
        manifests = checked_manifests(cfg, directory)
        checked = check_engine_folder(cfg, directory, manifests)
        image_semantic = APPEARANCE_COMPONENT in manifests and _feeds_semantic(
            cfg, manifests[APPEARANCE_COMPONENT]
        )
        if image_semantic and manifest_path(directory, "semantic_head").is_file():
            log.info(
                "the semantic stream comes from the CLIP appearance engine (appearance.semantic); the "
                "semantic head in %s is not used",
                directory,
            )
        for component, manifest in manifests.items():
            opened[component] = load_backend(
                manifest, cfg.engines.backend, threads=cfg.engines.threads, **options
            )
        appearance = opened.get(APPEARANCE_COMPONENT)
        semantic = opened.get("semantic_head")
        gate = checked.gate
        texts = checked.texts.get("semantic_head", {})
        appearance_texts = checked.texts.get(APPEARANCE_COMPONENT, {}) if image_semantic else {}
    except EngineError:
        for backend in opened.values():
            backend.close()
        raise
    except (ManifestError, BackendError, OSError) as exc:  # OSError: an engine file that cannot be read
        for backend in opened.values():
            backend.close()
        # Never rebuilt here: a damaged engine or one built for another model needs a person's decision.
        raise EngineError(
            f"{exc} (the engines in {directory} are damaged or do not fit this config: rebuild them with "
            f"zsad build-engines --config CONFIG --out {directory}, or fix the config's model section if "
            f"that is what changed)"
        ) from exc

    bb = opened["backbone"].manifest
    pre = bb.preprocessing
    engines = EngineSet(
        backbone=opened["backbone"],
        dpc=opened["dpc_head"],
        frame_size=(pre.image_width, pre.image_height),
        mean=tuple(pre.mean),  # type: ignore[arg-type]
        std=tuple(pre.std),  # type: ignore[arg-type]
        model_id=model_identity(bb),
        gate_path=gate,
        semantic=semantic,
        input_layout=opened["backbone"].manifest.input_layout,
    )
    if appearance is not None:
        ap = appearance.manifest
        engines.appearance = appearance
        engines.appearance_mean = tuple(ap.preprocessing.mean)  # type: ignore[assignment]
        engines.appearance_std = tuple(ap.preprocessing.std)  # type: ignore[assignment]
        engines.appearance_grid = (int(ap.outputs[0].shape[2]), int(ap.outputs[0].shape[3]))
        engines.appearance_texts = appearance_texts
    elif (directory / f"{APPEARANCE_COMPONENT}.manifest.json").is_file():
        log.info("appearance.enabled is false: the appearance engine in %s is not opened", directory)
    engines.texts = texts
    if semantic is None and not appearance_texts:
        log.warning(
            "no semantic_head engine in %s and no CLIP appearance engine with prompts: the CLIP semantic "
            "stream is off and weighted out",
            directory,
        )
    return engines


def _embedding_width(manifest: Manifest) -> int | None:
    """The width of the appearance engine's image embedding output, None when it has none."""
    return next((o.shape[1] for o in manifest.outputs if o.name == APPEARANCE_EMBEDDING), None)


def _feeds_semantic(cfg: ZsadConfig, manifest: Manifest) -> bool:
    """Whether the appearance engine of ``manifest`` feeds the semantic stream: the config asks for it
    (``appearance.semantic``) and the engine was built with the image embedding and its prompts."""
    has = _embedding_width(manifest) is not None
    return cfg.appearance.semantic and has and bool(manifest.text_embeddings)


def model_identity(backbone: Manifest) -> str:
    """The engines' identity from the backbone's manifest: its model spec and its weights
    (``zsad:<spec sha256[:12]>:<weights sha256[:12]>``), written into every alert and every calibration."""
    return f"zsad:{backbone.model_spec_sha256[:12]}:{backbone.weights_sha256[:12]}"


def engines_model_id(directory: Path) -> str | None:
    """:func:`model_identity` of the engines in ``directory`` from the backbone's manifest alone (None: no
    manifest there). Raises :class:`~engines.manifest.ManifestError` for one that cannot be read."""
    path = manifest_path(directory, "backbone")
    return model_identity(load_manifest(path)) if path.is_file() else None


def engines_semantic_source(cfg: ZsadConfig, directory: Path) -> str | None:
    """Where :func:`load_engines` will take the semantic stream from with the engines in ``directory``
    (``plugins.fusion.SEMANTIC_SOURCES``, None: nowhere), read from their manifests alone: the CLIP
    appearance engine when it feeds it (``appearance.enabled`` and :func:`_feeds_semantic`), else a semantic
    head. ``zsad validate`` says with it which calibrations a run would refuse. Raises
    :class:`~engines.manifest.ManifestError` for a manifest that cannot be read."""
    path = manifest_path(directory, APPEARANCE_COMPONENT)
    if cfg.appearance.enabled and path.is_file() and _feeds_semantic(cfg, load_manifest(path)):
        return "appearance"
    return "head" if manifest_path(directory, "semantic_head").is_file() else None


def _gives_embedding(cfg: ZsadConfig, manifest: Manifest) -> bool:
    """:func:`_feeds_semantic`, and an engine built without what it needs (a folder of the image tower alone,
    or ``semantic: false`` at build time) while the config asks for it is said so."""
    if _feeds_semantic(cfg, manifest):
        return True
    has = _embedding_width(manifest) is not None
    if cfg.appearance.semantic and cfg.appearance.encoder == "clip":
        log.warning(
            "appearance.semantic is on but the appearance engine %s has %s: the semantic stream does not "
            "come from it (rebuild it from a full CLIP folder with its tokenizer: zsad build-engines)",
            manifest.path,
            "no prompt embeddings" if has else "no image embedding output",
        )
    return False


def _appearance_manifest(cfg: ZsadConfig, directory: Path) -> Manifest:
    """The appearance engine's manifest in ``directory``, checked against the config's encoder and frame
    size. Its manifest missing from an engine folder that otherwise has everything is refused with what to
    run."""
    path = manifest_path(directory, APPEARANCE_COMPONENT)
    if not path.is_file():
        weights = (
            "a local CLIP folder in appearance.weights, $ZSAD_APPEARANCE_WEIGHTS or "
            "model.semantic.clip_text_model"
            if cfg.appearance.encoder == "clip"
            else WEIGHTS_INSTALL
        )
        raise EngineError(
            f"engine manifest {path} is missing: the appearance stream is on (appearance.enabled) but "
            f"{directory} has no appearance engine (built before it existed?). Build it with "
            f"zsad build-engines --config CONFIG --out {directory} (what is there stays up to date; it needs "
            f"the encoder's weights: {weights}), or set appearance.enabled: false"
        )
    manifest = load_manifest(path)
    check_manifest(
        manifest,
        Expectation(
            model_spec=cfg.model, appearance_encoder=cfg.appearance.encoder, backend=cfg.engines.backend
        ),
    )
    return manifest


def _load_texts(manifest: Manifest) -> dict[str, PromptBank]:
    """Per-context prompt embeddings of an engine's manifest (the semantic head's, or the CLIP appearance
    engine's, whose width must be its image embedding's: a mismatch would fail every clip of every camera)."""
    width = _embedding_width(manifest)
    out = {}
    for text in manifest.text_embeddings:
        if manifest.component == APPEARANCE_COMPONENT and (
            text.shape[1] != width or text.context_source != "ungated"
        ):
            raise EngineError(
                f"{manifest.path}: text_embeddings[{text.context}] are {text.shape[1]}-wide "
                f"{text.context_source} embeddings, the engine's image embedding is {width}-wide and "
                f"ungated: rebuild the engines (zsad build-engines)"
            )
        rebuild = f"rebuild the engines (zsad build-engines --config CONFIG --out {manifest.path.parent})"
        try:
            emb = np.load(manifest.resolve(text.path))
        except (OSError, ValueError) as exc:
            raise EngineError(f"{manifest.resolve(text.path)}: cannot read: {exc}: {rebuild}") from exc
        # The prompts name what each row of the embeddings means (the label an alert carries): the file the
        # build read must be here and unchanged, or the labels would not match the rows.
        prompt_file = Path(text.prompt_file)
        if not prompt_file.is_file() and (PROMPT_DIR / prompt_file.name).is_file():
            # Engines copied to another machine: the build's path is not here, this checkout's prompts are
            # (the hash below says whether they are the same).
            prompt_file = PROMPT_DIR / prompt_file.name
        try:
            prompt_set = load_prompt_set(prompt_file)
        except PromptError as exc:
            raise EngineError(
                f"{manifest.path}: text_embeddings[{text.context}]: {exc} (the build read "
                f"{text.prompt_file}; copy it here, or {rebuild})"
            ) from exc
        if prompt_set.sha256 != text.prompt_sha256:
            raise EngineError(
                f"{manifest.path}: text_embeddings[{text.context}]: {prompt_file} changed since the "
                f"build (sha256 {prompt_set.sha256[:12]}, built from {text.prompt_sha256[:12]}): {rebuild}"
            )
        try:
            out[text.context] = PromptBank(emb, int(text.normal), tuple(prompt_set.prompts))
        except SemanticError as exc:
            raise EngineError(f"{manifest.resolve(text.path)}: context {text.context}: {exc}") from exc
    return out


def semantic_scorer(engines: EngineSet, contexts: dict[str, str]) -> SemanticScorer | None:
    """The semantic stream of a run (shared by the CPU and DeepStream graphs), or None without a
    semantic head. ``contexts``: each camera's context, which picks its prompts."""
    if engines.semantic is None:
        return None
    return SemanticScorer(engines.semantic, engines.texts, contexts)


def appearance_expectation(engines: EngineSet) -> MemoryExpectation | None:
    """What a camera's appearance memory must have been fitted on to be used with these engines (the
    appearance engine's encoder, weights, spec hash, feature grid and channels), or None without an
    appearance engine.
    Raises :class:`EngineError` when the engine's manifest has no ``(N, C, h, w)`` features output."""
    backend = engines.appearance
    if backend is None:
        return None
    manifest = backend.manifest
    spec = next((s for s in manifest.outputs if s.name == APPEARANCE_FEATURES), None)
    if spec is None or len(spec.shape) != 4:
        raise EngineError(
            f"the {manifest.component} engine's manifest has no (N, C, h, w) {APPEARANCE_FEATURES!r} output "
            f"(outputs: {[s.name for s in manifest.outputs]}): rebuild the engines with zsad build-engines"
        )
    encoder = manifest.options.get("encoder") or manifest.model_spec.get("encoder") or manifest.component
    return MemoryExpectation(
        encoder=str(encoder),
        weights_sha256=manifest.weights_sha256,
        grid=(int(spec.shape[2]), int(spec.shape[3])),
        channels=int(spec.shape[1]),
        # Taps, projection and frame size change the features without changing their grid or channels.
        model_spec_sha256=manifest.model_spec_sha256,
    )


@dataclass
class ClipResult:
    """What one clip produced: raw stream scores (``None`` while the DPC history fills) and the best
    matching anomalous prompt when the semantic stream runs."""

    scores: StreamScores | None
    prompt: str | None = None


class ClipInference:
    """The scheduler's ``infer``: ``list[Clip]`` in, one :class:`ClipResult` per clip out (same order).

    Each camera's clips must arrive in order (the scheduler guarantees it); the DPC history lives here.
    ``filters``: the cameras' masks and learned levels (``RunOutputs.filters``), applied before reduction.
    ``memories``: the cameras' appearance memories (``RunOutputs.memories``); with an appearance engine, a
    scored clip of a camera that has one gets the ``appearance`` map (its last frame's distance from the
    memory, pooled onto the DPC maps' grid), filtered and reduced like the other maps. With a CLIP appearance
    engine that gives image embeddings (``EngineSet.appearance_texts``), the same encoding of the last frame
    is also the ``semantic`` score of every scored clip of a camera whose context has prompts
    (:func:`plugins.semantic.match_prompts`), and the semantic head is not used. The appearance engine runs
    for a scored clip of a camera that has a memory or such prompts, every ``appearance_every``-th one (a
    count for every camera, or a camera's own, ``ZsadConfig.appearance_clips``, 1 for a
    camera not listed); the clips between keep the camera's last map and semantic score. ``no_semantic``:
    cameras whose clips the semantic stream does not score (``zsad calibrate``'s pasted-event twins, whose
    semantic scores nothing uses).
    ``stationary``: the cameras' stationary models (``RunOutputs.stationary``); each such camera keeps a
    short-term window that takes every clip's frames ``stationary_spacing_s`` apart
    (:class:`plugins.stationary.FrameSpacer`), and once the window is full its scored clips get the
    ``stationary`` map. ``objects``: the cameras' objects models (``RunOutputs.objects``); each such camera
    keeps its tracks (:class:`plugins.objects.ObjectsState`), which take every clip's frames
    ``objects_spacing_s`` apart; a scored clip's ``objects`` map is the elementwise max of the maps of the
    frames it fed, or the map of the camera's last frame fed when it fed none
    (:class:`pipeline.memory_streams.ObjectsClips`). A memory stream's model that does not fit a camera's
    frames or the DPC grid is logged once; that camera goes on without the stream. :meth:`reset` empties a
    camera's window and tracks.

    Raises :class:`EngineError` when the appearance engine does not take the backbone's frame size or its
    feature grid does not pool onto the DPC maps' grid.
    """

    def __init__(
        self,
        engines: EngineSet,
        *,
        context_clips: int,
        history_step: int,
        contexts: dict[str, str],
        filters: CellFilters | None = None,
        memories: AppearanceMemories | None = None,
        appearance_every: int | Mapping[str, int] = 1,
        stationary: StationaryModels | None = None,
        stationary_spacing_s: float = 0.4,
        objects: ObjectsModels | None = None,
        objects_spacing_s: float = 0.2,
        no_semantic: Container[str] = frozenset(),
    ):
        if isinstance(appearance_every, Mapping):
            self._appearance_every_default, per_camera = 1, {k: int(v) for k, v in appearance_every.items()}
        else:
            self._appearance_every_default, per_camera = int(appearance_every), {}
        for every in (self._appearance_every_default, *per_camera.values()):
            if every < 1:
                raise ValueError(f"appearance_every must be >= 1, got {every}")
        # The memory streams without an engine, each fed every clip's frames at its own spacing.
        self._feeds = (
            StationaryFeed(stationary, stationary_spacing_s),
            ObjectsFeed(objects, objects_spacing_s),
        )
        self.engines = engines
        self.contexts = contexts
        # Cameras whose clips the semantic stream does not score (zsad calibrate's pasted-event twins).
        self.no_semantic = no_semantic
        self.memories = memories
        # Per camera: clips per encoding (cameras sampled at different rates encode at one spacing in
        # seconds); the run adds and removes cameras here as it does their contexts.
        self.appearance_every: dict[str, int] = per_camera
        # Per camera: clips seen by the appearance engine, and its last map and semantic match (reused
        # between encodings).
        self._appearance_seen: dict[str, int] = {}
        self._appearance_last: dict[str, np.ndarray] = {}
        self._semantic_last: dict[str, SemanticMatch] = {}
        # (camera, clip index) -> its last frame's features and embedding, encoded already by
        # encode_clip_frames for the next call (zsad calibrate): not encoded twice.
        self._encoded: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self.scorer = ClipScorer(
            engines.dpc, context_clips=context_clips, history_step=history_step, filters=filters
        )
        # The semantic stream from the CLIP appearance engine's image embedding (None: not from it), or else
        # from the semantic head.
        texts = engines.appearance_texts
        self.image_prompts = PromptBanks(texts, contexts) if texts else None
        self.semantic = None if self.image_prompts is not None else semantic_scorer(engines, contexts)
        self._appearance_norm = _appearance_normaliser(engines)
        self._appearance_warned: set[str] = set()

    def reset(self, camera: str) -> None:
        self.scorer.reset(camera)
        self._appearance_seen.pop(camera, None)
        self._appearance_last.pop(camera, None)
        self._semantic_last.pop(camera, None)
        for feed in self._feeds:
            feed.reset(camera)

    def warm_up(self, max_batch: int) -> None:
        """Run each engine once at the largest batch the scheduler forms (see :meth:`Backend.warm_up`),
        so the runtimes' arenas reach their final size before the first camera frame."""
        for backend in self.engines.backends:
            # A TensorRT engine runs at most its optimisation profile's largest batch.
            batch = min(max_batch, getattr(backend, "max_batch", None) or max_batch)
            seconds = backend.warm_up(batch)
            log.info("%s warmed up at batch %d in %.2f s", backend.manifest.component, batch, seconds)

    def encode_last_frames(self, clips: Sequence[Clip]) -> np.ndarray:
        """The appearance engine's ``(N, C, h, w)`` float32 features of each clip's last frame (the uint8
        frame normalised with the appearance engine's own mean and std). :meth:`__call__` scores them."""
        return self._encode(np.stack([c.frames[-1] for c in clips]))[0]

    def encode_clip_frames(self, clips: Sequence[Clip]) -> np.ndarray:
        """The appearance engine's features of every frame of each clip: ``(N, T, C, h, w)`` float32.
        ``zsad calibrate`` fits the memories on these. Each clip's last frame's encoding is kept for the next
        :meth:`__call__` (the semantic stream's, from the image embedding), which then does not encode it
        again; what that call does not use is dropped with it."""
        features, embeddings = self._encode(np.concatenate([np.asarray(c.frames) for c in clips]))
        per_clip = features.reshape(len(clips), -1, *features.shape[1:])
        if embeddings is not None and self.image_prompts is not None:
            last = embeddings.reshape(len(clips), -1, embeddings.shape[-1])[:, -1]
            for clip, f, e in zip(clips, per_clip, last, strict=True):
                self._encoded[(clip.camera_id, clip.index)] = (f[-1], e)
        return per_clip

    def _encode(self, frames: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """``(M, H, W, 3)`` uint8 frames -> ``(M, C, h, w)`` float32 features, and the ``(M, E)`` image
        embeddings when the engine gives them (else None); at most ``batch`` frames a call, and at most the
        engine's largest batch (a TensorRT profile's ``max_batch``)."""
        backend, normaliser = self.engines.appearance, self._appearance_norm
        if backend is None or normaliser is None:
            raise EngineError("encoding frames needs an appearance engine, and these engines have none")
        # Calibration encodes every frame of a batch's clips (clips x clip_len frames): more than a TensorRT
        # engine built for scheduler.max_batch clips takes in one call, which it refuses.
        limit = getattr(backend, "max_batch", None)
        if limit:
            batch = min(batch, int(limit))
        features, embeddings = [], []
        for i in range(0, len(frames), batch):
            out = backend({APPEARANCE_FRAMES: normaliser(frames[i : i + batch])})
            features.append(np.asarray(out[APPEARANCE_FEATURES], np.float32))
            if APPEARANCE_EMBEDDING in out:
                embeddings.append(np.asarray(out[APPEARANCE_EMBEDDING], np.float32))
        return np.concatenate(features), np.concatenate(embeddings) if embeddings else None

    def _appearance_pass(
        self,
        clips: Sequence[Clip],
        indices: Sequence[int],
        grid: tuple[int, int],
        matches: dict[int, SemanticMatch],
    ) -> list[dict[str, np.ndarray]]:
        """``ClipScorer.score``'s ``extra_maps``: the appearance map of each scored clip whose camera has a
        memory (read once per clip here: a memory replaced meanwhile applies from the next call); with
        :attr:`image_prompts`, each scored clip's semantic match goes into ``matches`` (clip index ->
        match)."""
        out: list[dict[str, np.ndarray]] = [{} for _ in indices]
        if self._appearance_norm is None:
            return out
        picked = []
        for k, i in enumerate(indices):
            camera = clips[i].camera_id
            memory = self.memories.get(camera) if self.memories is not None else None
            bank = self._image_bank(camera)
            if memory is None and bank is None:
                continue
            seen = self._appearance_seen.get(camera, 0)
            self._appearance_seen[camera] = seen + 1
            every = self.appearance_every.get(camera, self._appearance_every_default)
            if seen % every and self._reuse_last(camera, k, i, memory, grid, out, matches):
                # What a scene holds changes slowly next to a clip hop: between encodings a camera's
                # clips keep its last appearance map and semantic score (appearance.spacing_s).
                continue
            picked.append((k, i, memory, bank))
        if not picked:
            return out
        features, embeddings = self._picked_encodings(clips, [i for _, i, _, _ in picked])
        for j, (k, i, memory, bank) in enumerate(picked):
            camera = clips[i].camera_id
            if embeddings is not None and bank is not None:
                # The prompts' width is the embedding's: load_engines checked it (_load_texts).
                matches[i] = self._semantic_last[camera] = match_prompts(embeddings[j], bank)
            if memory is None:
                continue
            try:
                out[k][APPEARANCE] = appearance_map(memory, features[j], grid)
                self._appearance_last[camera] = out[k][APPEARANCE]
            except AppearanceError as exc:
                # Memories are checked against the engine when loaded, so this is a memory set by hand;
                # the camera goes on without the stream rather than failing every clip of the batch.
                if camera not in self._appearance_warned:
                    self._appearance_warned.add(camera)
                    log.error(
                        "camera %s: its appearance memory does not fit the engine's features (%s); it goes "
                        "on without the appearance stream",
                        camera,
                        exc,
                    )
        return out

    def _image_bank(self, camera: str) -> PromptBank | None:
        """The prompts the image embedding of ``camera``'s clips is scored against (None: not scored)."""
        if self.image_prompts is None or camera in self.no_semantic:
            return None
        return self.image_prompts.bank(camera)

    def _picked_encodings(
        self, clips: Sequence[Clip], indices: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The last frames' features ``(n, C, h, w)`` and embeddings of ``clips[indices]``: those kept by
        :meth:`encode_clip_frames` for this call, the others encoded now, in one engine call."""
        kept = [
            e for i in indices if (e := self._encoded.get((clips[i].camera_id, clips[i].index))) is not None
        ]
        if len(kept) == len(indices):
            features, embeddings = zip(*kept, strict=True)
            return np.stack(features), np.stack(embeddings)
        return self._encode(np.stack([clips[i].frames[-1] for i in indices]))

    def _reuse_last(
        self,
        camera: str,
        k: int,
        i: int,
        memory: AppearanceMemory | None,
        grid: tuple[int, int],
        out: list[dict[str, np.ndarray]],
        matches: dict[int, SemanticMatch],
    ) -> bool:
        """Give clip ``i`` (``k``-th scored) its camera's last map and semantic match; False when what it
        needs was never computed (or the grid changed), so the clip is encoded."""
        last = self._appearance_last.get(camera)
        if memory is not None and (last is None or last.shape != grid):
            return False
        match = self._semantic_last.get(camera)
        if self._image_bank(camera) is not None and match is None:
            return False
        if memory is not None and last is not None:
            out[k][APPEARANCE] = last.copy()
        if match is not None:
            matches[i] = match
        return True

    def __call__(self, clips: Sequence[Clip]) -> list[ClipResult]:
        # The memory feeds need only the clips' frames, and most of their time is in OpenCV and numpy, which
        # release the GIL, as ONNX Runtime does: they run beside the backbone, the DPC head and the
        # appearance encoder, and are waited for only when their maps are read.
        # The feeds with a model now are the ones scored below: a model set meanwhile starts with the next
        # batch, never with maps this batch did not feed. A feed's failure fails the batch once the engines
        # have run, as an engine's failure does (the DPC history and the appearance cadence have moved on).
        feeds = [feed for feed in self._feeds if feed.active]
        feeding = _Feeding(self._feeds, clips, beside=bool(feeds))
        try:
            scored, prompts = self._score(clips, feeds, feeding)
        except BaseException:
            feeding.join()  # never leave it running into the next batch, even when the engines failed
            feeding.log_error("the memory feeds failed too")
            raise
        feeding.join()  # where no clip was scored (no DPC history yet) no map was read: end them here
        feeding.check()
        return [ClipResult(s, p) for s, p in zip(scored, prompts, strict=True)]

    def _score(
        self, clips: Sequence[Clip], feeds: Sequence[MemoryFeed[Any]], feeding: _Feeding
    ) -> tuple[list[StreamScores | None], list[str | None]]:
        """The batch's engines and scores while ``feeding`` runs; the feeds' maps are read after
        ``feeding`` has ended."""
        batch = to_model_input(list(clips), self.engines.mean, self.engines.std)  # (N, T, 3, H, W)
        out = self.engines.backbone({"clip": to_layout(batch, self.engines.input_layout)})
        tokens, embedding = out["tokens"], out["embedding"]
        items = [
            ClipTokens(c.camera_id, c.index, tokens[i], embedding[i], batch[i, 0], batch[i, -1], batch[i, -2])
            for i, c in enumerate(clips)
        ]
        extra = None
        encodes = bool(self.memories) or self.image_prompts is not None
        appearance = self._appearance_norm is not None and encodes
        matches: dict[int, SemanticMatch] = {}  # clip index -> the image embedding's semantic match
        if appearance or feeds:

            def extra(indices: Sequence[int], grid: tuple[int, int]) -> list[dict[str, np.ndarray]]:
                out = (
                    self._appearance_pass(clips, indices, grid, matches)
                    if appearance
                    else [{} for _ in indices]
                )
                if feeds:
                    feeding.join()
                    feeding.check()
                for feed in feeds:
                    for k, i in enumerate(indices):
                        m = feed.clip_map(i, clips[i].camera_id, grid)
                        if m is not None:
                            out[k][feed.stream] = m
                return out

        try:
            scored = self.scorer.score(items, extra_maps=extra)
        finally:
            self._encoded.clear()  # kept for this call only
        prompts: list[str | None] = [None] * len(clips)
        if self.semantic is not None:
            matches.update(
                (i, sem)
                for i, sem in enumerate(self.semantic([c.camera_id for c in clips], embedding))
                if sem is not None and clips[i].camera_id not in self.no_semantic
            )
        for i, sem in matches.items():
            s = scored[i]
            if s is not None:
                s.scores[SEMANTIC], prompts[i] = sem
        return scored, prompts


class _Feeding:
    """Every memory feed taking one batch's clips: with ``beside``, on their own thread (``zsad-feeds``),
    started at once; otherwise here and now (a feed without models only forgets its last batch's maps).
    :meth:`join` waits for them, :meth:`check` then raises what they raised."""

    def __init__(self, feeds: Sequence[MemoryFeed[Any]], clips: Sequence[Clip], *, beside: bool) -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if beside:
            self._thread = threading.Thread(target=self._run, args=(feeds, clips), name="zsad-feeds")
            self._thread.start()
        else:
            self._run(feeds, clips)

    def _run(self, feeds: Sequence[MemoryFeed[Any]], clips: Sequence[Clip]) -> None:
        try:
            for feed in feeds:
                feed.feed(clips)
        except BaseException as exc:  # noqa: BLE001 - handed to the scheduler's thread by check()
            self._error = exc

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def check(self) -> None:
        """After :meth:`join`: raise what a feed raised."""
        error, self._error = self._error, None
        if error is not None:
            try:
                raise error
            finally:
                del error  # the traceback holds this frame: no cycle left for the collector

    def log_error(self, what: str) -> None:
        """After :meth:`join`, when the caller raises something else: log what a feed raised, not lose it."""
        error, self._error = self._error, None
        if error is not None:
            log.error("%s: %s", what, error, exc_info=error)


def _appearance_normaliser(engines: EngineSet) -> Normaliser | None:
    """The appearance engine's normalisation, after checking that it takes the frames the clips hold (the
    backbone's size) and that its feature grid pools onto the DPC maps' grid; None without the engine."""
    backend = engines.appearance
    if backend is None:
        return None
    manifest = backend.manifest
    pre = manifest.preprocessing
    if (pre.image_width, pre.image_height) != tuple(engines.frame_size):
        raise EngineError(
            f"the {manifest.component} engine takes {pre.image_width}x{pre.image_height} frames but the "
            f"clips hold the backbone's {engines.frame_size[0]}x{engines.frame_size[1]}: build it at the "
            f"backbone's size (zsad build-engines)"
        )
    expect = appearance_expectation(engines)
    dpc_manifest = getattr(engines.dpc, "manifest", None)  # a plain runner (a test's) has none
    dpc_maps = [s for s in dpc_manifest.outputs if s.name == "feature_error"] if dpc_manifest else []
    if expect is not None and dpc_maps:
        try:
            pool_factor(expect.grid, dpc_maps[0].shape[-2:])
        except AppearanceError as exc:
            raise EngineError(
                f"the {manifest.component} engine's features do not fit the DPC maps: {exc}"
            ) from exc
    return Normaliser(pre.mean, pre.std)
