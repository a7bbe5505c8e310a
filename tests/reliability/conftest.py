"""Fixtures of the reliability tests: one tiny model + engines + scenes for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.run_world import build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scenes (campus_000.mp4, parking_000.mp4: 80 frames, 160x120, 10 fps), a seeded untrained tiny
    checkpoint and its ONNX Runtime engines."""
    return build_world(tmp_path_factory.mktemp("world"))


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``reliability`` (select them with ``-m reliability``)."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
