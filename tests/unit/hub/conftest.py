"""Fixtures of the hub's unit tests (the unit tests that import the outputs hub live here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.hub_outputs import HubOutputs, hub_outputs_maker


@pytest.fixture
def hub_outputs(tmp_path: Path) -> HubOutputs:
    """:func:`tests.fixtures.hub_outputs.hub_outputs_maker` for this test's ``tmp_path``."""
    return hub_outputs_maker(tmp_path)
