"""Fixtures of the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.run_world import build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Path]:
    """The run world of :func:`tests.fixtures.run_world.build_world` (~10 s), built once per test module
    that asks for it; a module that needs another world (test_zones, test_deepstream_graph, ...) defines its
    own ``world``, which takes precedence."""
    return build_world(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))
