"""The appearance stream in offline evaluation (``zsad eval``), as ``zsad calibrate`` and the run score it.

Each context of a dataset is one camera: its memory (:mod:`plugins.appearance`) is fitted on the training
videos of that context, from the frozen encoder's features (:mod:`engines.appearance`, the same weights the
engine is exported from). The calibration samples are **held out**: the context's training videos are
split in folds (:func:`context_folds`, :data:`plugins.fusion.HELDOUT_FOLDS` groups of videos; a context
with fewer videos is split by time in two), each fold's clips are scored against the memory of the others,
because a memory's distances of the frames it was fitted on are biased low. Test
frames are scored against the memory of every training frame of their context. A clip's appearance score is
its last frame's, as at run time; the test split is scored frame by frame (every frame is some clip's last).
Maps are pooled onto the DPC maps' grid and reduced by their max, as :class:`plugins.scorer.ClipScorer` does.

With a CLIP encoder from a full CLIP folder (``appearance.semantic``), the same encoding also gives each
frame's image embedding, scored against its context's prompts as the run scores it
(:func:`plugins.semantic.match_prompts`): the semantic stream. It has no memory, so its calibration samples
need no folds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.config import AppearanceConfig
from engines.appearance import AppearanceEncoder, ClipAppearanceEncoder, load_encoder
from engines.encoders import (
    ENCODERS,
    EncoderWeightsError,
    clip_embed_dim,
    clip_folder,
    encoder_weights_sha256,
    find_encoder_weights,
    has_tokenizer,
)
from engines.prompts import PROMPT_DIR, load_prompt_sets
from engines.semantic import TextEncoder, TextEncoderError
from plugins.appearance import AppearanceMemory, MemoryFitter, appearance_map
from plugins.fusion import HELDOUT_FOLDS
from plugins.preprocess import Normaliser
from plugins.semantic import PromptBank, match_prompts
from training.heldout_models import held_out_parts

log = logging.getLogger(__name__)

__all__ = ["AppearanceEvaluator", "context_folds"]

#: Every ``FIT_STEP``-th training frame is fitted: a few hundred frames are enough (docs/results.md), and
#: neighbouring frames are nearly the same.
FIT_STEP = 2
BATCH = 32


def context_folds(
    names: Sequence[str], contexts: Mapping[str, str | None], k: int = HELDOUT_FOLDS
) -> dict[str, int]:
    """Each training video's fold: within its context, the videos in their order split into ``k`` contiguous
    groups, or one group per video when the context has fewer than ``k``. A context of a single video gets
    fold -1 (its video is split by time instead)."""
    by_context: dict[str, list[str]] = {}
    for name in names:
        by_context.setdefault(contexts.get(name) or "generic", []).append(name)
    folds: dict[str, int] = {}
    for members in by_context.values():
        groups = min(k, len(members))
        for i, name in enumerate(members):
            folds[name] = (i * groups) // len(members) if groups >= 2 else -1
    return folds


@dataclass
class _Video:
    context: str
    features: np.ndarray  # (N, C, h, w) float16, every frame
    fold: int
    embeddings: np.ndarray | None = None  # (N, E) float32, every frame, with a CLIP image embedding


class AppearanceEvaluator:
    """Encodes videos, fits a memory per context and scores clips or frames against it.

    ``grid``: the DPC maps' grid the appearance maps are pooled onto. ``prompts``: each context's prompt
    embeddings, for an encoder that gives image embeddings (the semantic stream; :attr:`semantic`).
    """

    def __init__(
        self,
        encoder: AppearanceEncoder | ClipAppearanceEncoder,
        mean: Sequence[float],
        std: Sequence[float],
        grid: tuple[int, int],
        prompts: Mapping[str, PromptBank] | None = None,
    ):
        self.encoder = encoder.eval()
        self.prompts = dict(prompts or {})
        self.normaliser = Normaliser(mean, std)  # the run's one normalisation (plugins.preprocess)
        self.grid = grid
        self.weights_sha256 = encoder.weights_sha256
        self._train: dict[str, _Video] = {}
        # (context, held-out fold or None for all, time half or None) -> memory, each fitted once.
        self._memories: dict[tuple[str, int | None, int | None], AppearanceMemory] = {}

    @classmethod
    def from_config(
        cls,
        settings: AppearanceConfig,
        grid: tuple[int, int],
        semantic: str | None = None,
        contexts: Sequence[str] = (),
    ) -> AppearanceEvaluator | None:
        """The evaluator of ``settings`` (the config's ``appearance`` section), or None when the stream is
        off or its weights are not installed (logged: the evaluation then has no appearance stream).
        ``semantic``: ``model.semantic.clip_text_model``, where a CLIP encoder looks last for its folder.
        ``contexts``: the dataset's contexts; with ``settings.semantic`` and a full CLIP folder with its
        tokenizer, each one's prompts (``configs/prompts/<context>.yaml``, else ``generic``) are embedded by
        the folder's text tower, as ``zsad build-engines`` embeds them, and the semantic stream is scored."""
        if not settings.enabled:
            return None
        try:
            path = find_encoder_weights(settings.encoder, settings.weights, semantic)
            digest = encoder_weights_sha256(settings.encoder, path)
            with_semantic = (
                settings.encoder == "clip"
                and settings.semantic
                and clip_embed_dim(path) > 0
                and has_tokenizer(path)
            )
            encoder = load_encoder(path, digest, settings.encoder, embedding=with_semantic)
        except EncoderWeightsError as exc:
            log.warning("no appearance stream in this evaluation: %s", exc)
            return None
        prompts: dict[str, PromptBank] = {}
        if with_semantic:
            try:
                text = TextEncoder(str(clip_folder(path)))
                for context, prompt_set in load_prompt_sets(sorted(set(contexts)), PROMPT_DIR).items():
                    emb = text.encode(list(prompt_set.prompts)).numpy().astype(np.float32)
                    prompts[context] = PromptBank(emb, len(prompt_set.normal), prompt_set.prompts)
            except (
                TextEncoderError,
                ValueError,
                RuntimeError,
            ) as exc:  # transformers refuses what it cannot take
                log.warning("no semantic stream in this evaluation: %s", exc)
                prompts = {}
        info = ENCODERS[settings.encoder]
        return cls(encoder, info.mean, info.std, grid, prompts)

    @property
    def semantic(self) -> bool:
        """Whether the evaluation scores the semantic stream from the encoder's image embeddings."""
        return bool(self.prompts)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(N, H, W, 3)`` uint8 -> ``(N, C, h, w)`` float16 features, and the ``(N, E)`` float32 image
        embeddings when the encoder gives them (else None)."""
        features, embeddings = [], []
        for i in range(0, len(frames), BATCH):
            x = torch.from_numpy(self.normaliser(frames[i : i + BATCH]))  # (n, 3, H, W) float32, a new array
            out = self.encoder(x)
            if isinstance(out, tuple):
                out, emb = out
                embeddings.append(emb.numpy().astype(np.float32))
            features.append(out.numpy().astype(np.float16))
        return np.concatenate(features), np.concatenate(embeddings) if embeddings else None

    def add_training_video(self, name: str, frames: np.ndarray, context: str, fold: int) -> None:
        features, embeddings = self.encode(frames)
        self._train[name] = _Video(context, features, fold, embeddings)

    def semantic_scores(self, embeddings: np.ndarray, context: str) -> np.ndarray:
        """``(N,)`` float64: each ``(N, E)`` embedding's :func:`plugins.semantic.match_prompts` score against
        ``context``'s prompts."""
        bank = self.prompts[context]
        return np.array([match_prompts(e, bank).score for e in embeddings], np.float64)

    def clip_semantic_scores(self, name: str, last_frames: np.ndarray) -> np.ndarray:
        """The semantic score ``(M,)`` of a training video's clips (``last_frames``: each clip's last frame
        index). No memory, so nothing to hold out."""
        video = self._train[name]
        if video.embeddings is None:
            raise ValueError(f"video {name}: the encoder gave no image embeddings")
        return self.semantic_scores(video.embeddings[last_frames], video.context)

    def _memory(self, context: str, fold: int | None, half: int | None = None) -> AppearanceMemory:
        """The memory of ``context``'s training videos outside ``fold`` (None: all of them); a single-video
        context (fold -1) uses the other time half (``half``) of its video instead. Fitted once, then kept."""
        key = (context, fold, half)
        if key in self._memories:
            return self._memories[key]
        fitter = MemoryFitter()
        videos = ((v.context, v.features, v.fold) for v in self._train.values())
        for feats in held_out_parts(videos, context, fold, half):
            for i in range(0, len(feats), FIT_STEP * 64):
                fitter.add(feats[i : i + FIT_STEP * 64 : FIT_STEP].astype(np.float32))
        memory = fitter.finalize(
            encoder=self.encoder.info.name, weights_sha256=self.weights_sha256, camera=context
        )
        self._memories[key] = memory
        return memory

    def held_out_clip_scores(self, name: str, last_frames: np.ndarray) -> np.ndarray:
        """The appearance score ``(M,)`` of a training video's clips (``last_frames``: each clip's last frame
        index), each against the memory of the context's other folds."""
        video = self._train[name]
        if video.fold >= 0:
            memory = self._memory(video.context, video.fold)
            return self._scores(memory, video.features[last_frames])
        mid = len(video.features) // 2
        out = np.empty(len(last_frames), np.float64)
        for half in (0, 1):
            pick = (last_frames < mid) if half == 0 else (last_frames >= mid)
            if pick.any():
                out[pick] = self._scores(
                    self._memory(video.context, -1, half), video.features[last_frames[pick]]
                )
        return out

    def held_out_frame_scores(self, name: str, frames: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The appearance score ``(M,)`` of ``frames`` ``(M, H, W, 3)`` uint8 that stand in for training
        video ``name``'s frames ``at`` ``(M,)`` (the same footage with pseudo-anomalies pasted in), each
        against the memory its own frame's held-out score uses, so the two are comparable."""
        video = self._train[name]
        features, _ = self.encode(frames)
        if video.fold >= 0:
            return self._scores(self._memory(video.context, video.fold), features)
        mid = len(video.features) // 2
        out = np.empty(len(at), np.float64)
        for half in (0, 1):
            pick = (at < mid) if half == 0 else (at >= mid)
            if pick.any():
                out[pick] = self._scores(self._memory(video.context, -1, half), features[pick])
        return out

    def test_frame_scores(
        self, frames: np.ndarray, context: str, maps_out: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Every test frame's appearance score ``(N,)``, against the memory of all of its context's frames,
        and with :attr:`semantic` its semantic score ``(N,)`` (else None), from one encoding. ``maps_out``:
        when given, the frames' maps ``(N, h, w)`` on the DPC grid are appended to it."""
        features, embeddings = self.encode(frames)
        semantic = None
        if embeddings is not None and self.semantic:
            semantic = self.semantic_scores(embeddings, context)
        return self._scores(self._memory(context, None), features, maps_out), semantic

    def _scores(
        self, memory: AppearanceMemory, features: np.ndarray, maps_out: list[np.ndarray] | None = None
    ) -> np.ndarray:
        out, kept = [], []
        for i in range(0, len(features), 64):
            maps = appearance_map(memory, features[i : i + 64].astype(np.float32), self.grid)
            out.append(maps.reshape(len(maps), -1).max(axis=1))
            if maps_out is not None:
                kept.append(np.asarray(maps, dtype=np.float64))
        if maps_out is not None:
            maps_out.append(np.concatenate(kept) if kept else np.zeros((0, *self.grid)))
        return np.concatenate(out).astype(np.float64)
