"""The semantic stream's score: clip embeddings against a context's normal and anomalous prompts.

The semantic head (an engine, or any runner) projects each clip's ``(D,)`` backbone embedding into CLIP
text space; the prompts were embedded (and context-gated, L2-normalised) at build time. With a CLIP
appearance engine, the clip's embedding is instead CLIP's own image embedding of its last frame, against
prompts embedded by the same CLIP's text tower (:class:`PromptBanks`, ``pipeline.inference``). A clip's
score is ``max(anomalous sims) - max(normal sims)`` against its camera's context, and the best anomalous
prompt says what it looks like. Pure numpy; the CPU graph and the DeepStream probe share
:class:`SemanticScorer` and :class:`PromptBanks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from plugins.scorer import Runner

__all__ = [
    "DEFAULT_CONTEXT",
    "SEMANTIC_INPUT",
    "SEMANTIC_OUTPUT",
    "PromptBank",
    "PromptBanks",
    "SemanticError",
    "SemanticFn",
    "SemanticMatch",
    "SemanticScorer",
    "match_prompts",
]

SEMANTIC_INPUT = "embedding"  # the semantic head's input: (N, D) backbone embeddings
SEMANTIC_OUTPUT = "video"  # its output: (N, d) in CLIP text space, unit L2 norm
DEFAULT_CONTEXT = "generic"  # the context of a camera the scorer was not told about


class SemanticError(ValueError):
    """Prompt embeddings that do not fit their prompts, or a projection output of the wrong shape."""


@dataclass(frozen=True)
class PromptBank:
    """One context's prompt embeddings, normal prompts first.

    ``embeddings``: ``(P, d)`` float32 (gated and L2-normalised at build time). ``n_normal``: how many of
    the first rows are normal prompts (the rest are anomalous; both groups non-empty). ``prompts``: the
    ``P`` texts in row order.
    """

    embeddings: np.ndarray
    n_normal: int
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        emb = np.asarray(self.embeddings, dtype=np.float32)
        names = tuple(str(p) for p in self.prompts)
        if emb.ndim != 2:
            raise SemanticError(f"prompt embeddings must be (P, d), got shape {emb.shape}")
        if len(names) != emb.shape[0]:
            raise SemanticError(f"{emb.shape[0]} prompt embeddings but {len(names)} prompts")
        if not 0 < self.n_normal < emb.shape[0]:
            raise SemanticError(
                f"n_normal must leave both normal and anomalous prompts, got {self.n_normal} "
                f"of {emb.shape[0]}"
            )
        object.__setattr__(self, "embeddings", emb)
        object.__setattr__(self, "n_normal", int(self.n_normal))
        object.__setattr__(self, "prompts", names)


class SemanticMatch(NamedTuple):
    """A clip's semantic score and the anomalous prompt it is closest to."""

    score: float
    prompt: str


SemanticFn = Callable[[Sequence[str], np.ndarray], Sequence[SemanticMatch | None]]
"""``semantic(cameras, embeddings (N, D) float32) -> [SemanticMatch or None]``, e.g. a
:class:`SemanticScorer`."""


def match_prompts(video: np.ndarray, bank: PromptBank) -> SemanticMatch:
    """Score one ``(d,)`` projected clip against ``bank``: ``max(anomalous sims) - max(normal sims)``."""
    sims = bank.embeddings @ video
    n = bank.n_normal
    best = int(np.argmax(sims[n:])) + n
    return SemanticMatch(float(sims[n:].max() - sims[:n].max()), bank.prompts[best])


class PromptBanks:
    """Each camera's prompts: the banks per context and each camera's context (a camera not listed has
    :data:`DEFAULT_CONTEXT`)."""

    def __init__(self, banks: Mapping[str, PromptBank], contexts: Mapping[str, str]) -> None:
        self.banks = dict(banks)
        self.contexts = contexts  # not copied: the caller may add cameras later (zsad calibrate does)

    def bank(self, camera: str) -> PromptBank | None:
        """The prompts ``camera`` is scored against, or None when its context has none."""
        return self.banks.get(self.contexts.get(camera, DEFAULT_CONTEXT))

    def match(self, camera: str, video: np.ndarray) -> SemanticMatch | None:
        """:func:`match_prompts` of one ``(d,)`` embedding against ``camera``'s prompts (None: it has none);
        an embedding of another width than the prompts' is refused."""
        bank = self.bank(camera)
        if bank is None:
            return None
        if video.shape != bank.embeddings.shape[1:]:
            raise SemanticError(
                f"camera {camera}: an embedding of shape {video.shape} against prompts of "
                f"{bank.embeddings.shape[1]} dims"
            )
        return match_prompts(video, bank)


class SemanticScorer:
    """The semantic stream of a batch of clips from any cameras, from the semantic head.

    Args:
        project: runner of the semantic head: ``{"embedding": (N, D)} -> {"video": (N, d)}``.
        banks: prompt embeddings per context.
        contexts: each camera's context; a camera not listed has :data:`DEFAULT_CONTEXT`.
    """

    def __init__(self, project: Runner, banks: Mapping[str, PromptBank], contexts: Mapping[str, str]) -> None:
        self.project = project
        self.prompts = PromptBanks(banks, contexts)

    def bank(self, camera: str) -> PromptBank | None:
        """The prompts ``camera`` is scored against, or None when its context has none."""
        return self.prompts.bank(camera)

    def __call__(self, cameras: Sequence[str], embeddings: np.ndarray) -> list[SemanticMatch | None]:
        """One match per camera of the batch (``embeddings`` ``(N, D)`` in the same order); None for a
        camera whose context has no prompt embeddings."""
        video = self.project({SEMANTIC_INPUT: embeddings})[SEMANTIC_OUTPUT]
        if video.ndim != 2 or video.shape[0] != len(cameras):
            raise SemanticError(f"semantic head gave {video.shape} for {len(cameras)} clips, expected (N, d)")
        return [self.prompts.match(camera, video[i]) for i, camera in enumerate(cameras)]
