"""`zsad train --resume` puts the random states back only from a file that names the checkpoint's step."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch

from training.trainer import _restore_rng


def _saved(path: Path, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    rng.random(5)
    state = {"torch": torch.get_rng_state(), "sampler": json.dumps(rng.bit_generator.state), **extra}
    torch.save(state, path)
    return state


def test_a_state_of_the_checkpoint_step_is_restored(tmp_path: Path) -> None:
    path = tmp_path / "rng_state.rank0.pt"
    saved = _saved(path, step=12)
    expected = torch.rand(3)  # what the saved torch state draws next
    sampler = SimpleNamespace(rng=np.random.default_rng(0))
    _restore_rng(path, cast(Any, sampler), 12)
    assert torch.equal(torch.rand(3), expected)
    assert sampler.rng.bit_generator.state == json.loads(saved["sampler"])


@pytest.mark.parametrize("extra", [{}, {"step": 11}], ids=["no step", "another step"])
def test_a_state_that_cannot_be_matched_to_the_checkpoint_is_left_alone(
    tmp_path: Path, extra: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rng_state.pt"
    _saved(path, **extra)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    sampler = SimpleNamespace(rng=np.random.default_rng(0))
    untouched = sampler.rng.bit_generator.state
    with caplog.at_level(logging.WARNING, logger="training.trainer"):
        _restore_rng(path, cast(Any, sampler), 12)
    assert torch.equal(torch.get_rng_state(), before)
    assert sampler.rng.bit_generator.state == untouched
    assert "draws other windows than an uninterrupted one" in caplog.text
