"""The semantic stream's score (plugins.semantic) with a tiny projection written in numpy, and the
stream names (plugins.streams) that every scorer, the gate and the engines share."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from plugins.fusion import StreamGate
from plugins.scorer import DPC_OUTPUTS
from plugins.semantic import (
    DEFAULT_CONTEXT,
    PromptBank,
    SemanticError,
    SemanticMatch,
    SemanticScorer,
    match_prompts,
)
from plugins.streams import MAP_STREAMS, SEMANTIC, STREAMS

D, E = 6, 4


class Projection:
    """A semantic head in numpy: ``video = normalize(embedding @ P)``, counting its calls."""

    def __init__(self, seed: int = 0) -> None:
        self.P = np.random.default_rng(seed).standard_normal((D, E)).astype(np.float32)
        self.calls = 0

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        v = feeds["embedding"] @ self.P
        return {"video": v / np.linalg.norm(v, axis=1, keepdims=True)}


def unit_rows(n: int, seed: int) -> np.ndarray:
    t = np.random.default_rng(seed).standard_normal((n, E)).astype(np.float32)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def test_match_is_best_anomalous_minus_best_normal() -> None:
    # Rows 0, 1 normal; 2, 3, 4 anomalous. The clip points along row 3.
    bank = PromptBank(np.eye(5, E, dtype=np.float32), 2, ("street", "walking", "fight", "fire", "crash"))
    video = np.array([0.1, 0.2, 0.0, 0.9], np.float32)
    got = match_prompts(video, bank)
    assert got == SemanticMatch(pytest.approx(0.9 - 0.2), "fire")
    score, prompt = got  # unpacks like the (score, prompt) pair the graphs used
    assert (score, prompt) == (got.score, got.prompt)


def test_scorer_uses_each_cameras_context_in_one_projection() -> None:
    project = Projection()
    banks = {
        "campus": PromptBank(unit_rows(4, 1), 2, ("a", "b", "c", "d")),
        DEFAULT_CONTEXT: PromptBank(unit_rows(3, 2), 1, ("n", "x", "y")),
    }
    scorer = SemanticScorer(project, banks, {"cam-1": "campus", "cam-2": "parking"})
    emb = np.random.default_rng(3).standard_normal((3, D)).astype(np.float32)
    out = scorer(["cam-1", "cam-2", "cam-3"], emb)
    assert project.calls == 1  # the whole batch in one call
    video = project({"embedding": emb})["video"]
    assert out[0] == match_prompts(video[0], banks["campus"])
    assert out[1] is None  # "parking" has no prompts
    assert out[2] == match_prompts(video[2], banks[DEFAULT_CONTEXT])  # an unlisted camera: generic
    assert scorer.bank("cam-2") is None


def test_scorer_refuses_a_projection_of_the_wrong_batch() -> None:
    scorer = SemanticScorer(Projection(), {}, {})
    with pytest.raises(SemanticError, match="for 2 clips"):
        scorer(["a", "b"], np.ones((3, D), np.float32))


def test_prompt_bank_checks() -> None:
    bank = PromptBank(np.eye(3, E, dtype=np.float64), 1, ["n", "a", "b"])  # type: ignore[arg-type]
    assert bank.embeddings.dtype == np.float32
    assert bank.prompts == ("n", "a", "b")
    with pytest.raises(SemanticError, match="both normal and anomalous"):
        PromptBank(np.eye(3, E), 3, ("n", "a", "b"))
    with pytest.raises(SemanticError, match="both normal and anomalous"):
        PromptBank(np.eye(3, E), 0, ("n", "a", "b"))
    with pytest.raises(SemanticError, match="2 prompts"):
        PromptBank(np.eye(3, E), 1, ("n", "a"))
    with pytest.raises(SemanticError, match=r"\(P, d\)"):
        PromptBank(np.zeros(E), 1, ("n",))


def test_stream_names_are_one_set() -> None:
    assert STREAMS == ("predictive", "pixel", "motion", "semantic")  # the gate's saved row order
    assert set(MAP_STREAMS) == set(DPC_OUTPUTS)
    assert [*MAP_STREAMS.values(), SEMANTIC] == list(STREAMS)
    assert StreamGate.uniform().streams == STREAMS
