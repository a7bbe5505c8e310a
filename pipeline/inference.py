"""The engines a run needs, checked against the config, and the clip inference the scheduler calls.

``load_engines`` refuses to start on a missing engine or a manifest that does not match the config.
``ClipInference`` is the ONNX Runtime / TensorRT path of the CPU graph: the shared normalisation
(``plugins.preprocess``), the backbone, then the shared ``plugins.scorer.ClipScorer`` (the DPC head,
batched across cameras) and ``plugins.semantic.SemanticScorer`` (the semantic stream).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ZsadConfig
from engines.backends import load_backend
from engines.backends.base import Backend, BackendError
from engines.manifest import (
    Expectation,
    Manifest,
    ManifestError,
    check_manifest,
    load_manifest,
    manifest_path,
)
from engines.prompts import load_prompt_set
from pipeline.clips import Clip, to_model_input
from plugins.preprocess import to_layout
from plugins.scorer import ClipScorer, ClipTokens, StreamScores
from plugins.semantic import PromptBank, SemanticError, SemanticScorer
from plugins.streams import SEMANTIC
from plugins.zones import CellFilters

log = logging.getLogger(__name__)

__all__ = ["ClipInference", "ClipResult", "EngineError", "EngineSet", "load_engines", "semantic_scorer"]


class EngineError(RuntimeError):
    """The engines of a run are missing or do not match its config; the message says which and why."""


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

    def close(self) -> None:
        for backend in (self.backbone, self.dpc, self.semantic):
            if backend is not None:
                backend.close()


def load_engines(cfg: ZsadConfig, config_dir: Path | None = None) -> EngineSet:
    """Open the backbone and DPC-head engines of ``cfg.engines.dir`` after checking their manifests."""
    directory = Path(cfg.engines.dir)
    options: dict[str, Any] = {"spin": cfg.engines.spin} if cfg.engines.backend == "onnxruntime" else {}
    opened: dict[str, Backend] = {}
    try:
        for component in ("backbone", "dpc_head"):
            path = manifest_path(directory, component)
            if not path.is_file():
                raise EngineError(
                    f"engine manifest {path} is missing: build the engines first "
                    f"(zsad build-engines --config CONFIG --checkpoint CKPT --out {directory})"
                )
            manifest = load_manifest(path)
            check_manifest(manifest, Expectation(model_spec=cfg.model, backend=cfg.engines.backend))
            opened[component] = load_backend(
                manifest, cfg.engines.backend, threads=cfg.engines.threads, **options
            )
        semantic = None
        sem_path = manifest_path(directory, "semantic_head")
        if sem_path.is_file():
            manifest = load_manifest(sem_path)
            check_manifest(manifest, Expectation(model_spec=cfg.model, backend=cfg.engines.backend))
            semantic = load_backend(manifest, cfg.engines.backend, threads=cfg.engines.threads, **options)
    except (ManifestError, BackendError) as exc:
        for backend in opened.values():
            backend.close()
        raise EngineError(str(exc)) from exc

    bb = opened["backbone"].manifest
    pre = bb.preprocessing
    gate = directory / "stream_gate.npz"
    engines = EngineSet(
        backbone=opened["backbone"],
        dpc=opened["dpc_head"],
        frame_size=(pre.image_width, pre.image_height),
        mean=tuple(pre.mean),  # type: ignore[arg-type]
        std=tuple(pre.std),  # type: ignore[arg-type]
        model_id=f"zsad:{bb.model_spec_sha256[:12]}:{bb.weights_sha256[:12]}",
        gate_path=gate if gate.is_file() else None,
        semantic=semantic,
        input_layout=opened["backbone"].manifest.input_layout,
    )
    if semantic is not None:
        try:
            engines.texts = _load_texts(semantic.manifest)
        except EngineError:
            engines.close()
            raise
    else:
        log.warning(
            "no semantic_head engine in %s: the CLIP semantic stream is off and weighted out", directory
        )
    return engines


def _load_texts(manifest: Manifest) -> dict[str, PromptBank]:
    """Per-context prompt embeddings of the semantic head's manifest."""
    out = {}
    for text in manifest.text_embeddings:
        emb = np.load(manifest.resolve(text.path))
        prompts = load_prompt_set(text.prompt_file).prompts
        try:
            out[text.context] = PromptBank(emb, int(text.normal), tuple(prompts))
        except SemanticError as exc:
            raise EngineError(f"{manifest.resolve(text.path)}: context {text.context}: {exc}") from exc
    return out


def semantic_scorer(engines: EngineSet, contexts: dict[str, str]) -> SemanticScorer | None:
    """The semantic stream of a run (shared by the CPU and DeepStream graphs), or None without a
    semantic head. ``contexts``: each camera's context, which picks its prompts."""
    if engines.semantic is None:
        return None
    return SemanticScorer(engines.semantic, engines.texts, contexts)


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
    """

    def __init__(
        self,
        engines: EngineSet,
        *,
        context_clips: int,
        history_step: int,
        contexts: dict[str, str],
        filters: CellFilters | None = None,
    ):
        self.engines = engines
        self.contexts = contexts
        self.scorer = ClipScorer(
            engines.dpc, context_clips=context_clips, history_step=history_step, filters=filters
        )
        self.semantic = semantic_scorer(engines, contexts)

    def reset(self, camera: str) -> None:
        self.scorer.reset(camera)

    def warm_up(self, max_batch: int) -> None:
        """Run each engine once at the largest batch the scheduler forms (see :meth:`Backend.warm_up`),
        so the runtimes' arenas reach their final size before the first camera frame."""
        for backend in (self.engines.backbone, self.engines.dpc, self.engines.semantic):
            if backend is None:
                continue
            # A TensorRT engine runs at most its optimisation profile's largest batch.
            batch = min(max_batch, getattr(backend, "max_batch", None) or max_batch)
            seconds = backend.warm_up(batch)
            log.info("%s warmed up at batch %d in %.2f s", backend.manifest.component, batch, seconds)

    def __call__(self, clips: Sequence[Clip]) -> list[ClipResult]:
        batch = to_model_input(list(clips), self.engines.mean, self.engines.std)  # (N, T, 3, H, W)
        out = self.engines.backbone({"clip": to_layout(batch, self.engines.input_layout)})
        tokens, embedding = out["tokens"], out["embedding"]
        items = [
            ClipTokens(c.camera_id, c.index, tokens[i], embedding[i], batch[i, 0], batch[i, -1], batch[i, -2])
            for i, c in enumerate(clips)
        ]
        scored = self.scorer.score(items)
        prompts: list[str | None] = [None] * len(clips)
        if self.semantic is not None:
            for i, sem in enumerate(self.semantic([c.camera_id for c in clips], embedding)):
                s = scored[i]
                if s is not None and sem is not None:
                    s.scores[SEMANTIC], prompts[i] = sem
        return [ClipResult(s, p) for s, p in zip(scored, prompts, strict=True)]
