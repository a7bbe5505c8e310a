"""Fixtures of the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.demo_world import CHECKPOINT, DemoArtefacts, prepare_demo
from tests.fixtures.run_world import build_world
from tests.fixtures.zones_world import build_zones_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Path]:
    """The run world of :func:`tests.fixtures.run_world.build_world` (~10 s), built once per test module
    that asks for it; a module that needs another world (test_zones, test_deepstream_graph, ...) defines its
    own ``world``, which takes precedence."""
    return build_world(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))


@pytest.fixture(scope="session")
def demo_artefacts(tmp_path_factory: pytest.TempPathFactory) -> DemoArtefacts:
    """The demo's scenes, engines and calibrations (:func:`tests.fixtures.demo_world.prepare_demo`, about
    three minutes), made once for every test that runs the demo."""
    if not CHECKPOINT.is_file():
        pytest.skip("the shipped demo model is not in this checkout")
    return prepare_demo(tmp_path_factory.mktemp("demo-shared"))


@pytest.fixture(scope="session")
def zones_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The masks-and-zones camera's engines, videos and calibrations (:func:`build_zones_world`, ~20 s),
    built once for test_zones and the zone editor's browser test. Read only: each test copies the
    calibration it runs with (learned levels are written beside it)."""
    return build_zones_world(tmp_path_factory.mktemp("zones"))
