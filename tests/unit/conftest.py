"""Fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    """An empty folder for calibration files and what ``zsad calibrate`` writes beside them."""
    folder = tmp_path / "calib"
    folder.mkdir()
    return folder
